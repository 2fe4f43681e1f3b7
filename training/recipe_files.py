"""Recipe files: YAML or JSON mappings of argument names to values, optionally on top of a base recipe.

A recipe may name a base with `base: <path>`, relative to the recipe's own folder. The base's settings come
first and the recipe's own win, key by key (a shallow merge: a list replaces the base's list, it is not
appended). A base may have a base. So a family of recipes (training/recipes/cpu/, paper/) keeps its shared
protocol in one file (training/recipes/bases/) and each variant holds only what makes it that variant.

What a run writes (`final/recipe.yaml`) is always the resolved mapping, with no `base` key: it re-runs alone.

The recipes ship with the package: a recipe path that names no existing file is looked up in the shipped recipes
folder (`find_recipe`), so an installed `vix-train cpu/cifar10_ccn.yaml` runs training/recipes/cpu/cifar10_ccn.yaml.
"""

import json
from pathlib import Path

import yaml

from .errors import UsageError


RECIPE_SUFFIXES = (".yaml", ".yml", ".json")
BASE_KEY = "base"
SHIPPED_RECIPES = Path(__file__).resolve().parent / "recipes"  # training/recipes, or site-packages/vix/training/recipes


def find_recipe(path) -> Path:
    """`path` when it is a file; else, for a relative path, the shipped recipe of that name when there is one."""
    path = Path(path)
    if not path.is_file() and not path.is_absolute() and (SHIPPED_RECIPES / path).is_file():
        return SHIPPED_RECIPES / path
    return path


def load_mapping(path: Path) -> dict:
    """One recipe file as written (its `base` key included)."""
    text = path.read_text()
    recipe = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text) or {}
    if not isinstance(recipe, dict):
        raise UsageError(f"Recipe {path} must be a mapping of argument names to values.")
    return recipe


def resolve_recipe(path, _chain=()) -> dict:
    """The recipe at `path` with its bases merged in (base first, the file's own settings win)."""
    path = Path(path).resolve()
    if path in _chain:
        raise UsageError(f"Recipe {path} is its own base (through {' -> '.join(p.name for p in _chain)}).")
    if not path.is_file():
        shipped = "" if _chain else f" (the shipped recipes are in {SHIPPED_RECIPES})"
        raise UsageError(f"Recipe file {path} does not exist{shipped}.")
    recipe = load_mapping(path)
    base = recipe.pop(BASE_KEY, None)
    if base is None:
        return recipe
    return {**resolve_recipe(path.parent / base, (*_chain, path)), **recipe}


def write_recipe(path, recipe: dict) -> None:
    Path(path).write_text(yaml.safe_dump(recipe, sort_keys=False))
