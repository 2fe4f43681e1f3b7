"""CPU inference speed of ViX's CIFAR-10 classifiers and of transformers' own ViT, CvT and LeViT at about the same
size (0.55-0.66M parameters, 32x32 input), under PyTorch eager, torch.compile, onnxruntime fp32 and onnxruntime int8.

    python -m benchmarks.inference                          # writes benchmarks/results/inference_cpu.{json,md}
    python -m benchmarks.inference --models vix-ccn hf-vit --paths eager onnx-fp32 --iterations 20 --name try

For each model and path, in a fresh process (no shared thread pools, caches or allocator state): images per second at
batch 1 and at batch 64, and the latency of one image (median and 90th percentile). Models are randomly
initialised (speed does not depend on the weights); the ONNX files are written exactly as `conversion.to_onnx`
writes them (its `export_onnx` and `quantize_int8`), for the ViX models and the transformers peers alike. Ratios
are against transformers' ViT under PyTorch eager from the same run. Run it alone: two cores shared with anything
else give numbers that say more about the other job than about the models.
"""

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser

from benchmarks.run import describe_machine, machine_summary, save_report


PATHS = ("eager", "compiled", "onnx-fp32", "onnx-int8")
BASELINE = ("hf-vit", "eager")
BATCH_SIZES = (1, 64)


