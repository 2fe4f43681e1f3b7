"""The training input pipeline alone (no model): batches per second of the per-item path (datasets' set_transform:
decode + image processor per image, every epoch) against `--preload_images` (decoded once into uint8), in the same
run, on the offline CIFAR-10 copy with the CPU-budget augmentation (crop + flip), batch 128.

    python -m benchmarks.input_pipeline                 # writes benchmarks/results/input_pipeline.{json,md}
    python -m benchmarks.input_pipeline --batches 20    # quicker

Both pipelines run in this process through the same `DataLoader` settings as the Trainer's defaults here
(no workers, `DefaultDataCollator`); the preload's one-off decoding time is reported separately.
"""

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from transformers import DefaultDataCollator, HfArgumentParser

from benchmarks.run import describe_machine, save_report
from modeling_vix import VixImageProcessor
from training.augment import Augmenter
from training.data import DataArguments, load_splits
from training.preload import PreloadedImages
from training.train import make_transform


@dataclass
class PipelineArguments:
    dataset_name: str = field(default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"))
    batch_size: int = 128
    batches: int = 40
    repeats: int = 3
    name: str = "input_pipeline"


def seconds_per_batch(dataset, batch_size: int, batches: int, repeats: int) -> float:
    """Median over `repeats` of the mean time to draw `batches` shuffled batches (after one warm-up batch)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=DefaultDataCollator())
    times = []
    for _ in range(repeats):
        batches_iter = iter(loader)
        next(batches_iter)
        start = time.perf_counter()
        for _ in range(batches):
            next(batches_iter)
        times.append((time.perf_counter() - start) / batches)
    return statistics.median(times)


def measure(args: PipelineArguments) -> dict:
    splits, info = load_splits(DataArguments(dataset_name=args.dataset_name, check_images=False), seed=0)
    train, columns = splits["train"], (info["image_column"], info["label_column"])
    processor, augmenter = VixImageProcessor(), Augmenter("crop_flip", seed=0)
    train.set_transform(make_transform(processor, *columns, augmenter))
    per_item = seconds_per_batch(train, args.batch_size, args.batches, args.repeats)
    train.reset_format()
    start = time.perf_counter()
    preloaded = PreloadedImages(train, processor, *columns, augmenter=augmenter)
    decode_seconds = time.perf_counter() - start
    preloaded_time = seconds_per_batch(preloaded, args.batch_size, args.batches, args.repeats)
    steps_per_epoch = -(-len(train) // args.batch_size)
    return {
        "machine": describe_machine("cpu"), "torch_threads": torch.get_num_threads(),
        "command": "python -m benchmarks.input_pipeline " + " ".join(sys.argv[1:]),
        "train_images": len(train), "batch_size": args.batch_size, "batches": args.batches, "repeats": args.repeats,
        "per_item_s_per_batch": per_item, "preloaded_s_per_batch": preloaded_time,
        "preload_decode_s": decode_seconds, "speedup": per_item / preloaded_time,
        "per_item_s_per_epoch": per_item * steps_per_epoch, "preloaded_s_per_epoch": preloaded_time * steps_per_epoch,
    }


def markdown(result: dict) -> str:
    machine = result["machine"]
    return "\n".join([
        "# Training input pipeline: per-item processing against --preload_images (same run)",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({result['torch_threads']} threads). Command: `{result['command']}`",
        "",
        f"CIFAR-10 train split ({result['train_images']:,} images), crop + flip, batch {result['batch_size']}, "
        f"median of {result['repeats']} x {result['batches']} batches, no model.",
        "",
        "| pipeline | ms per batch | s per epoch | one-off decoding |",
        "|---|---|---|---|",
        f"| per item (set_transform: decode + processor per image) | {1000 * result['per_item_s_per_batch']:.1f} | "
        f"{result['per_item_s_per_epoch']:.1f} | – |",
        f"| --preload_images (uint8 in memory) | {1000 * result['preloaded_s_per_batch']:.1f} | "
        f"{result['preloaded_s_per_epoch']:.1f} | {result['preload_decode_s']:.1f} s |",
        "",
        f"Preloading draws batches {result['speedup']:.1f}x faster.",
        "",
    ])


def main(argv=None):
    (args,) = HfArgumentParser(PipelineArguments).parse_args_into_dataclasses(args=argv)
    result = measure(args)
    save_report(args.name, result, markdown(result))


if __name__ == "__main__":
    main()
