"""CIFAR-10 test accuracy of trained ViX classifiers in PyTorch, onnxruntime fp32, and onnxruntime int8 with dynamic
and with static quantization: what `python -m conversion.to_onnx --quantize int8` costs, and which int8 to ship.

    python -m benchmarks.onnx_int8_accuracy --models outputs/ckpt/cifar10_cct_bn outputs/ckpt/cifar10_ccn_bn

Each model folder (save_pretrained, with its preprocessor_config.json) is exported as `conversion.to_onnx` exports
it; int8 dynamic is `to_onnx.quantize_int8` as the command runs it; int8 static calibrates activation ranges on
`--calibration_images` CIFAR-10 *train* images. All four are evaluated on the same `--limit` test images (10,000:
the whole split), through the folder's own image processor. Writes benchmarks/results/<name>.{json,md}.
"""

import json
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import HfArgumentParser

from benchmarks.run import describe_machine, machine_summary, save_report
from conversion import to_onnx


DEFAULT_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


@dataclass
class AccuracyArguments:
    models: list[str] = field(metadata={"help": "trained ViX folders (or Hub ids) to evaluate"})
    dataset: str = field(default=str(DEFAULT_CIFAR10), metadata={"help": "CIFAR-10 (a local copy or uoft-cs/cifar10)"})
    limit: int = field(default=10000, metadata={"help": "test images (10000: the whole test split)"})
    calibration_images: int = field(default=1024, metadata={"help": "train images for static quantization"})
    batch_size: int = 250
    name: str = "onnx_int8_accuracy"
    note: str = field(default="", metadata={"help": "a line for the report (e.g. how the checkpoints were trained)"})


def pixels_and_labels(dataset, processor, count: int) -> tuple[np.ndarray, np.ndarray]:
    rows = dataset.select(range(min(count, len(dataset))))
    pixels = [processor(rows[start:start + 500]["img"], return_tensors="np")["pixel_values"]
              for start in range(0, len(rows), 500)]
    return np.concatenate(pixels).astype(np.float32), np.asarray(rows["label"])


def accuracy(predict, pixels: np.ndarray, labels: np.ndarray, batch_size: int) -> tuple[float, float]:
    """(top-1 accuracy, seconds) of `predict` (pixels -> logits) over the set in batches."""
    start = time.perf_counter()
    predictions = np.concatenate([predict(pixels[i:i + batch_size]).argmax(-1)
                                  for i in range(0, len(pixels), batch_size)])
    return float((predictions == labels).mean()), time.perf_counter() - start


def evaluate(spec: str, test, train, args: AccuracyArguments) -> dict:
    model, processor = to_onnx.load_vix_folder(spec)
    test_pixels, test_labels = pixels_and_labels(test, processor, args.limit)
    calibration, _ = pixels_and_labels(train.shuffle(seed=0), processor, args.calibration_images)
    name = Path(spec).name  # a Trainer checkpoint is named by its run folder too: cifar10_cct_bn/checkpoint-704
    name = f"{Path(spec).parent.name}/{name}" if name.startswith("checkpoint-") else name
    result = {"model": name, "model_type": model.config.model_type,
              "attention_type": model.config.attention_type,
              "parameters": sum(p.numel() for p in model.parameters()), "test_images": len(test_labels), "rows": []}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        to_onnx.export_onnx(model, folder / "fp32.onnx", torch.from_numpy(test_pixels[:2]))
        to_onnx.quantize_int8(folder / "fp32.onnx", folder / "int8_dynamic.onnx")
        to_onnx.quantize_int8(folder / "fp32.onnx", folder / "int8_static.onnx", calibration=calibration)

        def torch_logits(pixels):
            with torch.no_grad():
                return model(pixel_values=torch.from_numpy(pixels)).logits.numpy()

        runs = {"PyTorch fp32": (torch_logits, None)}
        for variant in ("fp32", "int8_dynamic", "int8_static"):
            session = to_onnx.ort_session(folder / f"{variant}.onnx")
            runs[f"onnxruntime {variant.replace('_', ' ')}"] = (
                lambda pixels, session=session: to_onnx.run_session(session, pixels), folder / f"{variant}.onnx")
        for label, (predict, path) in runs.items():
            top1, seconds = accuracy(predict, test_pixels, test_labels, args.batch_size)
            row = {"runtime": label, "top1": top1, "eval_seconds": seconds,
                   "file_kb": path.stat().st_size / 1024 if path else None}
            result["rows"].append(row)
            print(f"  {result['model']}: {label}: {top1:.2%}", flush=True)
    reference = result["rows"][0]["top1"]
    for row in result["rows"]:
        row["points_vs_pytorch"] = 100 * (row["top1"] - reference)
    return result


def markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [
        "# int8 ONNX models: CIFAR-10 test accuracy against fp32",
        "",
        f"Command: `{report['command']}`. Machine: {machine_summary(machine)}; torch {machine['torch']}, "
        f"onnxruntime {report['onnxruntime']}.",
        "",
        f"{report['test_images']} CIFAR-10 test images through each folder's image processor. int8 dynamic: "
        "`onnxruntime.quantization.quantize_dynamic` (QInt8 weights, activations quantized per batch at run time), "
        "what `python -m conversion.to_onnx --quantize int8` writes. int8 static: `quantize_static` (per-channel "
        f"QInt8 weights, QUInt8 activations) calibrated on {report['calibration_images']} CIFAR-10 train images.",
    ]
    if report.get("note"):
        lines += ["", report["note"]]
    lines += ["", "| model | mixer | parameters | runtime | top-1 | vs PyTorch (points) | file (KB) |",
              "|---|---|---|---|---|---|---|"]
    for result in report["results"]:
        for row in result["rows"]:
            size = f"{row['file_kb']:.0f}" if row["file_kb"] else ""
            lines.append(f"| {result['model']} | {result['attention_type']} | {result['parameters']:,} | "
                         f"{row['runtime']} | {row['top1']:.2%} | {row['points_vs_pytorch']:+.2f} | {size} |")
    lines.append("")
    return "\n".join(lines)


def main(argv=None):
    import onnxruntime
    from datasets import load_dataset

    (args,) = HfArgumentParser(AccuracyArguments).parse_args_into_dataclasses(args=argv)
    splits = load_dataset(args.dataset)
    report = {"machine": describe_machine("cpu"), "onnxruntime": onnxruntime.__version__,
              "command": shlex.join(["python", "-m", __spec__.name, *(sys.argv[1:] if argv is None else argv)]),
              "test_images": min(args.limit, len(splits["test"])), "calibration_images": args.calibration_images,
              "note": args.note, "results": []}
    for spec in args.models:
        report["results"].append(evaluate(spec, splits["test"], splits["train"], args))
    save_report(args.name, report, markdown(report))
    print(json.dumps({r["model"]: {row["runtime"]: row["top1"] for row in r["rows"]} for r in report["results"]}))


if __name__ == "__main__":
    main()
