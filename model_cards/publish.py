"""Publish finished model folders to the Hub: one repo per folder with its card, then an index card of the zoo.

    python -m model_cards.publish --results outputs/cpu/results.json --repo_prefix user/vix- --dry_run
    python -m model_cards.publish --results outputs/cpu/results.json --repo_prefix user/vix-
    python -m model_cards.publish --folders outputs/vix-nystrom-digits/final --repo_prefix user/vix- --private

A folder is a training run's `final/` (training/train.py), a row of a training/results.py `results.json` (its
`run_dir/final`), a converted folder (conversion/: its card names the source and the parity measured) or any
folder `save_pretrained` wrote with its image processor (its card marks accuracy and training as not recorded).
Repo names are the prefix plus the recipe (or folder) name, e.g. `user/vix-cifar10-vit`; a name that already
starts with the prefix's name part is not prefixed twice (`vix-digits` -> `user/vix-digits`).

Every folder is checked before anything is sent: weights, processor, config and the modeling files its
`auto_map` needs must be there, every JSON file must parse, recipe.yaml too, every safetensors file
must be complete, and the model must load once with `AutoModelForImageClassification.from_pretrained`;
otherwise the command stops (exit 2) and names the file. Each repo then gets two commits through
`huggingface_hub` (`create_repo`, `upload_folder`, `upload_file`):

1. the folder without README.md (weights, config, modeling code, processor, metrics.json, recipe.yaml);
2. the card, rebuilt so its snippets name the repo and pin `revision=` to the commit of step 1.

Re-running updates the same repos: unchanged files are not committed again, and when nothing changed the
card keeps its pin, so a second identical run makes no commit at all. A repo that fails (server error,
missing permission) is reported with what was and was not committed; the others still go through, the
command exits 1, and the index card is left alone so it never links to a repo that is not complete.

The index repo holds the card (README.md) and its data (zoo.json, one entry per variant). Publishing adds or
replaces the variants of this run in the index already on the Hub and keeps the others, so publishing one
folder does not drop the rest of the zoo.
The token comes from `HF_TOKEN` or `hf auth login`; `HF_ENDPOINT` selects the server.
"""

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from .card import REPO_ROOT, build_model_card, pinned_revision, read_folder, write_model_card


WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
# (what, any of these files). No card or metrics.json: the card is rebuilt for every publish, and a converted or
# fine-tuned folder has no training run's metrics; its card says what was not measured.
REQUIRED = (
    ("weights", WEIGHTS),
    ("processor", ("preprocessor_config.json",)),
    ("config", ("config.json",)),
)
# Written by a run but not for the Hub: a pickled TrainingArguments (recipe.yaml holds the same settings),
# intermediate checkpoints, TensorBoard logs.
EXCLUDE = ["training_args.bin", "checkpoint-*", "runs/*", "__pycache__/*", "*.pyc"]
CARD = "README.md"
INDEX_DATA = "zoo.json"  # the index repo's entries, read back and merged by the next publish


@dataclass
class Target:
    folder: Path
    repo_id: str
    featured: bool = False  # listed first in the index card, as the zoo's flagship


@dataclass
class Outcome:
    repo_id: str
    folder: Path | None
    status: str  # published | unchanged | failed | dry-run | skipped
    revision: str | None = None
    detail: str = ""
    entry: dict = field(default_factory=dict)  # what the index card needs


# ---------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------

def folder_name(folder: Path) -> str:
    """A training run's `.../<run name>/final` is named after the run."""
    folder = folder.resolve()
    return folder.parent.name if folder.name == "final" else folder.name


def folders_from_results(path) -> list[tuple[Path, str]]:
    """(model folder, recipe name) for each row of a training/results.py results.json."""
    path = Path(path)
    rows = json.loads(path.read_text())
    out = []
    for row in rows:
        folder = REPO_ROOT / row["run_dir"] / "final"  # relative to the repository root (absolute in older files)
        moved = path.parent / "runs" / row["recipe"] / "final"  # the results folder was copied elsewhere
        out.append((folder if folder.exists() or not moved.exists() else moved, row["recipe"]))
    return out


def repo_id_for(prefix: str, name: str) -> str:
    """`prefix` + `name` as a Hub repo id; a name that already starts with the prefix's name part keeps it once
    (prefix `user/vix-`, run `vix-digits` -> `user/vix-digits`, not `user/vix-vix-digits`)."""
    from huggingface_hub.utils import validate_repo_id

    stem = prefix.split("/", 1)[1] if "/" in prefix else ""
    name = name.lower().replace("_", "-")
    if stem and name.startswith(stem.lower()):
        name = name[len(stem):]
    repo_id = prefix + name
    validate_repo_id(repo_id)
    return repo_id


