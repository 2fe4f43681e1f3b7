"""Streaming against the map-style input path of the training job, on an ImageNet-shaped set: time to the first
training step, images per second after it, and peak memory, with 0, 2 and 4 DataLoader workers, in one run.

    python -m benchmarks.make_imagenet_like --output_dir outputs/imagenet_like   # 20k JPEGs, 256 px, 100 classes
    python -m benchmarks.streaming --dataset_name outputs/imagenet_like   # -> benchmarks/results/streaming.*
    python -m benchmarks.streaming --dataset_name outputs/tiny_like --steps 5 --workers 0 2 --name streaming_smoke

Each configuration is one `python -m training.train` process (the job as users run it), started alone:
- map-style: `load_dataset(folder)` into a fresh Arrow cache, every image decoded once to check it (the default
  for sets of up to 100,000 images), then per-batch decoding;
- streaming: `--streaming true`, nothing read before the first batch, shuffle buffer `--shuffle_buffer_size`.
Time to first step runs from the process start to the end of step 1; images per second is over steps 2..N
(`--steps`, batch `--batch_size`); peak memory is the largest sum of proportional set sizes (PSS, so pages that
forked workers share count once) over the job's process tree, sampled every 0.2 s. The model is small (the input
path is what is measured): a Nyström ViX at 64 px, patch 8, fp32.
The machine must be otherwise idle: 2-core timings move several-fold when anything else runs.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from benchmarks.run import describe_machine, save_report


ROOT = Path(__file__).resolve().parents[1]
MODEL = ["--image_size", "64", "--patch_size", "8", "--embedding_type", "linear", "--position_embedding_type",
         "learned", "--hidden_size", "64", "--intermediate_size", "128", "--precision", "fp32"]
CHILD = """\
import json, sys, time
start = float(sys.argv[1])
from transformers import TrainerCallback
from training.train import main
class Clock(TrainerCallback):
    steps = []
    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(time.time())
main(sys.argv[3:], callbacks=[Clock()])
json.dump({"start": start, "steps": Clock.steps}, open(sys.argv[2], "w"))
"""


@dataclass
class StreamingArguments:
    dataset_name: str = field(metadata={"help": "A folder from benchmarks/make_imagenet_like.py (or any image set)."})
    steps: int = 40
    batch_size: int = 64
    workers: list[int] = field(default_factory=lambda: [0, 2, 4])
    modes: list[str] = field(default_factory=lambda: ["map-style", "streaming"])
    shuffle_buffer_size: int = 1000
    name: str = "streaming"


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (Linux /proc)."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                pending += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_job(mode: str, workers: int, args: StreamingArguments, scratch: Path) -> dict:
    out = scratch / f"{mode}-{workers}"
    timings = scratch / f"{mode}-{workers}.json"
    job = ["--dataset_name", args.dataset_name, "--output_dir", str(out), "--max_steps", str(args.steps),
           "--per_device_train_batch_size", str(args.batch_size), "--dataloader_num_workers", str(workers),
           "--max_eval_samples", "64", "--eval_strategy", "no", "--save_strategy", "no",
           "--load_best_model_at_end", "false", "--report_to", "none", "--disable_tqdm", "true",
           "--cache_dir", str(scratch / f"cache-{mode}-{workers}"), *MODEL]
    if mode == "streaming":
        job += ["--streaming", "true", "--shuffle_buffer_size", str(args.shuffle_buffer_size)]
    command = [sys.executable, "-c", CHILD, str(time.time()), str(timings), *job]
    process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], sum(pss_bytes(pid) for pid in process_tree(process.pid)))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample)
    sampler.start()
    log = process.communicate()[0]
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{mode} with {workers} workers failed:\n{log[-3000:]}")
    clock = json.loads(timings.read_text())
    steps = clock["steps"]
    return {"mode": mode, "workers": workers, "first_step_s": steps[0] - clock["start"],
            "images_per_s": (len(steps) - 1) * args.batch_size / (steps[-1] - steps[0]),
            "peak_memory_mib": peak[0] / 2**20}


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# Streaming against the map-style input path (same run)", "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch capability {machine['cpu_capability']}, "
        f"torch {machine['torch']}.", "",
        f"Data: `{report['dataset_name']}` ({report['train_images']:,} training images). Command: "
        f"`{report['command']}`. Each row is one training process: {report['steps']} steps of batch "
        f"{report['batch_size']}; images/s over steps 2..{report['steps']}; peak memory is the process tree's PSS.", "",
        "| path | workers | time to first step | images/s | peak memory |", "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(f"| {row['mode']} | {row['workers']} | {row['first_step_s']:.1f} s | {row['images_per_s']:.0f} "
                     f"| {row['peak_memory_mib']:,.0f} MiB |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    (args,) = HfArgumentParser(StreamingArguments).parse_args_into_dataclasses(args=argv)
    from datasets import load_dataset_builder

    splits = load_dataset_builder(args.dataset_name).info.splits or {}
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for workers in args.workers:
            for mode in args.modes:
                rows.append(run_job(mode, workers, args, Path(scratch)))
                print(json.dumps(rows[-1]), flush=True)
    report = {"machine": describe_machine("cpu"), "dataset_name": args.dataset_name,
              "train_images": splits["train"].num_examples if "train" in splits else None,
              "command": "python -m benchmarks.streaming " + " ".join(sys.argv[1:] if argv is None else argv),
              "steps": args.steps, "batch_size": args.batch_size, "rows": rows}
    save_report(args.name, report, markdown(report))
    return report


if __name__ == "__main__":
    main()
