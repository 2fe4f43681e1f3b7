"""A small Hub-compatible HTTP server for tests (stdlib only), bound to 127.0.0.1 on a free port.

It speaks the endpoints that `huggingface_hub` (2.x) and transformers call to create a repo, upload a folder,
read repo info and file trees, and download files, so the real client runs against it through `HF_ENDPOINT`:

    POST /api/repos/create                          POST /api/validate-yaml
    GET  /api/models/{repo}[/revision/{rev}]        GET  /api/models/{repo}/tree/{rev}[/{path}]
    POST /api/models/{repo}/preupload/{rev}         POST /api/models/{repo}/commit/{rev}
    HEAD|GET /{repo}/resolve/{rev}/{path}

Repos keep every commit, so an old revision still resolves after later pushes. Every file is declared
"regular" in preupload (inlined base64 in the commit), so the LFS and Xet transfer paths are not exercised;
nor are auth scopes, gating, or the Hub's server-side metadata schema. This covers the client side only.

    with FakeHub() as hub:             # hub.url -> "http://127.0.0.1:PORT"
        hub.fail("commit", "user/repo", status=500)   # inject a server error
        hub.files("user/repo")          # {path: bytes} at main
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import yaml


def git_blob_oid(content: bytes) -> str:
    """The git object id of a blob: what the Hub reports as a regular file's oid (and the client compares)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    oid: str
    message: str
    files: dict  # path -> blob oid (a full snapshot: cheap, and any revision resolves on its own)


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: list = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def resolve(self, revision: str) -> Commit | None:
        if revision == "main":
            return self.head
        return next((c for c in reversed(self.commits) if len(revision) >= 7 and c.oid.startswith(revision)), None)


