"""Where each X-former starts to pay: train-step time and peak memory against transformers' ViT with fused SDPA,
from 64 to 16k tokens, eager and compiled.

    python -m benchmarks.crossover                       # writes benchmarks/results/crossover_cpu_fp32.{json,md,png}
    python -m benchmarks.crossover --compile --name crossover_cpu_fp32_compiled

The paper's ViT (hidden 128, depth 4, 4 heads of 32, MLP 256) with patch 1 on square images of 8 to 128 pixels:
65 to 16,385 tokens. The batch shrinks so that batch x tokens stays near `--tokens_per_batch` (16 images of 1,025
tokens, the paper's configuration, by default). Every measurement is one fresh process (`benchmarks.measure`: one
AdamW step, median of the timed steps, peak RSS above the process's own import baseline). A ratio is
SDPA's figure / the X-former's at the same token count: above 1 the X-former is faster (or smaller). The
crossover is the smallest token count from which the X-former stays faster.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from benchmarks.run import (
    RESULTS_DIR,
    RunArguments,
    describe_machine,
    log,
    machine_summary,
    measure_in_subprocess,
    save_report,
)


IMAGE_SIZES = (8, 16, 32, 64, 128)  # patch 1: 65, 257, 1025, 4097, 16385 tokens
MIXERS = ("vix-nystrom", "vix-performer", "vix-linformer")
BASELINE = "hf-vit-sdpa"


@dataclass
class CrossoverArguments:
    mixers: list[str] = field(default_factory=lambda: list(MIXERS))
    image_sizes: list[int] = field(default_factory=lambda: list(IMAGE_SIZES))
    tokens_per_batch: int = 16 * 1025
    compile: bool = field(default=False, metadata={"help": "torch.compile every model, the baseline too"})
    dtype: str = "fp32"
    steps: int = 3
    warmup_steps: int = 2
    timeout_s: int = 1800
    name: str = field(default="", metadata={"help": "results name (default: crossover_cpu_<dtype>[_compiled])"})


def measure_all(args: CrossoverArguments) -> list[dict]:
    run_args = RunArguments(compile=args.compile, dtype=args.dtype, steps=args.steps, warmup_steps=args.warmup_steps,
                            timeout_s=args.timeout_s)
    results = []
    for image_size in args.image_sizes:
        batch_size = max(1, args.tokens_per_batch // (image_size**2 + 1))
        for model in (BASELINE, *args.mixers):
            result = measure_in_subprocess(model, run_args, image_size, batch_size, inference=False)
            result.update(model=model, image_size=image_size, batch_size=batch_size, tokens=image_size**2 + 1)
            log(result)
            results.append(result)
    return results


def ratios(results: list[dict]) -> list[dict]:
    """Per mixer and token count: SDPA's step time and memory over the mixer's (above 1: the mixer wins)."""
    baseline = {r["tokens"]: r for r in results if r["model"] == BASELINE and "step_time_s" in r}
    rows = []
    for r in results:
        if r["model"] == BASELINE or "step_time_s" not in r or r["tokens"] not in baseline:
            continue
        peer = baseline[r["tokens"]]
        rows.append({"model": r["model"], "tokens": r["tokens"], "batch_size": r["batch_size"],
                     "step_time_s": r["step_time_s"], "sdpa_step_time_s": peer["step_time_s"],
                     "speedup": peer["step_time_s"] / r["step_time_s"],
                     "peak_memory_mb": r["peak_memory_mb"], "sdpa_peak_memory_mb": peer["peak_memory_mb"],
                     "memory_ratio": r["peak_memory_mb"] / peer["peak_memory_mb"]})
    return rows


def crossover_tokens(rows: list[dict], model: str, key: str, better) -> int | None:
    """The smallest token count from which `model` stays better on `key` at every larger count measured."""
    mine = sorted((r for r in rows if r["model"] == model), key=lambda r: r["tokens"])
    for index, row in enumerate(mine):
        if all(better(r[key]) for r in mine[index:]):
            return row["tokens"]
    return None


def markdown(report: dict) -> str:
    machine, rows = report["machine"], report["ratios"]
    mode = "compiled (torch.compile, every model)" if report["settings"]["compile"] else "eager"
    lines = [
        f"# Crossover against fused SDPA: {report['settings']['dtype']}, {mode}",
        "",
        f"Machine: {machine_summary(machine)}; torch {machine['torch']}. Command: `{report['command']}`",
        "",
        "One AdamW train step of the paper's ViT (hidden 128, depth 4, 4 heads of 32, MLP 256, patch 1); batch x "
        f"tokens about {report['settings']['tokens_per_batch']:,}; each figure from its own process (median step, "
        "peak RSS above the import baseline). Speed-up: SDPA's step / the X-former's; memory: the X-former's peak / "
        "SDPA's (below 1: smaller).",
        "",
        "| mixer | tokens | batch | step (s) | SDPA step (s) | speed-up vs SDPA | peak MB | SDPA peak MB "
        "| memory vs SDPA |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['model']} | {r['tokens']:,} | {r['batch_size']} | {r['step_time_s']:.3f} | "
                     f"{r['sdpa_step_time_s']:.3f} | {r['speedup']:.2f}x | {r['peak_memory_mb']:,.0f} | "
                     f"{r['sdpa_peak_memory_mb']:,.0f} | {r['memory_ratio']:.2f}x |")
    failures = [r for r in report["results"] if "error" in r]
    for r in failures:
        lines.append(f"| {r['model']} | {r['tokens']:,} | {r['batch_size']} | fails: {r['error'][:60]} | | | | | |")
    lines += ["", "| mixer | faster than SDPA from | no more memory than SDPA from |", "|---|---|---|"]
    for model, entry in report["crossover"].items():
        time_from, memory_from = entry["faster_from_tokens"], entry["no_more_memory_from_tokens"]
        lines.append(f"| {model} | {f'{time_from:,} tokens' if time_from else 'not in this range'} | "
                     f"{f'{memory_from:,} tokens' if memory_from else 'not in this range'} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(10, 4))
    for model in report["crossover"]:
        rows = [r for r in report["ratios"] if r["model"] == model]
        tokens = [r["tokens"] for r in rows]
        time_axis.plot(tokens, [r["speedup"] for r in rows], marker="o", label=model)
        memory_axis.plot(tokens, [r["memory_ratio"] for r in rows], marker="o", label=model)
    for axis, title in ((time_axis, "speed-up vs fused SDPA (above 1: faster)"),
                        (memory_axis, "peak memory / fused SDPA's (below 1: smaller)")):
        axis.axhline(1.0, color="grey", linewidth=0.8)
        axis.set_xscale("log", base=2)
        axis.set_xlabel("tokens")
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
    figure.suptitle(f"{machine_summary(report['machine'])}, {report['settings']['dtype']}, "
                    f"{'compiled' if report['settings']['compile'] else 'eager'}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    (args,) = HfArgumentParser(CrossoverArguments).parse_args_into_dataclasses(args=argv)
    name = args.name or f"crossover_cpu_{args.dtype}{'_compiled' if args.compile else ''}"
    results = measure_all(args)
    rows = ratios(results)
    crossover = {model: {"faster_from_tokens": crossover_tokens(rows, model, "speedup", lambda x: x > 1.0),
                         "no_more_memory_from_tokens": crossover_tokens(rows, model, "memory_ratio",
                                                                        lambda x: x <= 1.0)}
                 for model in args.mixers}
    report = {"machine": describe_machine("cpu"), "command": " ".join(["python -m benchmarks.crossover", *argv]),
              "settings": vars(args), "results": results, "ratios": rows, "crossover": crossover}
    save_report(name, report, markdown(report))
    plot(report, RESULTS_DIR / f"{name}.png")


if __name__ == "__main__":
    main()
