"""Run a list of recipes and tabulate what they measured: JSON, a markdown table and a PNG plot.

    python -m training.results training/recipes/cpu/*.yaml --output_dir outputs/results
    python -m training.results training/recipes/cpu/cifar10_vit.yaml --skip_existing -- --num_train_epochs 1

Each recipe runs as its own `python -m training.train <recipe> --output_dir <output_dir>/runs/<name>` process
(arguments after `--` are appended to every run), so peak memory is measured per run. The numbers come only
from each run's `final/metrics.json`: accuracy, parameters, training time, peak memory, hardware.
Writes <output_dir>/results.json, results.md and results.png (accuracy against parameters and against memory),
and results_curves.png (validation accuracy against training minutes: each run's metrics.json `validation_curve`).
`--append_to benchmarks/results/cifar10_cpu_budget.json` adds (or replaces, by recipe) the new rows in an
existing results table instead, keeping its rows and the commands that produced them.
A run folder that already holds a run is refused by training.train: pass --skip_existing to reuse it, or
`-- --overwrite_output_dir true` to train it again. Recipes may name a `base` (training/recipe_files.py).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from .recipe_files import find_recipe, load_mapping


# Recipe and run paths in results.json are relative to the repository checkout this file runs from; installed
# (site-packages/vix/training: no setup.cfg beside it) there is no checkout, and they are relative to the current
# folder.
_PARENT = Path(__file__).resolve().parents[1]
REPO_ROOT = _PARENT if (_PARENT / "setup.cfg").is_file() else Path.cwd()


COLUMNS = (
    ("recipe", "recipe", str),
    ("model", "variant", str),
    ("seed", "seed", str),
    ("test top-1", "test_accuracy", lambda v: f"{100 * v:.2f}%"),
    ("test top-5", "test_top5_accuracy", lambda v: f"{100 * v:.2f}%"),
    ("params", "num_parameters", lambda v: f"{v / 1e6:.2f}M"),
    ("epochs", "epochs", lambda v: f"{round(v, 1):g}"),  # a time-budgeted run ends mid-epoch
    ("train time", "train_runtime", lambda v: f"{v / 60:.1f} min"),
    ("peak memory", "peak_memory_mb", lambda v: f"{v:,.0f} MiB"),
    ("precision", "precision", str),
    ("hardware", "hardware", str),
)


# Optional columns, shown only when some row has a value: the flip-averaged test accuracy (train.py's
# --test_flip_average), and the minutes to first reach each validation accuracy of --time_to_accuracy.
FLIP_COLUMN = ("test top-1 flip-avg", "test_flip_accuracy", lambda v: f"{100 * v:.2f}%")
TIME_TO_ACCURACY = (0.80, 0.85, 0.87)


def minutes_to_accuracy(curve, threshold: float) -> float | None:
    """Training minutes at the first evaluation whose validation accuracy reaches `threshold` (None if none does)."""
    return next((point["minutes"] for point in curve or () if point["accuracy"] >= threshold), None)


def time_to_accuracy_key(threshold: float) -> str:
    return f"minutes_to_{round(100 * threshold, 1):g}"


def add_time_to_accuracy(rows, thresholds) -> None:
    """Each row's minutes to each threshold, read from its validation curve (None where not reached)."""
    for row in rows:
        for threshold in thresholds:
            row[time_to_accuracy_key(threshold)] = minutes_to_accuracy(row.get("validation_curve"), threshold)


def table_columns(rows, thresholds=()) -> tuple:
    """COLUMNS, with the optional ones that some row fills in after the test top-5 column."""
    optional = [FLIP_COLUMN] + [(f"val {round(100 * t, 1):g}% at", time_to_accuracy_key(t), lambda v: f"{v:.1f} min")
                                for t in thresholds]
    shown = tuple(column for column in optional if any(row.get(column[1]) is not None for row in rows))
    split = [key for _, key, _ in COLUMNS].index("test_top5_accuracy") + 1
    return COLUMNS[:split] + shown + COLUMNS[split:]


def repo_relative(path: Path) -> Path:
    """Inside the repository, a path relative to its root (recipes and results then carry no local paths)."""
    path = path.resolve()
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def run_recipe(recipe: Path, run_dir: Path, extra_args, skip_existing: bool) -> dict:
    recipe, run_dir = repo_relative(find_recipe(recipe)), repo_relative(run_dir)
    metrics_path = REPO_ROOT / run_dir / "final" / "metrics.json"
    if not (skip_existing and metrics_path.exists()):
        job = f"{__package__}.train"  # training.train in the checkout, vix.training.train installed
        command = [sys.executable, "-m", job, str(recipe), "--output_dir", str(run_dir), *extra_args]
        print("running:", " ".join(command), flush=True)
        start = time.time()
        subprocess.run(command, check=True, cwd=REPO_ROOT)
        print(f"finished {recipe.name} in {time.time() - start:.0f} s", flush=True)
    metrics = json.loads(metrics_path.read_text())
    config = json.loads((REPO_ROOT / run_dir / "final" / "config.json").read_text())
    if __package__.startswith("vix."):  # installed: vix.training, whose sibling is vix.model_cards
        from ..model_cards.card import variant_name
    else:  # the checkout's top-level packages (a try/except ImportError would hide e.g. a missing jinja2)
        from model_cards.card import variant_name

    seed = load_mapping(REPO_ROOT / run_dir / "final" / "recipe.yaml").get("seed")
    return {"recipe": recipe.stem, "recipe_path": str(recipe), "variant": variant_name(config), "run_dir": str(run_dir),
            "model_type": config["model_type"], "attention_type": config["attention_type"], "seed": seed, **metrics}


