"""Run the benchmark suite: one fresh process per model and setting, then JSON, a markdown table and plots.

    python -m benchmarks.run                      # paper config (1025 tokens) + token-count sweep, CPU fp32
    python -m benchmarks.run --suite paper --dtype bf16
    python -m benchmarks.run --suite scaling --models vix-nystrom hf-vit-sdpa

Writes `benchmarks/results/<name>.{json,md}` and `<name>_scaling.png`. Ratios are taken against peers measured
in the same run, on the same machine, never against numbers from elsewhere.
"""

import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser

from benchmarks.models import BUILDERS, PEERS
from training.train import cpu_model_name


RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCALING_SIZES = (32, 48, 64, 96)  # patch 1: 1025, 2305, 4097, 9217 tokens
# transformers' eager ViT stores every N x N map: above 1025 tokens it needs 10+ GB here, so it sits out the sweep.
SCALING_MODELS = ("vix-softmax", "vix-performer", "vix-linformer", "vix-nystrom", "vix-fnet", "hf-vit-sdpa")


@dataclass
class RunArguments:
    suite: str = field(default="all", metadata={"help": "paper | scaling | all"})
    models: list[str] = field(default_factory=lambda: list(BUILDERS), metadata={"help": "models for the paper suite"})
    dtype: str = field(default="fp32", metadata={"help": "fp32 | bf16"})
    device: str = "cpu"
    batch_size: int = 16
    steps: int = 5
    warmup_steps: int = 2
    scaling_tokens_budget: int = 16 * 1025 * 2
    name: str = field(default="", metadata={"help": "results file name (default: <device>_<dtype>)"})
    timeout_s: int = 1200