def code_files(folder: Path) -> set[str]:
    """The modeling files a folder's `auto_map` needs, following relative imports as the remote-code loader does."""
    from transformers.dynamic_module_utils import get_relative_imports

    pending = []
    for name in ("config.json", "preprocessor_config.json"):
        if (folder / name).exists():
            auto_map = json.loads((folder / name).read_text()).get("auto_map", {})
            for value in auto_map.values():  # "module.Class", "repo--module.Class", or a list of those
                references = value if isinstance(value, list) else [value]
                pending += [f"{ref.split('--')[-1].rsplit('.', 1)[0]}.py" for ref in references if ref]
    needed = set()
    while pending:
        name = pending.pop()
        if name not in needed:
            needed.add(name)
            if (folder / name).exists():
                pending += [f"{module}.py" for module in get_relative_imports(folder / name)]
    return needed


def missing_pieces(folder: Path) -> list[str]:
    """What a folder lacks to be published, e.g. ['weights (model.safetensors)', 'modeling code (mixers_vix.py)']."""
    missing = [f"{what} ({' or '.join(names)})" for what, names in REQUIRED
               if not any((folder / name).exists() for name in names)]
    absent_code = sorted(name for name in code_files(folder) if not (folder / name).exists())
    if absent_code:
        missing.append(f"modeling code ({', '.join(absent_code)}, needed for trust_remote_code)")
    return missing


def json_problem(path: Path) -> str | None:
    """Why a JSON file of a model folder cannot be used (it must parse to an object), or None."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError is a ValueError
        return f"{path}: not valid JSON ({error})"
    return None if isinstance(data, dict) else f"{path}: not a JSON object (got {type(data).__name__})"


def yaml_problem(path: Path) -> str | None:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        return f"{path}: not valid YAML ({str(error).splitlines()[0]})"
    return None if data is None or isinstance(data, dict) else f"{path}: not a YAML mapping"


def safetensors_problem(path: Path) -> str | None:
    """A truncated or foreign file fails here: safetensors checks that the header's tensors cover the file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except (SafetensorError, OSError) as error:
        return f"{path}: not a complete safetensors file ({str(error).splitlines()[0]})"
    return None


def unreadable_files(folder: Path) -> list[str]:
    """Every file to upload that does not parse: JSON, YAML, safetensors headers."""
    readers = {".json": json_problem, ".yaml": yaml_problem, ".yml": yaml_problem, ".safetensors": safetensors_problem}
    problems = []
    for name in files_to_upload(folder):
        reader = readers.get(Path(name).suffix)
        if reader is not None and (problem := reader(folder / name)):
            problems.append(problem)
    return problems


def load_problem(folder: Path) -> str | None:
    """Load the model once, as a user will (what a file check cannot see: tensors that do not fit the config)."""
    from transformers import AutoModelForImageClassification

    import modeling_vix  # noqa: F401  (registers the ViX Auto classes, so the folder's own code is not run)

    try:  # ignore_mismatched_sizes=True only so that a tensor of the wrong shape is named in `info`, refused below
        _, info = AutoModelForImageClassification.from_pretrained(folder, output_loading_info=True,
                                                                  ignore_mismatched_sizes=True)
    except Exception as error:  # any failure to load is the folder's, and must stop the publish
        lines = str(error).strip().splitlines()
        return f"{folder}: the model does not load ({type(error).__name__}: {lines[0] if lines else ''})"
    wrong = {name: keys for name in ("missing_keys", "unexpected_keys", "mismatched_keys") if (keys := info.get(name))}
    if wrong:
        listing = "; ".join(f"{name}: {sorted(map(str, keys))[:5]}" for name, keys in wrong.items())
        return f"{folder}: the weights do not fit config.json ({listing})"
    return None


def folder_problems(folder: Path) -> list[str]:
    """Why a folder cannot be published, checked in order (each step needs the one before): the folder, the
    files' syntax, the files that must be there, then the model loading."""
    if not folder.is_dir():
        return [f"{folder}: missing the folder itself ({folder} does not exist)"]
    unreadable = unreadable_files(folder)
    if unreadable:
        return unreadable
    missing = missing_pieces(folder)
    if missing:
        return [f"{folder}: missing {', '.join(missing)}"]
    problem = load_problem(folder)
    return [problem] if problem else []


