"""LoRA against full fine-tuning, tabulated from the two runs' metrics.json (same source checkpoint, data, epochs).

The runs (CIFAR-10 CCN checkpoint -> Fashion-MNIST, one epoch each, on one machine, one after the other):

    python -m training.fashion_mnist outputs/data/fashion_mnist
    python -m training.train --model_name_or_path SOURCE --dataset_name outputs/data/fashion_mnist --lora_r 8 \\
        --num_train_epochs 1 --preload_images true --channels_last true --sdpa_backend math \\
        --output_dir outputs/lora_example/lora
    (the same without --lora_r, --output_dir outputs/lora_example/full)
    python -m benchmarks.fine_tuning_table --runs outputs/lora_example/lora outputs/lora_example/full \\
        --source SOURCE --name lora_fashion_mnist
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser

from benchmarks.run import save_report


@dataclass
class TableArguments:
    runs: list[str] = field(metadata={"help": "run folders (their final/metrics.json and final/recipe.yaml)"})
    source: str = field(metadata={"help": "the checkpoint both runs started from"})
    name: str = "lora_fashion_mnist"


def row(run: Path) -> dict:
    metrics = json.loads((run / "final" / "metrics.json").read_text())
    recipe = (run / "final" / "recipe.yaml").read_text()
    lora_r = next((int(line.split(":")[1]) for line in recipe.splitlines() if line.startswith("lora_r:")), 0)
    return {"run": str(run), "method": f"LoRA r={lora_r}" if lora_r else "full fine-tuning",
            "trainable_parameters": metrics["trainable_parameters"], "num_parameters": metrics["num_parameters"],
            "test_accuracy": metrics["test_accuracy"], "best_validation_accuracy": metrics["best_validation_accuracy"],
            "train_runtime_s": metrics["train_runtime"], "epochs": metrics["epochs"],
            "hardware": metrics["hardware"], "precision": metrics["precision"],
            "cpu_capability": metrics.get("cpu_capability"), "dataset": metrics["dataset"],
            "split_sizes": metrics["split_sizes"]}


def markdown(report: dict) -> str:
    first = report["rows"][0]
    lines = [
        "# LoRA against full fine-tuning",
        "",
        f"Source checkpoint: `{report['source']}`. Data: {first['dataset']} ({first['split_sizes']}); "
        f"{first['epochs']:g} epoch each; {first['hardware']}, CPU capability {first['cpu_capability']}, "
        f"precision {first['precision']}. The runs ran one after the other, alone on the machine. "
        f"Command: `{report['command']}` (the runs' commands are in `benchmarks/fine_tuning_table.py`).",
        "",
        "| method | trainable parameters | test top-1 | best validation | training |",
        "|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        share = r["trainable_parameters"] / r["num_parameters"]
        lines.append(f"| {r['method']} | {r['trainable_parameters']:,} ({share:.1%}) | {r['test_accuracy']:.2%} | "
                     f"{r['best_validation_accuracy']:.2%} | {r['train_runtime_s']:.0f} s |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    (args,) = HfArgumentParser(TableArguments).parse_args_into_dataclasses(args=argv)
    missing = [run for run in args.runs if not (Path(run) / "final" / "metrics.json").is_file()]
    if missing:
        print(f"benchmarks.fine_tuning_table: no final/metrics.json in {', '.join(missing)}", file=sys.stderr)
        sys.exit(2)
    report = {"source": args.source, "rows": [row(Path(run)) for run in args.runs],
              "command": "python -m benchmarks.fine_tuning_table " + " ".join(sys.argv[1:] if argv is None else argv)}
    save_report(args.name, report, markdown(report))


if __name__ == "__main__":
    main()
