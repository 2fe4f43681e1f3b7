"""Publishing (model_cards/publish.py) end to end, with the real `huggingface_hub` client against a small
Hub-compatible server on 127.0.0.1 (tests/hub_server.py; client side only: no LFS/Xet, auth scopes or
server-side metadata schema).

Two tiny variants are trained on digits and tabulated by training/results.py; its results.json is published
(create, upload, re-upload, update); a fresh interpreter that cannot import `modeling_vix`, with an empty HF
cache, loads each repo with `trust_remote_code=True` at the pinned revision and runs the card's own pipeline
snippet, with the same predictions as the local folder. Refusals and server errors are checked too. ~25 s.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import types
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from PIL import Image

from hub_server import FakeHub
from model_cards import publish
from model_cards.card import pinned_revision


ROOT = Path(__file__).resolve().parents[1]
PREFIX = "team/vix-"
TINY = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
        "image_size": 16, "conv_stem_channels": [4, 8], "nystrom_residual_conv_kernel": 3, "max_train_samples": 64,
        "max_eval_samples": 32, "max_steps": 2, "disable_tqdm": True, "report_to": "none", "logging_steps": 1}
RECIPES = {
    "tiny_vit": {"attention_type": "softmax", "embedding_type": "linear", "position_embedding_type": "learned"},
    "tiny_hybrid_vil": {"attention_type": "linformer", "embedding_type": "conv", "position_embedding_type": "learned",
                        "linformer_k": 8},
}
REPOS = [f"{PREFIX}tiny-vit", f"{PREFIX}tiny-hybrid-vil"]
INDEX = f"{PREFIX}zoo"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """results.json of two tiny variants, trained in this process and tabulated by training/results.py."""
    from training import results, train

    root = tmp_path_factory.mktemp("zoo")
    recipes = []
    for name, settings in RECIPES.items():
        recipe = root / f"{name}.yaml"
        train.write_recipe(recipe, {**TINY, **settings})
        train.main([str(recipe), "--output_dir", str(root / "results" / "runs" / name)])
        recipes.append(str(recipe))
    results.main([*recipes, "--output_dir", str(root / "results"), "--skip_existing"])  # reuses the runs above
    return root / "results" / "results.json"


def folders(results_json) -> dict[str, Path]:
    return {repo: folder for repo, (folder, _) in zip(REPOS, publish.folders_from_results(results_json), strict=True)}


def run_publish(hub: FakeHub, *args) -> int:
    """The command in this process, against `hub` (the `published` fixture runs it with HF_ENDPOINT instead)."""
    return publish.main([*map(str, args), "--endpoint", hub.url, "--token", "hf_test_token"])


@pytest.fixture(scope="module")
def hub():
    with FakeHub() as server:
        yield server


@pytest.fixture(scope="module")
def published(zoo, hub, tmp_path_factory):
    """The command line, in its own process, with HF_ENDPOINT naming the local server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN="hf_test_token", HF_HOME=str(tmp_path_factory.mktemp("publisher_home")),
               NO_PROXY="127.0.0.1")
    proc = subprocess.run([sys.executable, "-m", "model_cards.publish", "--results", str(zoo), "--repo_prefix", PREFIX],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_publish_creates_each_repo_with_files_and_a_card_pinned_to_them(zoo, hub, published):
    assert set(hub.repos) == {*REPOS, INDEX}
    for repo, folder in folders(zoo).items():
        messages = [commit.message for commit in hub.commits(repo)]
        assert len(messages) == 3 and messages[0] == "initial commit", messages  # files, then the card
        files_commit = hub.commits(repo)[1].oid
        remote = hub.files(repo)
        expected = set(publish.files_to_upload(folder)) | {".gitattributes"}
        assert set(remote) == expected and "training_args.bin" not in remote
        assert {"model.safetensors", "modeling_vix.py", "mixers_vix.py", "preprocessor_config.json"} <= set(remote)
        assert remote["model.safetensors"] == (folder / "model.safetensors").read_bytes()
        card_text = remote["README.md"].decode()
        assert card_text == (folder / "README.md").read_text()  # the local folder holds what was published
        assert pinned_revision(card_text) == files_commit and f'"{repo}", revision="{files_commit}"' in card_text
        assert "README.md" not in hub.files(repo, files_commit)  # the pinned commit is the model, the card follows
        card = ModelCard.load(folder / "README.md")
        metrics = json.loads((folder / "metrics.json").read_text())
        assert card.data.eval_results[0].metric_value == pytest.approx(metrics["test_accuracy"])
        assert card.data.model_name == repo.split("/")[1]
    index = hub.files(INDEX)["README.md"].decode()
    for repo, folder in folders(zoo).items():
        accuracy = json.loads((folder / "metrics.json").read_text())["test_accuracy"]
        assert re.search(rf"\| \[{repo}\]\(.*?\) \|.*\| {100 * accuracy:.2f}% \|", index), repo
    assert "PUBLISHED" in published.stdout and "NOT published" not in published.stdout


CHILD = textwrap.dedent(
    """
    import json, re, sys
    spec = json.loads(sys.argv[1])
    sys.path += spec["site_packages"]  # run with -I -S: no .pth files, so the editable install's finder is absent
    report = {}
    try:
        import modeling_vix  # noqa: F401
        report["package_hidden"] = False
    except ImportError:
        report["package_hidden"] = True

    import torch
    from PIL import Image
    from huggingface_hub import ModelCard
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    images = [Image.open(path) for path in spec["images"]]
    for repo_id in spec["repos"]:
        card = ModelCard.load(repo_id)
        revision = re.search(r'revision="([0-9a-f]{40})"', card.text).group(1)
        namespace = {}
        exec(re.findall(r"```python\\n(.*?)```", card.text, flags=re.S)[0], namespace)  # the card's pipeline snippet
        model = AutoModelForImageClassification.from_pretrained(repo_id, revision=revision, trust_remote_code=True)
        processor = AutoImageProcessor.from_pretrained(repo_id, revision=revision, trust_remote_code=True)
        with torch.no_grad():
            logits = model.eval()(**processor(images, return_tensors="pt")).logits
        report[repo_id] = {"revision": revision, "logits": logits.tolist(), "model_module": type(model).__module__,
                           "pipeline": namespace["classifier"](images, top_k=3)}
    def from_checkout(path):  # this repository's own code; a virtual environment inside the checkout does not count
        return path.startswith(spec["repo_root"] + "/") and not path.startswith(tuple(spec["site_packages"]))

    report["repo_modules"] = sorted(name for name, module in list(sys.modules.items())
                                    if from_checkout(str(getattr(module, "__file__", None) or "")))
    json.dump(report, open(spec["out"], "w"))
    """
)


def test_fresh_process_without_the_package_loads_each_repo_like_the_local_folder(zoo, hub, published, tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        paths.append(str(tmp_path / f"image_{i}.png"))
        Image.fromarray(rng.integers(0, 255, (16 + 4 * i, 16, 3), dtype=np.uint8)).save(paths[-1])
    shutil.copy(paths[0], tmp_path / "image.png")  # the file the card's snippet classifies
    spec = {"repos": REPOS, "images": paths, "out": str(tmp_path / "report.json"), "repo_root": str(ROOT),
            "site_packages": sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "PYTHON"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "empty_hf_home"), NO_PROXY="127.0.0.1")
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", CHILD, json.dumps(spec)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["package_hidden"] and report["repo_modules"] == []  # nothing came from this checkout

    images = [Image.open(path) for path in paths]
    for repo, folder in folders(zoo).items():
        remote = report[repo]
        assert remote["model_module"].startswith("transformers_modules.")  # the repo's own code, from the Hub cache
        assert remote["revision"] == pinned_revision(hub.files(repo)["README.md"].decode())
        assert hub.files(repo, remote["revision"])["model.safetensors"] == (folder / "model.safetensors").read_bytes()
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        with torch.no_grad():
            logits = model(**AutoImageProcessor.from_pretrained(folder)(images, return_tensors="pt")).logits
        torch.testing.assert_close(torch.tensor(remote["logits"]), logits)
        local = pipeline("image-classification", model=str(folder), trust_remote_code=False)(images, top_k=3)
        assert [[p["label"] for p in ps] for ps in remote["pipeline"]] == [[p["label"] for p in ps] for ps in local]
        assert np.allclose([[p["score"] for p in ps] for ps in remote["pipeline"]],
                           [[p["score"] for p in ps] for ps in local], atol=1e-6)
    assert "'label'" in proc.stdout  # the snippet's print ran


def test_republish_updates_in_place_and_pins_the_new_commit(zoo, hub, published, capsys):
    before = {repo: [c.oid for c in hub.commits(repo)] for repo in hub.repos}
    assert run_publish(hub, "--results", zoo, "--repo_prefix", PREFIX) == 0
    assert {repo: [c.oid for c in hub.commits(repo)] for repo in hub.repos} == before  # nothing new, nothing duplicated
    assert capsys.readouterr().out.count("UNCHANGED") == 3

    repo, folder = REPOS[0], folders(zoo)[REPOS[0]]
    old_pin = pinned_revision(hub.files(repo)["README.md"].decode())
    metrics = folder / "metrics.json"
    metrics.write_text(metrics.read_text() + "\n")  # a changed file in the folder (same values)
    assert run_publish(hub, "--folders", folder, "--repo_prefix", PREFIX, "--index_repo", "") == 0
    commits = hub.commits(repo)
    assert len(commits) == len(before[repo]) + 2 and set(hub.repos) == set(before)
    assert pinned_revision(hub.files(repo)["README.md"].decode()) == commits[-2].oid != old_pin
    assert hub.files(repo)["metrics.json"] == metrics.read_bytes()
    assert hub.files(repo, old_pin)["metrics.json"] != metrics.read_bytes()  # the old pin still serves the old files


def test_dry_run_lists_what_would_be_uploaded_and_sends_nothing(zoo, capsys):
    cards = {repo: (folder / "README.md").read_text() for repo, folder in folders(zoo).items()}
    with FakeHub() as hub:
        assert run_publish(hub, "--results", zoo, "--repo_prefix", PREFIX, "--dry_run") == 0
        assert hub.requests == []
    out = capsys.readouterr().out
    for repo, folder in folders(zoo).items():
        assert f"{repo}  <-  {folder}" in out
        for name in publish.files_to_upload(folder):
            assert re.search(rf"^    {re.escape(name)} +[\d,]+ bytes", out, flags=re.M), name
        assert (folder / "README.md").read_text() == cards[repo]  # the folder is left as it was
    assert "not uploaded: training_args.bin" in out and f"{INDEX}  <-  index card" in out


def test_incomplete_folders_and_a_missing_token_are_refused_before_anything_is_sent(zoo, tmp_path, monkeypatch,
                                                                                   capsys):
    source = folders(zoo)[REPOS[0]]
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    for name in ("model.safetensors", "metrics.json", "mixers_vix.py"):
        (broken / name).unlink()
    with FakeHub() as hub:
        assert run_publish(hub, "--folders", broken, tmp_path / "absent", source, "--repo_prefix", PREFIX) == 2
        assert hub.requests == []
        assert run_publish(hub, "--folders", source, source, "--repo_prefix", PREFIX) == 2
        monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
        assert publish.main(["--folders", str(source), "--repo_prefix", PREFIX, "--endpoint", hub.url]) == 2
        assert hub.requests == []
    err = capsys.readouterr().err
    assert "no Hub token: set HF_TOKEN or run `hf auth login`" in err
    assert f"{broken}: missing weights (model.safetensors or model.safetensors.index.json), " \
           "modeling code (mixers_vix.py, needed for trust_remote_code)" in err
    assert f"{tmp_path / 'absent'}: missing the folder itself" in err and "nothing was uploaded" in err
    assert f"would both go to {PREFIX}tiny-vit" in err


def test_server_error_names_the_repo_and_leaves_nothing_half_published(zoo, monkeypatch, capsys):
    waits = []
    no_backoff = types.SimpleNamespace(sleep=waits.append)
    monkeypatch.setattr(huggingface_hub.utils._http, "time", no_backoff)
    with FakeHub() as hub:
        hub.fail("commit", REPOS[1], status=500)
        assert run_publish(hub, "--results", zoo, "--repo_prefix", PREFIX, "--private") == 1
        assert waits, "the client retried the commit before giving up"
        assert len(hub.commits(REPOS[0])) == 3 and hub.repos[REPOS[0]].private
        assert [c.message for c in hub.commits(REPOS[1])] == ["initial commit"]  # no files without their card
        assert INDEX not in hub.repos  # the index never links to an incomplete zoo
    captured = capsys.readouterr()
    assert re.search(rf"error: {REPOS[1]}: .*500.*nothing was committed", captured.err)
    assert f"published: {REPOS[0]}\nNOT published: {REPOS[1]}" in captured.out
    assert f"SKIPPED    {INDEX}" in captured.out


def test_failed_card_commit_is_reported_and_a_rerun_finishes(zoo, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.utils._http, "time", types.SimpleNamespace(sleep=lambda seconds: None))
    repo, folder = REPOS[0], folders(zoo)[REPOS[0]]
    with FakeHub() as hub:
        hub.fail("commit", repo, status=503, after=1)  # the files commit goes through, the card's does not
        assert run_publish(hub, "--folders", folder, "--repo_prefix", PREFIX, "--index_repo", "") == 1
        files_commit = hub.commits(repo)[-1].oid
        assert "README.md" not in hub.files(repo)
        assert re.search(rf"error: {repo}: .*503.*head is now {files_commit[:10]}.*re-run to finish",
                         capsys.readouterr().err)

        hub.failures.clear()
        assert run_publish(hub, "--folders", folder, "--repo_prefix", PREFIX, "--index_repo", "") == 0
        assert len(hub.commits(repo)) == 3  # only the card was added
        assert pinned_revision(hub.files(repo)["README.md"].decode()) == files_commit


# ---------------------------------------------------------------------------------------------------------
# The index merges what is already published; repo names as the README says
# ---------------------------------------------------------------------------------------------------------

def index_rows(hub: FakeHub) -> list[str]:
    return [line for line in hub.files(INDEX)["README.md"].decode().splitlines() if line.startswith("| [")]


def test_publishing_one_folder_keeps_the_other_variants_in_the_index(zoo, tmp_path):
    """Publishing variants one at a time adds each to the index already on the Hub; re-publishing one replaces
    its entry (new pin, new numbers) and keeps the others."""
    first, second = REPOS
    with FakeHub() as hub:
        assert run_publish(hub, "--folders", folders(zoo)[first], "--repo_prefix", PREFIX) == 0
        assert [row.split("]")[0] for row in index_rows(hub)] == [f"| [{first}"]
        assert run_publish(hub, "--folders", folders(zoo)[second], "--repo_prefix", PREFIX) == 0
        assert [row.split("]")[0] for row in index_rows(hub)] == [f"| [{first}", f"| [{second}"]
        assert "zoo.json" in hub.files(INDEX) and len(hub.commits(INDEX)) == 3  # one commit per publish

        changed = tmp_path / "tiny_vit" / "final"  # the same run name, so the same repo, with another accuracy
        shutil.copytree(folders(zoo)[first], changed)
        metrics = json.loads((changed / "metrics.json").read_text())
        (changed / "metrics.json").write_text(json.dumps({**metrics, "test_accuracy": 0.123456}))
        assert run_publish(hub, "--folders", changed, "--repo_prefix", PREFIX) == 0
        rows = index_rows(hub)
        assert [row.split("]")[0] for row in rows] == [f"| [{first}", f"| [{second}"]
        assert "12.35%" in rows[0] and "12.35%" not in rows[1]
        entries = json.loads(hub.files(INDEX)["zoo.json"])["entries"]
        assert entries[0]["revision"] == pinned_revision(hub.files(first)["README.md"].decode())

        # --featured lists the second variant first (the zoo's flagship) and zoo.json keeps that for later publishes
        assert run_publish(hub, "--folders", folders(zoo)[second], "--repo_prefix", PREFIX, "--featured") == 0
        assert [row.split("]")[0] for row in index_rows(hub)] == [f"| [{second}", f"| [{first}"]
        assert run_publish(hub, "--folders", changed, "--repo_prefix", PREFIX) == 0
        assert [row.split("]")[0] for row in index_rows(hub)] == [f"| [{second}", f"| [{first}"]
        card = hub.files(INDEX)["README.md"].decode()
        assert card.index("## Flagship") < card.index(f"| [{second}") < card.index("## All") < card.index(f"| [{first}")


def test_repo_names_are_what_the_readme_says():
    """docs/publishing.md's one-folder example publishes to the repo its comment names (the prefix is not doubled)."""
    import shlex

    assert publish.repo_id_for("user/vix-", "vix-digits") == "user/vix-digits"
    assert publish.repo_id_for("user/vix-", "vix-nystrom-digits") == "user/vix-nystrom-digits"
    assert publish.repo_id_for("user/vix-", "cifar10_hybrid_vin_rope") == "user/vix-cifar10-hybrid-vin-rope"
    assert publish.repo_id_for("user/", "vix-digits") == "user/vix-digits"
    readme = (ROOT / "docs" / "publishing.md").read_text()
    examples = re.findall(r"^python -m model_cards\.publish (--folders .*?)\s+# one folder: (\S+)$", readme, flags=re.M)
    assert examples, "docs/publishing.md shows publishing one folder and the repo it goes to"
    for flags, stated in examples:
        args = publish.parse_arguments(publish.make_parser(), shlex.split(flags.replace("<user>", "user")))
        assert [target.repo_id for target in publish.collect_targets(args)] == [stated.replace("<user>", "user")]
    for command in re.findall(r"python -m model_cards\.publish (.*?)(?:\s+#.*)?$", readme, flags=re.M):
        publish.parse_arguments(publish.make_parser(), shlex.split(command.replace("<user>", "user")))


# ---------------------------------------------------------------------------------------------------------
# Every file is checked before the first upload
# ---------------------------------------------------------------------------------------------------------

def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def wrong_shape(path: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(path)
    save_file({**tensors, "classifier.bias": torch.zeros(3)}, path, metadata={"format": "pt"})


CORRUPTIONS = {
    "model.safetensors": (truncate, "not a complete safetensors file"),
    "metrics.json": (lambda path: path.write_text('{"test_accuracy": 0.5'), "not valid JSON"),
    "config.json": (lambda path: path.write_text("{"), "not valid JSON"),
    "preprocessor_config.json": (lambda path: path.write_text("[1, 2]"), "not a JSON object"),
    "recipe.yaml": (lambda path: path.write_text("a: [1, 2"), "not valid YAML"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corrupt_files_are_refused_before_anything_is_sent(zoo, tmp_path, capsys, name):
    corrupt, message = CORRUPTIONS[name]
    folder = tmp_path / "tiny_vit"
    shutil.copytree(folders(zoo)[REPOS[0]], folder)
    corrupt(folder / name)
    with FakeHub() as hub:
        assert run_publish(hub, "--folders", folder, "--repo_prefix", PREFIX) == 2
        assert hub.requests == []
    err = capsys.readouterr().err
    assert f"{folder / name}: {message}" in err and "nothing was uploaded" in err and "Traceback" not in err


def test_weights_that_do_not_fit_the_config_are_refused(zoo, tmp_path, capsys):
    """A complete safetensors file whose tensors do not fit config.json: only loading the model shows it."""
    folder = tmp_path / "tiny_vit"
    shutil.copytree(folders(zoo)[REPOS[0]], folder)
    wrong_shape(folder / "model.safetensors")
    with FakeHub() as hub:
        assert run_publish(hub, "--folders", folder, "--repo_prefix", PREFIX) == 2
        assert hub.requests == []
    err = capsys.readouterr().err
    assert re.search(rf"{re.escape(str(folder))}: the weights do not fit config.json \(mismatched_keys: .*classifier",
                     err), err


# ---------------------------------------------------------------------------------------------------------
# Converted and fine-tuned folders: no metrics.json, a card that says what is known and what was not measured
# ---------------------------------------------------------------------------------------------------------

def test_converted_and_fine_tuned_folders_publish_with_what_is_known(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    from conversion.from_transformers import convert_transformers
    from modeling_vix import VixConfig, VixForImageClassification, VixImageProcessor

    source = tmp_path / "vit"  # a 3-class transformers ViT: top-5 would be every class
    vit = ViTConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, num_labels=3)
    ViTForImageClassification(vit).save_pretrained(source)
    converted = tmp_path / "vix-vin-converted"
    images = [Image.new("RGB", (16, 16), (40 * i, 0, 0)) for i in range(2)]
    convert_transformers(str(source), converted, attention_type="nystrom",
                         config_overrides={"nystrom_num_landmarks": 4}, images=images)
    fine_tuned = tmp_path / "vix-fine-tuned"  # what Trainer.save_model writes: weights, config, code, processor
    config = VixConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32, num_labels=12)
    VixForImageClassification(config).save_pretrained(fine_tuned)
    VixImageProcessor(size={"height": 16, "width": 16}).save_pretrained(fine_tuned)
    assert not (converted / "metrics.json").exists() and not (fine_tuned / "README.md").exists()

    with FakeHub() as hub:
        assert run_publish(hub, "--folders", converted, fine_tuned, "--repo_prefix", PREFIX) == 0
        cards = {name: hub.files(f"{PREFIX}{name}")["README.md"].decode()
                 for name in ("vin-converted", "fine-tuned")}
        index = hub.files(INDEX)["README.md"].decode()
    conversion = json.loads((converted / "conversion.json").read_text())
    parity = conversion["parity"][0]["max_abs_logit_diff"]
    assert "Converted from **" in cards["vin-converted"] and f"{parity:.2e}" in cards["vin-converted"]
    assert "it is not an accuracy" in cards["vin-converted"]
    for card in cards.values():
        assert "Not measured: no evaluation was recorded" in card and "model-index" not in card
        assert "top-5" not in card.lower()
    assert "Not recorded: no `recipe.yaml`" in cards["fine-tuned"]
    assert "not evaluated here" in index


def test_top_5_is_reported_only_with_more_than_5_labels():
    from model_cards.card import build_model_card, shown_metrics

    metrics = {"test_accuracy": 0.9, "test_top5_accuracy": 1.0, "dataset": "pets", "split_sizes": {"test": 10}}
    two = {"attention_type": "softmax", "id2label": {"0": "cat", "1": "dog"}}
    assert shown_metrics(two, metrics) == {k: v for k, v in metrics.items() if k != "test_top5_accuracy"}
    config = {**two, "id2label": {str(i): str(i) for i in range(6)}}
    assert shown_metrics(config, metrics) == metrics
    from modeling_vix import VixConfig

    tiny = VixConfig(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, attention_type="softmax").to_dict()
    card = build_model_card({**tiny, **two}, metrics, {})
    assert "top-5" not in card.text.lower() and "top_5" not in str(card.data)
    assert "Top-5 accuracy" in str(build_model_card({**tiny, **config}, metrics, {}).data.to_dict())