def files_to_upload(folder: Path) -> list[str]:
    """The folder's files as `upload_folder` will send them (same patterns, same filter function)."""
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

    names = sorted(path.relative_to(folder).as_posix() for path in folder.rglob("*") if path.is_file())
    return list(filter_repo_objects(names, ignore_patterns=EXCLUDE + DEFAULT_IGNORE_PATTERNS))


def check_targets(targets: list[Target]) -> list[str]:
    """Every problem that stops the whole publish before anything is sent."""
    problems = [problem for target in targets for problem in folder_problems(target.folder)]
    seen = {}
    for target in targets:
        if target.repo_id in seen:
            problems.append(f"{target.folder} and {seen[target.repo_id]} would both go to {target.repo_id}")
        seen[target.repo_id] = target.folder
    return problems


# ---------------------------------------------------------------------------------------------------------
# Publishing
# ---------------------------------------------------------------------------------------------------------

def index_entry(target: Target, revision: str | None) -> dict:
    from .measure import measure_architecture

    config, metrics, recipe = read_folder(target.folder)
    return {"repo_id": target.repo_id, "revision": revision, "config": config, "metrics": metrics, "recipe": recipe,
            "measured": measure_architecture(config), "featured": target.featured}


def remote_pin(api, repo_id: str, revision: str, siblings: list[str]) -> str | None:
    """The commit the card at `revision` pins (what an earlier publish wrote), if there is one."""
    if CARD not in siblings:
        return None
    with tempfile.TemporaryDirectory() as cache:
        path = api.hf_hub_download(repo_id, CARD, revision=revision, cache_dir=cache)
        return pinned_revision(Path(path).read_text())


def error_text(error: Exception) -> str:
    """One line: the error, what the server said, and a hint where the fix is on the caller's side."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0] if lines else ''}"
    server_message = getattr(error, "server_message", None)
    if server_message and server_message not in text:
        text += f" (server: {server_message.strip()})"
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status in (401, 403):
        text += " (check that the token, HF_TOKEN or `hf auth login`, may write to this namespace)"
    return text


def describe_failure(api, repo_id: str, head_before: str | None) -> str:
    """After an error, say what the repo now holds: the message must not claim more than was checked."""
    if head_before is None:
        return "the repo could not be created or read; nothing was committed"
    try:
        head = api.repo_info(repo_id).sha
    except Exception as error:  # the server may be down: say so instead of guessing
        return f"its state could not be checked ({type(error).__name__})"
    if head == head_before:
        return "nothing was committed"
    return f"commits were made (head is now {head[:10]}) but the card was not updated; re-run to finish"


class IncompleteUpload(RuntimeError):
    """The client reported success but the repo lacks files (e.g. a .gitignore in the repo made it skip them)."""


def upload_model_files(api, target: Target, info) -> str:
    """Commit the folder without its card; return the commit the card should pin.

    When nothing changed (no new commit), the pin stays what the remote card already pins, so an identical
    re-run leaves the card, and the repo, untouched.
    """
    name = target.repo_id.split("/", 1)[1]
    files = api.upload_folder(repo_id=target.repo_id, folder_path=target.folder, ignore_patterns=EXCLUDE + [CARD],
                              commit_message=f"Upload {name}: weights, config, modeling code, processor, metrics")
    if files.oid != info.sha:
        return files.oid
    siblings = [sibling.rfilename for sibling in info.siblings or []]
    return remote_pin(api, target.repo_id, info.sha, siblings) or info.sha


def upload_card(api, target: Target, pin: str):
    """Rebuild the folder's card with the repo id and the pin, then commit it alone."""
    _, metrics, recipe = read_folder(target.folder)
    name = target.repo_id.split("/", 1)[1]
    write_model_card(target.folder, metrics, recipe, model_name=name, repo_id=target.repo_id, revision=pin)
    return api.upload_file(path_or_fileobj=target.folder / CARD, path_in_repo=CARD, repo_id=target.repo_id,
                           commit_message=f"Model card for {name} (pins {pin[:10]})")


def verify_upload(api, target: Target, revision: str) -> None:
    absent = sorted(set(files_to_upload(target.folder)) - set(api.list_repo_files(target.repo_id, revision=revision)))
    if absent:
        raise IncompleteUpload(f"the client reported success but the repo lacks {', '.join(absent)}")