def build_model(name: str):
    """A transformers image classifier (eval mode) by benchmark name, randomly initialised, for 32x32 images."""
    from transformers import (
        AutoModelForImageClassification,
        CvtConfig,
        CvtForImageClassification,
        LevitConfig,
        LevitForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    import modeling_vix  # noqa: F401 (registers the ViX model types with the Auto classes)
    from benchmarks.training_step import recipe_config

    torch.manual_seed(0)
    if name in VIX_RECIPES:
        return AutoModelForImageClassification.from_config(recipe_config(VIX_RECIPES[name])).eval()
    if name == "hf-vit":  # patch 4: 64 tokens + cls, as the CCT tokenizer's 8x8 = 64
        config = ViTConfig(image_size=32, patch_size=4, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                           intermediate_size=256, num_labels=10)
        return ViTForImageClassification(config).eval()
    if name == "hf-cvt":  # CvT-13's layout, narrower (stage s needs more than s layers in transformers' CvT)
        config = CvtConfig(embed_dim=[32, 80, 128], depth=[1, 2, 3], num_heads=[1, 2, 4], mlp_ratio=[2.0] * 3,
                           drop_path_rate=[0.0] * 3, num_labels=10)
        return CvtForImageClassification(config).eval()
    if name == "hf-levit":  # LeViT-128S's design, narrower; its 16x stem leaves 2x2 tokens at 32x32
        config = LevitConfig(image_size=32, hidden_sizes=[48, 96, 128], num_attention_heads=[2, 3, 4],
                             depths=[2, 2, 2], key_dim=[16] * 3, mlp_ratio=[2] * 3, attention_ratio=[2] * 3,
                             num_labels=10)
        return LevitForImageClassification(config).eval()
    raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


# The CPU-fast CIFAR-10 recipes: a CCT with a BatchNorm conv tokenizer (64 tokens), softmax (CCT) or Nystrom (CCN).
VIX_RECIPES = {"vix-cct": "fast/cifar10_cct_bn.yaml", "vix-ccn": "fast/cifar10_ccn_bn.yaml"}
MODELS = (*VIX_RECIPES, "hf-vit", "hf-cvt", "hf-levit")


@dataclass
class InferenceArguments:
    models: list[str] = field(default_factory=lambda: list(MODELS))
    paths: list[str] = field(default_factory=lambda: list(PATHS))
    iterations: int = field(default=200, metadata={"help": "timed calls at batch 1 (batch 64: a fifth as many)"})
    warmup: int = 10
    threads: int = field(default=0, metadata={"help": "torch and onnxruntime intra-op threads (0: every core)"})
    name: str = "inference_cpu"
    one: str = field(default="", metadata={"help": "internal: measure one 'model:path' and print it"})


def make_runner(model, path: str, folder: Path, threads: int):
    """A function pixels (B, 3, 32, 32) numpy -> logits for `path`, and what it took to prepare it."""
    from conversion import to_onnx

    start = time.perf_counter()
    if path in ("eager", "compiled"):
        # one static graph per batch size (dynamic=False): what a server with fixed batch sizes would compile
        module = torch.compile(model, dynamic=False) if path == "compiled" else model

        def run(pixels):
            with torch.no_grad():
                return module(pixel_values=torch.from_numpy(pixels)).logits

        # compile for both batch sizes before timing (a compiled model recompiles for a new batch size)
        for batch in BATCH_SIZES:
            run(np.zeros((batch, 3, 32, 32), np.float32))
        return run, time.perf_counter() - start
    onnx_path = to_onnx.export_onnx(model, folder / "model.onnx", torch.zeros(2, 3, 32, 32))
    if path == "onnx-int8":
        onnx_path = to_onnx.quantize_int8(onnx_path, folder / "model_int8.onnx")
    session = to_onnx.ort_session(onnx_path, threads)
    return (lambda pixels: to_onnx.run_session(session, pixels)), time.perf_counter() - start


def timed_calls(run, pixels: np.ndarray, warmup: int, iterations: int) -> list[float]:
    for _ in range(warmup):
        run(pixels)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        run(pixels)
        times.append(time.perf_counter() - start)
    return times


def measure_one(model_name: str, path: str, args: InferenceArguments) -> dict:
    threads = args.threads or os.cpu_count()
    torch.set_num_threads(threads)
    model = build_model(model_name)
    with tempfile.TemporaryDirectory() as folder:
        run, prepare_s = make_runner(model, path, Path(folder), threads)
        rng = np.random.default_rng(0)
        single = timed_calls(run, rng.standard_normal((1, 3, 32, 32), np.float32), args.warmup, args.iterations)
        batched = timed_calls(run, rng.standard_normal((64, 3, 32, 32), np.float32), max(2, args.warmup // 5),
                              max(3, args.iterations // 5))
    return {"model": model_name, "path": path, "parameters": sum(p.numel() for p in model.parameters()),
            "attention_type": getattr(model.config, "attention_type", "softmax"), "threads": threads,
            "prepare_s": prepare_s, "latency_b1_median_ms": 1000 * statistics.median(single),
            "latency_b1_p90_ms": 1000 * float(np.percentile(single, 90)),
            "images_per_s_b1": 1 / statistics.median(single), "images_per_s_b64": 64 / statistics.median(batched)}


def measure_in_subprocess(model: str, path: str, args: InferenceArguments) -> dict:
    command = [sys.executable, "-W", "ignore", "-m", "benchmarks.inference", "--one", f"{model}:{path}",
               "--iterations", str(args.iterations), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    completed = subprocess.run(command, capture_output=True, text=True)
    for line in completed.stdout.splitlines():
        if line.startswith("INFERENCE_RESULT "):
            return json.loads(line[len("INFERENCE_RESULT "):])
    return {"model": model, "path": path, "error": (completed.stderr or "no result").strip()[-300:]}


def add_ratios(results: list[dict]) -> None:
    """Each row's speed over the baseline's (transformers' ViT, PyTorch eager) from the same run: above 1 is faster."""
    baseline = next((r for r in results if (r["model"], r["path"]) == BASELINE and "error" not in r), None)
    for result in results:
        if baseline is None or "error" in result:
            continue
        for batch in BATCH_SIZES:
            result[f"speedup_b{batch}"] = result[f"images_per_s_b{batch}"] / baseline[f"images_per_s_b{batch}"]


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# CPU inference: ViX's CIFAR-10 classifiers and transformers' ViT / CvT / LeViT, PyTorch and onnxruntime",
        "",
        f"Command: `{report['command']}`. Machine: {machine_summary(machine)}; torch {machine['torch']}, "
        f"onnxruntime {report['onnxruntime']}; "
        f"{report['threads']} threads.",
        "",
        "Randomly initialised models at 32x32. eager: PyTorch eval + no_grad; compiled: `torch.compile` (inductor); "
        "onnx-fp32 / onnx-int8: the files `python -m conversion.to_onnx [--quantize int8]` writes, on onnxruntime's "
        f"CPU provider. Latency: one image, median and p90 of {report['iterations']} calls after warm-up; batch 64: "
        f"median of {max(3, report['iterations'] // 5)} calls. Speed-up: images/s over transformers' ViT under "
        "PyTorch eager, same run. Each row in its own process.",
        "",
        "| model | mixer | parameters | path | latency b1 median (ms) | p90 (ms) | images/s b1 | images/s b64 | "
        "speed-up b1 | speed-up b64 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['model']} | | | {r['path']} | fails: {r['error'][:100]} | | | | | |")
            continue
        ratios = [f"{r[f'speedup_b{b}']:.2f}x" if f"speedup_b{b}" in r else "" for b in BATCH_SIZES]
        lines.append(f"| {r['model']} | {r['attention_type']} | {r['parameters']:,} | {r['path']} | "
                     f"{r['latency_b1_median_ms']:.2f} | {r['latency_b1_p90_ms']:.2f} | {r['images_per_s_b1']:.0f} | "
                     f"{r['images_per_s_b64']:.0f} | {ratios[0]} | {ratios[1]} |")
    lines.append("")
    return "\n".join(lines)


def argument_problem(args: InferenceArguments) -> str | None:
    unknown = [m for m in args.models if m not in MODELS] + [p for p in args.paths if p not in PATHS]
    if unknown:
        return f"unknown {' '.join(unknown)}: models are {', '.join(MODELS)}; paths are {', '.join(PATHS)}"
    if args.iterations < 5 or args.warmup < 1:
        return "give --iterations >= 5 and --warmup >= 1"
    return None


def main(argv=None):
    (args,) = HfArgumentParser(InferenceArguments).parse_args_into_dataclasses(args=argv)
    if args.one:
        model, path = args.one.rsplit(":", 1)
        print("INFERENCE_RESULT " + json.dumps(measure_one(model, path, args)))
        return
    problem = argument_problem(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    import onnxruntime

    report = {"machine": describe_machine("cpu"), "onnxruntime": onnxruntime.__version__,
              "threads": args.threads or os.cpu_count(), "iterations": args.iterations,
              "command": shlex.join(["python", "-m", __spec__.name, *(sys.argv[1:] if argv is None else argv)]),
              "results": []}
    for model in args.models:
        for path in args.paths:
            result = measure_in_subprocess(model, path, args)
            print(result, flush=True)
            report["results"].append(result)
    add_ratios(report["results"])
    save_report(args.name, report, markdown(report))


if __name__ == "__main__":
    main()