class HubError(Exception):
    """An HTTP error answer, with the Hub's `X-Error-Code` where the client branches on it."""

    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [  # (method, regex, handler name); the first match wins
    ("POST", r"/api/repos/create", "create_repo"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("GET", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]


class FakeHub:
    def __init__(self):
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for assertions
        self.failures: dict[tuple[str, str], list[int]] = {}  # (route name, repo id) -> [status, calls to let through]
        self.lock = threading.Lock()
        self.server = None

    # -- lifecycle ----------------------------------------------------------------------------------------

    def __enter__(self):
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    # -- test helpers -------------------------------------------------------------------------------------

    def fail(self, route: str, repo_id: str, status: int = 500, after: int = 0) -> None:
        """Answer `status` to every `route` request (a handler name, e.g. "commit") for `repo_id`, once `after`
        such requests have gone through normally."""
        self.failures[(route, repo_id)] = [status, after]

    def _injected_failure(self, route: str, repo_id: str) -> int | None:
        with self.lock:
            failure = self.failures.get((route, repo_id))
            if failure is None:
                return None
            if failure[1] > 0:
                failure[1] -= 1
                return None
            return failure[0]

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        commit = self.repos[repo_id].resolve(revision)
        return {path: self.blobs[oid] for path, oid in commit.files.items()}

    def commits(self, repo_id: str) -> list[Commit]:
        return list(self.repos[repo_id].commits)

    def count(self, method: str, pattern: str) -> int:
        return sum(1 for m, path, _ in self.requests if m == method and re.search(pattern, path))

    # -- state --------------------------------------------------------------------------------------------

    def _repo(self, repo_id: str) -> Repo:
        if repo_id not in self.repos:
            raise HubError(404, f"Repository {repo_id} not found", "RepoNotFound")
        return self.repos[repo_id]

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(unquote(revision))
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    def _new_commit(self, repo: Repo, message: str, files: dict) -> Commit:
        parent = repo.commits[-1].oid if repo.commits else ""
        oid = hashlib.sha1(json.dumps([parent, message, sorted(files.items())]).encode()).hexdigest()
        repo.commits.append(Commit(oid, message, files))
        return repo.head

    def _store(self, content: bytes) -> str:
        oid = git_blob_oid(content)
        self.blobs[oid] = content
        return oid

    # -- endpoints: each returns (status, json-able body or bytes, extra headers) ----------------------------

    def create_repo(self, request, body):
        name, organization = body["name"], body.get("organization")
        repo_id = f"{organization}/{name}" if organization else f"user/{name}"
        if repo_id in self.repos:
            raise HubError(409, "You already created this model repo", url=f"{self.url}/{repo_id}")
        repo = self.repos[repo_id] = Repo(repo_id, private=body.get("visibility") == "private")
        attributes = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"
        self._new_commit(repo, "initial commit", {".gitattributes": self._store(attributes)})
        return 200, {"url": f"{self.url}/{repo_id}", "name": repo_id, "id": repo_id}, {}

    def validate_yaml(self, request, body):
        match = re.match(r"^---\n(.*?)\n---", body.get("content", ""), flags=re.S)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as error:
            return 400, {"errors": [{"message": f"YAML does not parse: {error}"}]}, {}
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata is not a mapping"}]}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def repo_info(self, request, body, repo, rev=None):
        repo = self._repo(repo)
        commit = self._commit_at(repo, rev or "main")
        siblings = [{"rfilename": path} for path in sorted(commit.files)]
        return 200, {"id": repo.repo_id, "modelId": repo.repo_id, "sha": commit.oid, "private": repo.private,
                     "siblings": siblings, "tags": [], "library_name": "transformers"}, {}

    def tree(self, request, body, repo, rev, path=None):
        commit = self._commit_at(self._repo(repo), rev)
        prefix = f"{path.rstrip('/')}/" if path else ""
        entries = [{"type": "file", "path": name, "oid": oid, "size": len(self.blobs[oid])}
                   for name, oid in sorted(commit.files.items()) if name.startswith(prefix)]
        if "recursive" not in request.query or request.query["recursive"][0] not in ("1", "true", "True"):
            entries = [e for e in entries if "/" not in e["path"][len(prefix):]]
        return 200, entries, {}

    def preupload(self, request, body, repo, rev):
        commit = self._commit_at(self._repo(repo), rev)
        files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": commit.files.get(f["path"])}
                 for f in body["files"]]
        return 200, {"files": files}, {}

    def commit(self, request, body, repo, rev):
        repo = self._repo(repo)
        base = self._commit_at(repo, rev)
        if base is not repo.head:
            raise HubError(400, "Commits are accepted on the branch head (main) only")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        if header.get("parentCommit") and not base.oid.startswith(header["parentCommit"]):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(base.files)
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = self._store(base64.b64decode(value["content"]))
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                files = {p: o for p, o in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
            elif key != "header":
                raise HubError(400, f"This server accepts regular files only, got a {key!r} operation")
        commit = self._new_commit(repo, header["summary"], files)
        return 200, {"commitUrl": f"{self.url}/{repo.repo_id}/commit/{commit.oid}", "commitOid": commit.oid,
                     "success": True, "pullRequestUrl": None}, {}

    def resolve(self, request, body, repo, rev, path):
        repo_obj = self._repo(repo)
        commit = self._commit_at(repo_obj, rev)
        path = unquote(path)
        if path not in commit.files:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        oid = commit.files[path]
        headers = {"ETag": f'"{oid}"', "X-Repo-Commit": commit.oid, "Content-Type": "application/octet-stream"}
        return 200, self.blobs[oid], headers


class _Request:
    def __init__(self, method: str, raw_path: str):
        parts = urlsplit(raw_path)
        self.method, self.path, self.query = method, parts.path, parse_qs(parts.query)


def _handler_for(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output quiet
            pass

        def _dispatch(self, method):
            request = _Request(method, self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                status, payload, headers = self._route(request, raw)
            except HubError as error:
                status, payload = error.status, {"error": error.message, **error.extra}
                headers = {"X-Error-Code": error.code, "X-Error-Message": error.message} if error.code else {}
            with hub.lock:
                hub.requests.append((method, request.path, status))
            self._answer(method, status, payload, headers)

        def _route(self, request, raw):
            for method, pattern, name in ROUTES:
                match = re.fullmatch(pattern, request.path)
                if method != request.method or not match:
                    continue
                repo_id = match.groupdict().get("repo")
                status = hub._injected_failure(name, repo_id)
                if status is not None:
                    raise HubError(status, f"Injected failure on {name} for {repo_id}")
                if request.method == "POST" and not self.headers.get("Authorization", "").startswith("Bearer "):
                    raise HubError(401, "Invalid credentials in Authorization header")
                body = raw.decode() if name == "commit" else json.loads(raw or b"{}")
                with hub.lock:
                    return getattr(hub, name)(request, body, **match.groupdict())
            raise HubError(404, f"fake hub: no route for {request.method} {request.path}")

        def _answer(self, method, status, payload, headers):
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            if not isinstance(payload, bytes):
                self.send_header("Content-Type", "application/json")
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)

        def do_GET(self):
            self._dispatch("GET")

        def do_HEAD(self):
            self._dispatch("HEAD")

        def do_POST(self):
            self._dispatch("POST")

    return Handler
