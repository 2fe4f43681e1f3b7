"""The training step, before and after each speed-up of the fast CPU-budget protocol, in the same run (issue 13).

    python -m benchmarks.training_step                    # writes benchmarks/results/training_step.{json,md}
    python -m benchmarks.training_step --recipes cpu/cifar10_ccp.yaml cpu/cifar10_levin.yaml --paths before fast

One AdamW step (forward with the loss, backward, update) of each recipe's model at batch 128 on its image size,
under the precision `auto` picks here. The default recipes are `fast/cifar10_cct_bn.yaml` and
`fast/cifar10_ccn_bn.yaml` (CCT and CCN with a BatchNorm conv tokenizer, 64 tokens); any recipe under
training/recipes/ (or a path) names another model. For each path:

- `before`: what the CPU-budget recipes ran until now (channels-first convs, torch's default attention kernel);
- `channels_last`: the model's conv weights channels-last (`--channels_last`);
- `sdpa_math`: attention as matmul + softmax (`--sdpa_backend math`) instead of the fused CPU kernel;
- `fast`: both (the CPU-budget protocol's step, `bases/cpu_training.yaml`);
- `fast + compile`: and `torch.compile` (inductor), as Trainer's `--torch_compile` would.

Each path runs in a fresh process (no shared caches or allocator state); times are medians after warm-up, and
ratios are against `before` of the same recipe from the same run. With `--repeats N` every path is measured in N
interleaved rounds and a row is the median of its rounds, with their range. The input pipeline's share is measured by
`benchmarks.input_pipeline`.
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from benchmarks.run import describe_machine, machine_summary, save_report
from training.precision import resolve_precision


CURRENT_CODE = "this checkout"
PATHS = {  # name: (channels_last, sdpa math, compile)
    "before": (False, False, False),
    "channels_last": (True, False, False),
    "sdpa_math": (False, True, False),
    "fast": (True, True, False),
    "fast + compile": (True, True, True),
}


@dataclass
class StepArguments:
    recipes: list[str] = field(default_factory=lambda: ["fast/cifar10_cct_bn.yaml", "fast/cifar10_ccn_bn.yaml"],
                               metadata={"help": "recipes whose model is stepped (a name under training/recipes/ "
                                                 "or a path)"})
    paths: list[str] = field(default_factory=lambda: list(PATHS))
    batch_size: int = 128
    warmup_steps: int = 3
    steps: int = 8
    repeats: int = field(default=1, metadata={
        "help": "rounds over every recipe and path, each path in a fresh process every round; a row reports the "
                "median of its rounds and their range (a shared 2-core VM drifts by 10-20 percent between processes)"})
    name: str = "training_step"
    compare_commit: str = field(default="", metadata={
        "help": "also measure every recipe and path with the code of this git commit (checked out in a temporary "
                "worktree), interleaved with this checkout's; ratios then read the commit's step / this checkout's"})
    one: str = field(default="", metadata={"help": "internal: measure one 'recipe:path' and print it"})


def recipe_config(recipe_name: str):
    """The model config a recipe trains (read from the recipe, so the two cannot drift), for 10 labels."""
    from training.model_flags import config_class_for, config_fields
    from training.recipe_files import find_recipe, resolve_recipe

    recipe = resolve_recipe(find_recipe(recipe_name))
    config_class = config_class_for(recipe.get("model_type", "vix"))
    fields = config_fields(config_class)
    settings = {key: value for key, value in recipe.items() if key in fields}
    return config_class(**settings, num_labels=10)


def measure_one(recipe: str, path: str, args: StepArguments) -> dict:
    from transformers import AutoModelForImageClassification

    import modeling_vix  # noqa: F401 (registers the ViX model types with the Auto classes)
    from training.train import attention_backend, image_size_hw

    channels_last, math, compiled = PATHS[path]
    torch.manual_seed(0)
    config = recipe_config(recipe)
    model = AutoModelForImageClassification.from_config(config).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    precision = resolve_precision("auto", device="cpu", use_cpu=True).name
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    pixels = torch.randn(args.batch_size, config.num_channels, *image_size_hw(config))
    labels = torch.randint(0, 10, (args.batch_size,))
    times = []
    for _ in range(args.warmup_steps + args.steps):
        start = time.perf_counter()
        with autocast, attention_backend("math" if math else "default"):
            loss = step_model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"recipe": recipe, "attention_type": config.attention_type, "path": path, "precision": precision,
            "step_time_s": statistics.median(times[args.warmup_steps:]), "first_step_s": times[0]}


def measure_in_subprocess(recipe: str, path: str, args: StepArguments, code_dir: str | None = None,
                          code: str = CURRENT_CODE) -> dict:
    """One measurement in a fresh process, with this checkout's code or (code_dir) another commit's."""
    command = [sys.executable, "-W", "ignore", "-m", "benchmarks.training_step", "--one", f"{recipe}:{path}",
               "--batch_size", str(args.batch_size), "--warmup_steps", str(args.warmup_steps),
               "--steps", str(args.steps)]
    environment = None if code_dir is None else {**os.environ, "PYTHONPATH": code_dir}
    completed = subprocess.run(command, capture_output=True, text=True, cwd=code_dir, env=environment)
    for line in completed.stdout.splitlines():
        if line.startswith("STEP_RESULT "):
            return {**json.loads(line[len("STEP_RESULT "):]), "code": code}
    return {"recipe": recipe, "path": path, "code": code, "error": completed.stderr[-300:]}


@contextmanager
def commit_checkout(commit: str):
    """A temporary detached worktree of `commit` (removed afterwards), or None when no commit is asked for."""
    if not commit:
        yield None
        return
    folder = tempfile.mkdtemp(prefix="vix-step-")
    subprocess.run(["git", "worktree", "add", "--detach", folder, commit], check=True, capture_output=True)
    try:
        yield folder
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", folder], capture_output=True)


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# The training step before and after the fast CPU-budget protocol (same run)",
        "",
        f"Machine: {machine_summary(machine)}, native bf16: {machine.get('cpu_native_bf16')}; "
        f"torch {machine['torch']}. Command: `{report['command']}`",
        "",
        f"One AdamW step of each recipe's model (from `training/recipes/`) at batch {report['batch_size']}, "
        f"precision auto; median of {report['steps']} steps after {report['warmup_steps']} warm-up steps; each path "
        f"in its own process, in {report.get('repeats', 1)} interleaved round(s): a row is the median of its rounds, "
        "and the range is theirs. " + (
            f"Each path runs with the code of commit {report['compare_commit']} and of this checkout; ratio: the "
            "commit's step / this checkout's (above 1: this checkout is faster)."
            if report.get("compare_commit") else "Ratio: `before` of the same recipe / the path (above 1: faster)."),
        "",
        "| recipe | mixer | code | path | step (s) | range over rounds (s) | speed-up | first step (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    commit = report.get("compare_commit")
    steps = {(r["recipe"], r.get("code", CURRENT_CODE), r["path"]): r["step_time_s"]
             for r in report["results"] if "step_time_s" in r}
    for r in report["results"]:
        code = r.get("code", CURRENT_CODE)
        if "error" in r:
            lines.append(f"| {r['recipe']} | | {code} | {r['path']} | fails: {r['error'][:80]} | | | |")
            continue
        baseline_key = (r["recipe"], commit, r["path"]) if commit else (r["recipe"], CURRENT_CODE, "before")
        ratio = steps[baseline_key] / r["step_time_s"] if baseline_key in steps else float("nan")
        rounds = r.get("round_step_times_s", [r["step_time_s"]])
        lines.append(f"| {r['recipe']} | {r['attention_type']} | {code} | {r['path']} | {r['step_time_s']:.3f} | "
                     f"{min(rounds):.3f}-{max(rounds):.3f} | {ratio:.2f}x | {r['first_step_s']:.1f} |")
    lines.append("")
    return "\n".join(lines)


def argument_problem(args: StepArguments) -> str | None:
    """What is wrong with the arguments (an unknown path, a recipe that does not exist), before anything runs."""
    from training.recipe_files import find_recipe

    if args.repeats < 1:
        return f"--repeats {args.repeats}: give at least 1 round"
    unknown = [path for path in args.paths if path not in PATHS]
    if unknown:
        return f"--paths {' '.join(unknown)}: not a path; choose from {', '.join(repr(name) for name in PATHS)}"
    missing = [recipe for recipe in args.recipes if not find_recipe(recipe).is_file()]
    if missing:
        return f"--recipes {' '.join(missing)}: no such recipe file, here or under training/recipes/"
    return None


def main(argv=None):
    (args,) = HfArgumentParser(StepArguments).parse_args_into_dataclasses(args=argv)
    problem = None if args.one else argument_problem(args)
    if problem:
        print(f"benchmarks.training_step: {problem}", file=sys.stderr)
        sys.exit(2)
    if args.one:
        recipe, path = args.one.rsplit(":", 1)
        print("STEP_RESULT " + json.dumps(measure_one(recipe, path, args)))
        return
    report = {"machine": describe_machine("cpu"), "batch_size": args.batch_size, "steps": args.steps,
              "warmup_steps": args.warmup_steps,
              "command": "python -m benchmarks.training_step " + " ".join(sys.argv[1:] if argv is None else argv),
              "results": []}
    rounds = []  # rounds[i]: one result per (recipe, path, code), in order
    with commit_checkout(args.compare_commit) as commit_dir:
        codes = [(commit_dir, args.compare_commit)] if commit_dir else []
        codes.append((None, CURRENT_CODE))
        for _ in range(args.repeats):
            rounds.append([])
            for recipe in args.recipes:
                for path in args.paths:
                    for code_dir, code in codes:
                        result = measure_in_subprocess(recipe, path, args, code_dir, code)
                        print(result, flush=True)
                        rounds[-1].append(result)
    report["repeats"] = args.repeats
    report["compare_commit"] = args.compare_commit or None
    report["results"] = [combine_rounds(list(results)) for results in zip(*rounds, strict=True)]
    save_report(args.name, report, markdown(report))


def combine_rounds(results: list[dict]) -> dict:
    """One (recipe, path) over the rounds: the median step time and each round's; an error if any round failed."""
    failed = [result for result in results if "error" in result]
    if failed:
        return failed[0]
    times = [result["step_time_s"] for result in results]
    return {**results[0], "step_time_s": statistics.median(times), "round_step_times_s": times,
            "first_step_s": statistics.median(result["first_step_s"] for result in results)}


if __name__ == "__main__":
    main()
