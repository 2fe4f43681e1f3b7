"""The training step, before and after each speed-up of the fast CPU-budget protocol, in the same run (issue 13).

    python -m benchmarks.training_step                    # writes benchmarks/results/training_step.{json,md}
    python -m benchmarks.training_step --attention_types softmax nystrom --steps 6

One AdamW step (forward with the loss, backward, update) of the model of `training/recipes/fast/cifar10_cct_bn.yaml`
(CCT with a BatchNorm conv tokenizer, 64 tokens) at batch 128 on 32x32 images, under the precision `auto` picks
here, for each path:

- `before`: what the CPU-budget recipes ran until now (channels-first convs, torch's default attention kernel);
- `channels_last`: the model's conv weights channels-last (`--channels_last`);
- `sdpa_math`: attention as matmul + softmax (`--sdpa_backend math`) instead of the fused CPU kernel;
- `fast`: both (the CPU-budget protocol's step, `bases/cpu_training.yaml`);
- `fast + compile`: and `torch.compile` (inductor), as Trainer's `--torch_compile` would.

Each path runs in a fresh process (no shared caches or allocator state); times are medians after warm-up, and
ratios are against `before` from the same run. The input pipeline's share is measured by
`benchmarks.input_pipeline`.
"""

import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from transformers import HfArgumentParser

from benchmarks.run import describe_machine, save_report
from training.precision import resolve_precision


PATHS = {  # name: (channels_last, sdpa math, compile)
    "before": (False, False, False),
    "channels_last": (True, False, False),
    "sdpa_math": (False, True, False),
    "fast": (True, True, False),
    "fast + compile": (True, True, True),
}


@dataclass
class StepArguments:
    attention_types: list[str] = field(default_factory=lambda: ["softmax", "nystrom"])
    paths: list[str] = field(default_factory=lambda: list(PATHS))
    batch_size: int = 128
    warmup_steps: int = 3
    steps: int = 8
    name: str = "training_step"
    one: str = field(default="", metadata={"help": "internal: measure one 'attention_type:path' and print it"})


def fast_cct_config(attention_type: str):
    """The model of training/recipes/fast/cifar10_cct_bn.yaml (read from the recipe, so the two cannot drift)."""
    from modeling_vix import VixCctConfig
    from training.model_flags import config_fields
    from training.recipe_files import find_recipe, resolve_recipe

    recipe = resolve_recipe(find_recipe("fast/cifar10_cct_bn.yaml"))
    fields = config_fields(VixCctConfig)
    settings = {key: value for key, value in recipe.items() if key in fields}
    settings.update(attention_type=attention_type, num_labels=10)
    if attention_type == "nystrom":  # as the CPU-budget CCN: 16 landmarks, a 9-tap residual conv
        settings.update(nystrom_num_landmarks=16, nystrom_residual_conv_kernel=9)
    return VixCctConfig(**settings)


def measure_one(attention_type: str, path: str, args: StepArguments) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from modeling_vix import VixCctForImageClassification

    channels_last, math, compiled = PATHS[path]
    torch.manual_seed(0)
    model = VixCctForImageClassification(fast_cct_config(attention_type)).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compiled else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    precision = resolve_precision("auto", device="cpu", use_cpu=True).name
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()
    pixels, labels = torch.randn(args.batch_size, 3, 32, 32), torch.randint(0, 10, (args.batch_size,))
    times = []
    for _ in range(args.warmup_steps + args.steps):
        start = time.perf_counter()
        with autocast, (sdpa_kernel(SDPBackend.MATH) if math else nullcontext()):
            loss = step_model(pixel_values=pixels, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    return {"attention_type": attention_type, "path": path, "precision": precision,
            "step_time_s": statistics.median(times[args.warmup_steps:]), "first_step_s": times[0]}


def measure_in_subprocess(attention_type: str, path: str, args: StepArguments) -> dict:
    command = [sys.executable, "-W", "ignore", "-m", "benchmarks.training_step", "--one", f"{attention_type}:{path}",
               "--batch_size", str(args.batch_size), "--warmup_steps", str(args.warmup_steps),
               "--steps", str(args.steps)]
    completed = subprocess.run(command, capture_output=True, text=True)
    for line in completed.stdout.splitlines():
        if line.startswith("STEP_RESULT "):
            return json.loads(line[len("STEP_RESULT "):])
    return {"attention_type": attention_type, "path": path, "error": completed.stderr[-300:]}


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# The training step before and after the fast CPU-budget protocol (same run)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, CPU capability {machine.get('cpu_capability')}, "
        f"native bf16: {machine.get('cpu_native_bf16')}; torch {machine['torch']}. Command: `{report['command']}`",
        "",
        f"One AdamW step of the `fast/cifar10_cct_bn.yaml` model (CCT, BatchNorm tokenizer, 64 tokens) at batch "
        f"{report['batch_size']}, 32x32, precision auto; median of {report['steps']} steps after "
        f"{report['warmup_steps']} warm-up steps; each path in its own process. Ratio: `before` / the path (above 1: "
        "faster).",
        "",
        "| mixer | path | step (s) | speed-up vs before | first step (s) |",
        "|---|---|---|---|---|",
    ]
    before = {r["attention_type"]: r["step_time_s"] for r in report["results"]
              if r["path"] == "before" and "step_time_s" in r}
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['attention_type']} | {r['path']} | fails: {r['error'][:80]} | | |")
            continue
        ratio = before[r["attention_type"]] / r["step_time_s"] if r["attention_type"] in before else float("nan")
        lines.append(f"| {r['attention_type']} | {r['path']} | {r['step_time_s']:.3f} | {ratio:.2f}x | "
                     f"{r['first_step_s']:.1f} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    (args,) = HfArgumentParser(StepArguments).parse_args_into_dataclasses(args=argv)
    if args.one:
        attention_type, path = args.one.split(":", 1)
        print("STEP_RESULT " + json.dumps(measure_one(attention_type, path, args)))
        return
    report = {"machine": describe_machine("cpu"), "batch_size": args.batch_size, "steps": args.steps,
              "warmup_steps": args.warmup_steps,
              "command": "python -m benchmarks.training_step " + " ".join(sys.argv[1:] if argv is None else argv),
              "results": []}
    for attention_type in args.attention_types:
        for path in args.paths:
            result = measure_in_subprocess(attention_type, path, args)
            print(result, flush=True)
            report["results"].append(result)
    save_report(args.name, report, markdown(report))


if __name__ == "__main__":
    main()