def publish_folder(api, target: Target, private: bool) -> Outcome:
    """Create or update one repo: the folder's files, then its card pinned to their commit."""
    head_before = None
    try:
        api.create_repo(target.repo_id, private=private, exist_ok=True)
        info = api.repo_info(target.repo_id)
        head_before = info.sha
        pin = upload_model_files(api, target, info)
        card = upload_card(api, target, pin)
        verify_upload(api, target, card.oid)
    except IncompleteUpload as error:
        return Outcome(target.repo_id, target.folder, "failed", detail=str(error))
    except Exception as error:  # report and go on with the next repo; the summary lists what failed
        detail = f"{error_text(error)}; {describe_failure(api, target.repo_id, head_before)}"
        return Outcome(target.repo_id, target.folder, "failed", detail=detail)
    status = "published" if card.oid != head_before else "unchanged"
    return Outcome(target.repo_id, target.folder, status, pin, f"card commit {card.oid[:10]}", index_entry(target, pin))


def published_entries(api, index_repo: str, info) -> list[dict]:
    """The index entries already on the Hub (zoo.json at the head `info`), [] for a new index."""
    if INDEX_DATA not in [sibling.rfilename for sibling in info.siblings or []]:
        return []
    with tempfile.TemporaryDirectory() as cache:
        path = api.hf_hub_download(index_repo, INDEX_DATA, revision=info.sha, cache_dir=cache)
        return json.loads(Path(path).read_text())["entries"]


def merge_entries(published: list[dict], new: list[dict]) -> list[dict]:
    """The published entries with this run's replacing those of the same repo (in place) and the rest appended."""
    by_repo = {entry["repo_id"]: entry for entry in new}
    merged = [by_repo.pop(entry["repo_id"], entry) for entry in published]
    return merged + list(by_repo.values())


def publish_index(api, index_repo: str, outcomes: list[Outcome], private: bool) -> Outcome:
    """Add this run's variants to the index on the Hub (card and zoo.json, one commit), keeping the others."""
    from huggingface_hub import CommitOperationAdd

    from .index import build_index_card

    try:
        api.create_repo(index_repo, private=private, exist_ok=True)
        info = api.repo_info(index_repo)
        entries = merge_entries(published_entries(api, index_repo, info), [o.entry for o in outcomes])
        card = build_index_card(entries, endpoint=api.endpoint)
        data = json.dumps({"entries": entries}, indent=1, sort_keys=True) + "\n"
        operations = [CommitOperationAdd(path_in_repo=CARD, path_or_fileobj=str(card).encode()),
                      CommitOperationAdd(path_in_repo=INDEX_DATA, path_or_fileobj=data.encode())]
        names = ", ".join(o.repo_id for o in outcomes)
        commit = api.create_commit(index_repo, operations=operations,
                                   commit_message=f"Index of {len(entries)} ViX variants (this publish: {names})")
    except Exception as error:
        return Outcome(index_repo, None, "failed", detail=error_text(error))
    status = "published" if commit.oid != info.sha else "unchanged"
    return Outcome(index_repo, None, status, commit.oid, f"index of {len(entries)} variants")


def dry_run(targets: list[Target], index_repo: str | None, endpoint: str) -> list[Outcome]:
    """List what would be sent, and render each card in memory (so a card that cannot be built shows up now)."""
    print(f"dry run: nothing is sent to {endpoint}")
    outcomes = []
    for target in targets:
        config, metrics, recipe = read_folder(target.folder)
        build_model_card(config, metrics, recipe, target.repo_id.split("/", 1)[1], repo_id=target.repo_id)
        print(f"\n{target.repo_id}  <-  {target.folder}")
        uploaded = files_to_upload(target.folder)
        for name in uploaded:
            note = "  (model card, rebuilt with this repo id and a pinned revision)" if name == CARD else ""
            print(f"    {name:<32} {(target.folder / name).stat().st_size:>12,} bytes{note}")
        if CARD not in uploaded:
            print(f"    {CARD:<32} {'':>12}        (model card, built from the folder's files)")
        present = {path.relative_to(target.folder).parts[0] for path in target.folder.rglob("*") if path.is_file()}
        excluded = sorted(present - {name.split("/")[0] for name in uploaded})
        if excluded:
            print(f"    not uploaded: {', '.join(excluded)}")
        outcomes.append(Outcome(target.repo_id, target.folder, "dry-run"))
    if index_repo:
        where = " in its Flagship table" if any(target.featured for target in targets) else ""
        print(f"\n{index_repo}  <-  index card (README.md, {INDEX_DATA}): adds or replaces these {len(targets)} "
              f"variants{where}, keeps the others it lists")
    return outcomes


