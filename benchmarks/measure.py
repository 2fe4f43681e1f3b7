"""Measure one model in this process and print one JSON line: the unit `benchmarks.run` launches per model.

Memory is the process's peak RSS above its own peak after imports (CPU) or `max_memory_allocated` (GPU), so
each model is measured in a fresh process. Times are medians over repeated steps after warm-up.
"""

import json
import resource
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch

from benchmarks.models import BenchSize, build
from model_cards.measure import flop_counter
from training.train import attention_backend


@dataclass
class MeasureArguments:
    model: str = field(metadata={"help": "a name from benchmarks.models.BUILDERS, or 'matmul-peak'"})
    image_size: int = 32
    patch_size: int = 1
    batch_size: int = 16
    warmup_steps: int = 2
    steps: int = 5
    dtype: str = field(default="fp32", metadata={"help": "fp32 or bf16 (autocast)"})
    device: str = "cpu"
    measure_inference: bool = True
    compile: bool = False
    sdpa_backend: str = field(default="default", metadata={"help": "default | math (as training.train's flag)",
                                                           "choices": ("default", "math")})


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype: str) -> dict:
    """GFLOP/s of a large square matmul: the ceiling the train steps are compared against."""
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    n = 2048
    a = torch.randn(n, n, device=device, dtype=torch_dtype)
    b = torch.randn(n, n, device=device, dtype=torch_dtype)
    times = []
    for _ in range(6):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"matmul_gflops": 2 * n**3 / statistics.median(times[1:]) / 1e9}


def count_train_flops(model, pixels, labels) -> float:
    """FLOPs of one forward + backward, counted by torch's FlopCounterMode (matmuls, convs, attention kernels)."""
    counter = flop_counter()
    with counter:
        torch.nn.functional.cross_entropy(model(pixels), labels).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure(args: MeasureArguments) -> dict:
    device = args.device
    if args.model == "matmul-peak":
        return {"model": args.model, **matmul_peak(device, args.dtype)}
    torch.manual_seed(0)
    baseline_mb = peak_rss_mb()
    size = BenchSize(image_size=args.image_size, patch_size=args.patch_size)
    model = build(args.model, size).to(device)
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    labels = torch.randint(0, size.num_labels, (args.batch_size,), device=device)
    parameters = sum(p.numel() for p in model.parameters())
    flops = count_train_flops(model, pixels, labels)
    train_model = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if args.dtype == "bf16":
        autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    else:
        autocast = nullcontext()

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    step_times, losses = [], []
    model.train()
    for step in range(args.warmup_steps + args.steps):
        synchronize(device)
        start = time.perf_counter()
        with autocast, attention_backend(args.sdpa_backend):
            loss = torch.nn.functional.cross_entropy(train_model(pixels), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= args.warmup_steps:
            step_times.append(time.perf_counter() - start)
        losses.append(loss.item())
    result = {
        "model": args.model, "tokens": getattr(model, "num_tokens", None) or size.num_tokens,
        "batch_size": args.batch_size, "dtype": args.dtype, "sdpa_backend": args.sdpa_backend,
        "parameters": parameters, "train_flops": flops, "step_time_s": statistics.median(step_times),
        "step_times_s": step_times, "finite_loss": all(map(lambda x: x == x and abs(x) != float("inf"), losses)),
    }
    result["achieved_gflops"] = flops / result["step_time_s"] / 1e9
    if device.startswith("cuda"):
        result["peak_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_memory_mb"] = peak_rss_mb() - baseline_mb

    if args.measure_inference:
        model.eval()
        times = []
        with torch.no_grad(), autocast, attention_backend(args.sdpa_backend):
            for step in range(args.warmup_steps + args.steps):
                synchronize(device)
                start = time.perf_counter()
                train_model(pixels)
                synchronize(device)
                if step >= args.warmup_steps:
                    times.append(time.perf_counter() - start)
        result["inference_images_per_s"] = args.batch_size / statistics.median(times)
    return result


def main(argv=None):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(MeasureArguments).parse_args_into_dataclasses(args=argv)
    try:
        result = measure(args)
    except Exception as error:  # a peer that cannot run is a result too ("fails on current torch")
        result = {"model": args.model, "error": f"{type(error).__name__}: {error}"[:300]}
    result["settings"] = asdict(args)
    print("BENCH_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