def markdown_table(rows, thresholds=()) -> str:
    columns = table_columns(rows, thresholds)
    lines = ["| " + " | ".join(name for name, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [fmt(row[key]) if row.get(key) is not None else "–" for _, key, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def hardware_text(rows) -> str:
    return "; ".join(sorted({row.get("hardware", "?") for row in rows}))


def save_figure(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot().close(figure)


def plot(rows, path: Path) -> None:
    figure, axes = pyplot().subplots(1, 2, figsize=(11, 4.5))
    for axis, key, label in ((axes[0], "num_parameters", "parameters (millions)"),
                             (axes[1], "peak_memory_mb", "peak memory (MiB)")):
        for row in rows:
            x = row[key] / 1e6 if key == "num_parameters" else row[key]
            y = 100 * row["test_accuracy"]
            axis.scatter(x, y)
            axis.annotate(row["variant"], (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        axis.set_xlabel(label)
        axis.set_ylabel("test top-1 accuracy (%)")
        axis.grid(alpha=0.3)
    figure.suptitle(f"ViX: accuracy against size and memory ({hardware_text(rows)})", fontsize=9)
    save_figure(figure, path)


def curve_notes(rows) -> str:
    """Where a validation curve did not come from train.py itself (metrics.json's `validation_curve_source`)."""
    notes = [f"- {row['recipe']}: validation curve from {row['validation_curve_source']}"
             for row in rows if row.get("validation_curve_source")]
    return "\nValidation curves (in the JSON and the _curves.png):\n" + "\n".join(notes) + "\n" if notes else ""


def plot_curves(rows, path: Path) -> bool:
    """Validation accuracy against training minutes, one line per run that has a curve; False if none has."""
    rows = [row for row in rows if row.get("validation_curve")]
    if not rows:
        return False
    figure, axis = pyplot().subplots(figsize=(7, 4.5))
    for row in rows:
        curve = row["validation_curve"]
        seed = f" seed {row['seed']}" if row.get("seed") is not None else ""
        label = f"{row['variant']}{seed} ({row['recipe']}, {100 * row['test_accuracy']:.2f}% test)"
        axis.plot([point["minutes"] for point in curve], [100 * point["accuracy"] for point in curve],
                  marker="o", markersize=3, label=label)
    axis.set_xlabel("training minutes (train_runtime, shared out by step)")
    axis.set_ylabel("validation top-1 accuracy (%)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    axis.set_title(f"ViX: validation accuracy during training ({hardware_text(rows)})", fontsize=9)
    save_figure(figure, path)
    return True


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = []
    if "--" in argv:
        argv, extra = argv[: argv.index("--")], argv[argv.index("--") + 1 :]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipes", nargs="+", type=Path, help="recipe files (YAML or JSON)")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/results"))
    parser.add_argument("--skip_existing", action="store_true", help="reuse runs that already wrote metrics.json")
    parser.add_argument("--append_to", type=Path, default=None,
                        help="an existing results.json: add these rows to it (same-recipe rows are replaced)")
    parser.add_argument("--time_to_accuracy", type=float, nargs="*", default=list(TIME_TO_ACCURACY),
                        metavar="FRACTION",
                        help="validation accuracies (fractions) whose first-reached training minutes get a column "
                             "where some run reaches them (default: 0.80 0.85 0.87; none: no such columns)")
    args = parser.parse_args(argv)
    if any(not 0 < threshold <= 1 for threshold in args.time_to_accuracy):
        parser.error("--time_to_accuracy takes accuracies as fractions in (0, 1], e.g. 0.85")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    if args.append_to is not None and not args.append_to.is_file():
        parser.error(f"--append_to {args.append_to}: no such results file")
    rows = [run_recipe(recipe, args.output_dir / "runs" / recipe.stem, extra, args.skip_existing)
            for recipe in args.recipes]
    command = "python -m training.results " + " ".join(str(item) for item in argv + (["--", *extra] if extra else []))
    commands = [command]
    json_path = args.output_dir / "results.json"
    if args.append_to is not None:
        json_path = args.append_to
        new_recipes = {row["recipe"] for row in rows}
        kept = [row for row in json.loads(json_path.read_text()) if row["recipe"] not in new_recipes]
        commands = previous_commands(json_path.with_suffix(".md")) + commands
        rows = sorted(kept + rows, key=lambda row: -row.get("test_accuracy", 0))
    add_time_to_accuracy(rows, args.time_to_accuracy)
    json_path.write_text(json.dumps(rows, indent=2, default=str))
    header = "\n".join(f"Command (from the repository root): `{line}`" for line in commands)
    table = markdown_table(rows, args.time_to_accuracy)
    json_path.with_suffix(".md").write_text(header + "\n\n" + table + curve_notes(rows))
    plot(rows, json_path.with_suffix(".png"))
    curves = plot_curves(rows, json_path.with_name(json_path.stem + "_curves.png"))
    print(table)
    print(f"wrote {json_path} and its .md and .png" + (" and _curves.png" if curves else ""))
    return rows


def previous_commands(markdown_path: Path) -> list[str]:
    """The commands an existing results markdown states (one `Command ...: `...`` line each)."""
    if not markdown_path.is_file():
        return []
    prefix = "Command (from the repository root): `"
    return [line[len(prefix):-1] for line in markdown_path.read_text().splitlines() if line.startswith(prefix)]


if __name__ == "__main__":
    main()