def print_summary(outcomes: list[Outcome]) -> None:
    print("\nsummary:")
    for outcome in outcomes:
        revision = f" @ {outcome.revision[:10]}" if outcome.revision else ""
        print(f"  {outcome.status.upper():<10} {outcome.repo_id}{revision}  {outcome.detail}")
    published = [o.repo_id for o in outcomes if o.status in ("published", "unchanged")]
    failed = [o.repo_id for o in outcomes if o.status == "failed"]
    if failed:
        print(f"published: {', '.join(published) or 'none'}\nNOT published: {', '.join(failed)}")


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------

@dataclass
class PublishArguments:
    repo_prefix: str = field(metadata={"help": "Namespace and name prefix, e.g. 'user/vix-'."})
    folders: list[Path] = field(default_factory=list, metadata={"help": "Model folders (a run's final/)."})
    results: Path | None = field(default=None, metadata={
        "help": "A training/results.py results.json; publishes every run in it."})
    dry_run: bool = field(default=False, metadata={"help": "List what would be uploaded; send nothing."})
    private: bool = field(default=False, metadata={"help": "Create new repos as private."})
    index_repo: str | None = field(default=None, metadata={
        "help": "Repo for the index card (default: <repo_prefix>zoo); '' for none."})
    featured: bool = field(default=False, metadata={
        "help": "List these variants first in the index card, in its 'Flagship' table (the zoo's best "
                "checkpoints); re-publishing a variant without it moves it back to the other variants."})
    token: str | None = field(default=None, metadata={"help": "Hub token (default: HF_TOKEN or the saved login)."})
    endpoint: str | None = field(default=None, metadata={
        "help": "Hub URL (default: HF_ENDPOINT, else https://huggingface.co); prefer HF_ENDPOINT, which every "
                "huggingface_hub call reads."})


def make_parser() -> HfArgumentParser:
    """HfArgumentParser over a dataclass, the style of training/train.py and conversion/ (underscore flags)."""
    return HfArgumentParser(PublishArguments, prog="python -m model_cards.publish", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_arguments(parser: HfArgumentParser, argv=None):
    """The parsed dataclass; an unknown flag is a usage error (exit 2), not HfArgumentParser's ValueError."""
    args, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return args


def collect_targets(args: PublishArguments) -> list[Target]:
    pairs = [(folder, folder_name(folder)) for folder in args.folders]
    if args.results:
        pairs += folders_from_results(args.results)
    return [Target(folder, repo_id_for(args.repo_prefix, name), args.featured) for folder, name in pairs]


def main(argv=None) -> int:
    """Exit status: 0 all published, 1 some repo failed, 2 nothing sent (bad input)."""
    parser = make_parser()
    args = parse_arguments(parser, argv)
    if "/" not in args.repo_prefix:
        parser.error("--repo_prefix needs a namespace, e.g. 'user/vix-'")
    if not args.folders and not args.results:
        parser.error("give --folders or --results")
    try:
        targets = collect_targets(args)
    except (OSError, ValueError, KeyError) as error:
        print(f"error: {type(error).__name__}: {error}. Nothing was uploaded.", file=sys.stderr)
        return 2
    index_repo = args.index_repo if args.index_repo is not None else repo_id_for(args.repo_prefix, "zoo")
    problems = check_targets(targets) + ([f"--index_repo {index_repo} is also a variant's repo"]
                                         if index_repo in {t.repo_id for t in targets} else [])
    if problems:
        print("error: cannot publish; nothing was uploaded:\n" + "\n".join(f"  {p}" for p in problems), file=sys.stderr)
        return 2

    import huggingface_hub

    api = huggingface_hub.HfApi(endpoint=args.endpoint, token=args.token)
    if args.dry_run:
        dry_run(targets, index_repo, api.endpoint)
        return 0
    if args.token is None and huggingface_hub.get_token() is None:
        print("error: no Hub token: set HF_TOKEN or run `hf auth login`. Nothing was uploaded.", file=sys.stderr)
        return 2
    outcomes = []
    for target in targets:
        print(f"publishing {target.folder} -> {target.repo_id}", flush=True)
        outcomes.append(publish_folder(api, target, args.private))
        if outcomes[-1].status == "failed":
            print(f"error: {target.repo_id}: {outcomes[-1].detail}", file=sys.stderr)
    failed = any(o.status == "failed" for o in outcomes)
    if index_repo and not failed:
        outcomes.append(publish_index(api, index_repo, outcomes, args.private))
    elif index_repo:
        skipped = "index not updated: not every variant was published"
        outcomes.append(Outcome(index_repo, None, "skipped", detail=skipped))
    print_summary(outcomes)
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
