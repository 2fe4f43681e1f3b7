"""Packaging: the wheel installs the job, the converters and the card builder as vix.training, vix.conversion and
vix.model_cards (next to the top-level modeling_vix), ships the recipes and the metric module, and its console
scripts work installed, outside the checkout.

The wheel is built (`pip wheel --no-deps --no-build-isolation --no-index`: offline) from a copy of the sources, so
the checkout's own build/ and *.egg-info are neither read nor written. It is installed with `--no-deps` into a
fresh virtual environment (made without pip: this environment's pip installs into it with `--python`), whose
site-packages sees this environment's dependencies through a .pth file: nothing is downloaded. A path listed in a
.pth file is not scanned for .pth files itself, so this environment's editable-install finder stays out, and the
tests check that every ViX module comes from the new environment. Everything runs from a temporary folder.

About 60 s on 2 CPU cores, most of it the one-epoch training run.
"""

import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "training" / "recipes"


def can_build_wheels() -> bool:
    """pip, and a setuptools that builds wheels by itself (>= 70.1) or with the `wheel` package (the test extras
    install setuptools >= 70.1)."""
    if not (importlib.util.find_spec("pip") and importlib.util.find_spec("setuptools")):
        return False
    version = tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2])
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


pytestmark = pytest.mark.skipif(
    not can_build_wheels(),
    reason="`pip wheel --no-build-isolation` is unavailable (it needs pip and setuptools >= 70.1 or the wheel package)",
)

# Not package sources: the copy the wheel is built from leaves them out (outputs/ can hold gigabytes of runs).
NOT_SOURCES = shutil.ignore_patterns(".git", ".venv", "venv", "outputs", "runs", "build", "dist", "*.egg-info",
                                     "__pycache__", ".pytest_cache", ".ruff_cache")


def run(command, cwd, env=None, timeout=300):
    proc = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{command}\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-8000:]}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    shutil.copytree(ROOT, tmp / "src", ignore=NOT_SOURCES, symlinks=True)
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", tmp / "dist", tmp / "src"], cwd=tmp)
    (path,) = (tmp / "dist").glob("vix-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> dict:
    """A fresh virtual environment with the wheel (and this environment's dependencies visible), a work folder,
    and the environment variables to run in it."""
    tmp = tmp_path_factory.mktemp("installed")
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", "--no-index", wheel],
        cwd=tmp)
    site_packages = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
    ours = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (Path(site_packages.stdout.strip()) / "vix_test_dependencies.pth").write_text("\n".join(ours) + "\n")
    work = tmp / "work"
    work.mkdir()
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYTHON", "HF_", "TRANSFORMERS_", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", HF_HOME=str(tmp / "hf_home"),
               HF_HUB_OFFLINE="1", PYTHONNOUSERSITE="1")
    return {"venv": venv, "python": python, "work": work, "env": env}


def test_the_wheel_holds_the_vix_namespace_the_recipes_and_the_metric_module(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/entry_points.txt"))
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert {name.split("/")[0] for name in names} == {"modeling_vix", "vix", dist_info}  # no top-level training/...
    assert "vix/__init__.py" not in names  # an implicit namespace package
    for package in ("vix/training", "vix/conversion", "vix/model_cards", "modeling_vix"):
        assert f"{package}/__init__.py" in names
    recipes = {f"vix/training/recipes/{path.relative_to(RECIPES).as_posix()}"
               for path in RECIPES.rglob("*") if path.suffix in (".yaml", ".yml", ".json")}
    assert {"vix/training/recipes/cpu/cifar10_ccn.yaml", "vix/training/recipes/bases/cpu_training.yaml"} <= recipes
    assert recipes <= names, sorted(recipes - names)  # every recipe, bases/ included
    assert "vix/training/metrics/top_k_accuracy/top_k_accuracy.py" in names
    assert not any(name.startswith(("benchmarks/", "tests/")) for name in names)
    assert "vix-train = vix.training.train:cli" in entry_points
    assert "vix-publish = vix.model_cards.publish:main" in entry_points


CHILD = """
import json, sys
import modeling_vix, vix.conversion.common, vix.model_cards.card, vix.training.results, vix.training.train
from vix.training.recipe_files import find_recipe
from vix.training.train import METRIC_MODULE, read_recipe

modules = {name: module.__file__ for name, module in sys.modules.items()
           if name.split(".")[0] in ("modeling_vix", "vix", "training", "conversion", "model_cards")
           and getattr(module, "__file__", None)}
print(json.dumps({
    "modules": modules,
    "recipe_file": str(find_recipe("cpu/cifar10_ccn.yaml")),
    "recipe": read_recipe("cpu/cifar10_ccn.yaml"),
    "metric_module": str(METRIC_MODULE),
    "repo_roots": [str(vix.model_cards.card.REPO_ROOT), str(vix.training.results.REPO_ROOT)],
    "default_cifar10": vix.conversion.common.DEFAULT_CIFAR10,
    "editable_finders": [repr(finder) for finder in sys.meta_path if "editable" in repr(finder).lower()],
}))
"""


def test_installed_modules_recipes_and_paths_resolve_inside_the_new_environment(installed):
    from training.recipe_files import resolve_recipe

    proc = run([installed["python"], "-c", CHILD], cwd=installed["work"], env=installed["env"])
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    venv = installed["venv"].resolve()
    outside = {name: path for name, path in report["modules"].items() if not Path(path).resolve().is_relative_to(venv)}
    assert "vix.training" in report["modules"] and not outside, outside  # nothing from the checkout
    assert report["editable_finders"] == []  # this environment's editable install did not come along
    assert Path(report["recipe_file"]).resolve().is_relative_to(venv)  # the shipped recipe, by its path in recipes/
    assert report["recipe"] == resolve_recipe(RECIPES / "cpu" / "cifar10_ccn.yaml")  # with its two bases merged in
    metric_module = Path(report["metric_module"])
    assert metric_module.resolve().is_relative_to(venv) and (metric_module / "top_k_accuracy.py").is_file()
    work = str(installed["work"].resolve())
    assert report["repo_roots"] == [work, work]  # no checkout: paths are relative to the current folder
    assert report["default_cifar10"] is None


def test_console_scripts_run_outside_the_checkout(installed):
    bin_dir, work, env = installed["venv"] / "bin", installed["work"], installed["env"]
    for script in ("vix-train", "vix-publish"):
        assert "usage:" in run([bin_dir / script, "--help"], cwd=work, env=env).stdout
    out = work / "run"
    # The quick start (bundled digits, the default model) on a slice of the data: the status must be 0.
    proc = run([bin_dir / "vix-train", "--num_train_epochs", "1", "--output_dir", out, "--max_train_samples", "128",
                "--max_eval_samples", "64", "--disable_tqdm", "true"], cwd=work, env=env)
    final = out / "final"
    assert (final / "model.safetensors").is_file(), proc.stdout[-2000:]
    metrics = json.loads((final / "metrics.json").read_text())  # through the installed metric module
    assert 0 <= metrics["test_accuracy"] <= metrics["test_top5_accuracy"] <= 1
    assert (final / "README.md").is_file()  # the card, written through vix.model_cards