def describe_machine(device: str) -> dict:
    machine = {"cpu": cpu_model_name(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(0)
    return machine


def measure_in_subprocess(model: str, args: RunArguments, image_size: int, batch_size: int, inference=True) -> dict:
    command = [
        sys.executable, "-W", "ignore", "-m", "benchmarks.measure", "--model", model, "--image_size", str(image_size),
        "--batch_size", str(batch_size), "--steps", str(args.steps), "--warmup_steps", str(args.warmup_steps),
        "--dtype", args.dtype, "--device", args.device, "--measure_inference", str(inference),
    ]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        return {"model": model, "error": f"timed out after {args.timeout_s} s"}
    for line in completed.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return json.loads(line[len("BENCH_RESULT "):])
    return {"model": model, "error": (completed.stderr or "no result")[-300:]}


def log(result: dict) -> None:
    if "error" in result:
        print(f"  {result['model']}: {result['error']}", flush=True)
    elif "step_time_s" in result:
        print(f"  {result['model']} @ {result['tokens']} tokens: step {result['step_time_s']:.3f} s, "
              f"memory {result['peak_memory_mb']:.0f} MB", flush=True)


def paper_suite(args: RunArguments) -> list[dict]:
    results = []
    for model in args.models:
        result = measure_in_subprocess(model, args, 32, args.batch_size)
        log(result)
        results.append(result)
    return results


def scaling_suite(args: RunArguments) -> list[dict]:
    """Time and memory against the token count, with the batch shrunk so batch x tokens stays near a budget."""
    results = []
    for image_size in SCALING_SIZES:
        tokens = image_size**2 + 1
        batch_size = max(1, args.scaling_tokens_budget // tokens)
        for model in SCALING_MODELS:
            result = measure_in_subprocess(model, args, image_size, batch_size, inference=False)
            if "step_time_s" in result:  # per-sample figures compare across batch sizes
                result["step_time_per_sample_s"] = result["step_time_s"] / batch_size
                result["memory_per_sample_mb"] = result["peak_memory_mb"] / batch_size
            log(result)
            results.append(result)
    return results


def ratios(paper_results: list[dict]) -> dict:
    """time and memory of each ViX mixer divided by each of its peers (below 1: ViX is faster / smaller)."""
    by_model = {r["model"]: r for r in paper_results if "step_time_s" in r}
    table = {}
    for model, peers in PEERS.items():
        if model not in by_model:
            continue
        for peer in peers:
            if peer in by_model:
                table[f"{model} / {peer}"] = {
                    "time": by_model[model]["step_time_s"] / by_model[peer]["step_time_s"],
                    "memory": by_model[model]["peak_memory_mb"] / max(by_model[peer]["peak_memory_mb"], 1e-9),
                }
    return table


def scaling_summary(scaling_results: list[dict]) -> dict:
    """Per model: growth of per-sample time and memory from the smallest to about 4x the tokens, and the
    smallest token count at which it is faster per sample than ViX softmax (the crossover)."""
    summary = {}
    ok = [r for r in scaling_results if "step_time_per_sample_s" in r]
    softmax = {r["tokens"]: r for r in ok if r["model"] == "vix-softmax"}
    for model in sorted({r["model"] for r in ok}):
        rows = sorted((r for r in ok if r["model"] == model), key=lambda r: r["tokens"])
        by_tokens = {r["tokens"]: r for r in rows}
        entry = {}
        if 1025 in by_tokens and 4097 in by_tokens:
            entry["time_growth_1025_to_4097"] = by_tokens[4097]["step_time_per_sample_s"] / by_tokens[1025]["step_time_per_sample_s"]
            entry["memory_growth_1025_to_4097"] = by_tokens[4097]["memory_per_sample_mb"] / by_tokens[1025]["memory_per_sample_mb"]
        faster = [t for t, r in by_tokens.items() if t in softmax and r["step_time_per_sample_s"] < softmax[t]["step_time_per_sample_s"]]
        entry["faster_than_softmax_from_tokens"] = min(faster) if faster and model != "vix-softmax" else None
        summary[model] = entry
    return summary


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        f"# Benchmarks: {machine.get('gpu', machine['cpu'])}, {report['settings']['dtype']}",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores" + (f", {machine['gpu']}" if "gpu" in machine else "")
        + f"; torch {machine['torch']}. Command: `{report['command']}`",
        "",
    ]
    if report.get("matmul_gflops"):
        lines += [f"Large fp32/bf16 matmul peak measured in this run: {report['matmul_gflops']:.0f} GFLOP/s.", ""]
    if report.get("paper"):
        lines += [
            "## Paper config (32x32, patch 1, 1025 tokens, hidden 128, depth 4, batch "
            f"{report['settings']['batch_size']}), one AdamW train step",
            "",
            "| model | params | train GFLOP | step time (s) | achieved GFLOP/s | peak memory (MB) | inference img/s |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in report["paper"]:
            if "error" in r:
                lines.append(f"| {r['model']} | | | fails: {r['error'][:80]} | | | |")
                continue
            lines.append(
                f"| {r['model']} | {r['parameters']:,} | {r['train_flops'] / 1e9:.1f} | {r['step_time_s']:.3f} | "
                f"{r['achieved_gflops']:.0f} | {r['peak_memory_mb']:.0f} | {r.get('inference_images_per_s', 0):.1f} |"
            )
        lines += ["", "| ratio (same run) | time | memory |", "|---|---|---|"]
        for name, ratio in report["ratios"].items():
            lines.append(f"| {name} | {ratio['time']:.2f} | {ratio['memory']:.2f} |")
        lines.append("")
    if report.get("scaling"):
        lines += [
            "## Token-count sweep (patch 1; batch shrinks so batch x tokens stays constant; per-sample figures)",
            "",
            "| model | tokens | batch | step time / sample (ms) | memory / sample (MB) |",
            "|---|---|---|---|---|",
        ]
        for r in report["scaling"]:
            if "error" in r:
                lines.append(f"| {r['model']} | | | fails: {r['error'][:60]} | |")
            else:
                lines.append(
                    f"| {r['model']} | {r['tokens']} | {r['batch_size']} | {1000 * r['step_time_per_sample_s']:.1f} | "
                    f"{r['memory_per_sample_mb']:.1f} |"
                )
        lines += ["", "| model | time growth 1025 -> 4097 | memory growth 1025 -> 4097 | faster than softmax from |",
                  "|---|---|---|---|"]
        for model, entry in report["scaling_summary"].items():
            growth = entry.get("time_growth_1025_to_4097")
            memory = entry.get("memory_growth_1025_to_4097")
            lines.append(
                f"| {model} | {growth:.2f}x | {memory:.2f}x | {entry['faster_than_softmax_from_tokens'] or '-'} |"
                if growth else f"| {model} | - | - | - |"
            )
    return "\n".join(lines) + "\n"


def plot_scaling(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["scaling"] if "step_time_per_sample_s" in r]
    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for model in sorted({r["model"] for r in rows}):
        points = sorted((r for r in rows if r["model"] == model), key=lambda r: r["tokens"])
        tokens = [r["tokens"] for r in points]
        time_axis.plot(tokens, [1000 * r["step_time_per_sample_s"] for r in points], marker="o", label=model)
        memory_axis.plot(tokens, [r["memory_per_sample_mb"] for r in points], marker="o", label=model)
    for axis, label in ((time_axis, "train step time per sample (ms)"), (memory_axis, "peak memory per sample (MB)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("tokens (patch 1)")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    time_axis.legend(fontsize=7)
    figure.suptitle(f"{report['machine'].get('gpu', report['machine']['cpu'])}, {report['settings']['dtype']}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main(argv=None):
    (args,) = HfArgumentParser(RunArguments).parse_args_into_dataclasses(args=argv)
    report = {
        "machine": describe_machine(args.device),
        "settings": vars(args),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    peak = measure_in_subprocess("matmul-peak", args, 32, 1)
    report["matmul_gflops"] = peak.get("matmul_gflops")
    if args.suite in ("paper", "all"):
        print("paper config:", flush=True)
        report["paper"] = paper_suite(args)
        report["ratios"] = ratios(report["paper"])
    if args.suite in ("scaling", "all"):
        print("token-count sweep:", flush=True)
        report["scaling"] = scaling_suite(args)
        report["scaling_summary"] = scaling_summary(report["scaling"])
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    name = args.name or f"{args.device.split(':')[0]}_{args.dtype}"
    (RESULTS_DIR / f"{name}.json").write_text(json.dumps(report, indent=2))
    (RESULTS_DIR / f"{name}.md").write_text(markdown(report))
    if report.get("scaling"):
        plot_scaling(report, RESULTS_DIR / f"{name}_scaling.png")
    print(f"wrote {RESULTS_DIR / name}.{{json,md}}")


if __name__ == "__main__":
    main()
