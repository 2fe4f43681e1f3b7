"""bf16 autocast against fp32 over a few hundred training steps, for every mixer (issue 6's precision target).

    python -m benchmarks.bf16_training        # 200 steps per run, writes benchmarks/results/bf16_training.md
    python -m benchmarks.bf16_training --steps 100 --mixers nystrom performer

Each mixer trains the main job's small model (`python -m training.train` defaults: the bundled digits, patch 4,
hidden 64; linear patch embedding) twice through the same Trainer entry point, in fp32 and with bf16 autocast,
with the same seed and so the same initial weights and data order. From the logged training losses it reports
whether any loss or gradient norm was NaN/inf, how far the bf16 loss curve strays from the fp32 one, and both
test accuracies.
"""

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

from transformers import TrainerCallback


MIXERS = ("softmax", "performer", "linformer", "nystrom", "fnet", "mixer")
HAS_QUERIES_AND_KEYS = {"softmax", "performer", "linformer", "nystrom"}  # RoPE needs them


class LossRecorder(TrainerCallback):
    """Keeps every logged training loss and gradient norm, by step."""

    def __init__(self):
        self.losses, self.grad_norms = {}, {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = float(logs["loss"])
            self.grad_norms[state.global_step] = float(logs.get("grad_norm", 0.0))


def train_once(mixer: str, bf16: bool, steps: int, output_dir: Path) -> dict:
    from training.train import main as train

    position = "rope_2d" if mixer in HAS_QUERIES_AND_KEYS else "learned"
    recorder = LossRecorder()
    metrics = train(
        # Linear patches: bf16 convs of the stem take a slow oneDNN path on CPUs without native bf16, which would
        # dominate the run without telling anything about the mixers.
        ["--attention_type", mixer, "--position_embedding_type", position, "--embedding_type", "linear",
         "--max_steps", str(steps),
         "--logging_steps", "10", "--bf16", str(bf16).lower(), "--use_cpu", "true", "--output_dir", str(output_dir),
         "--save_strategy", "no", "--eval_strategy", "no", "--load_best_model_at_end", "false",
         "--report_to", "none", "--disable_tqdm", "true", "--seed", "0"],
        callbacks=[recorder],
    )
    return {"losses": recorder.losses, "grad_norms": recorder.grad_norms, "test_accuracy": metrics["test_accuracy"]}


def compare(fp32: dict, bf16: dict) -> dict:
    """Absolute loss gaps: relative ones blow up once the loss nears 0 late in training, and mean nothing there."""
    steps = sorted(set(fp32["losses"]) & set(bf16["losses"]))
    finite = all(math.isfinite(run[key][step]) for run in (fp32, bf16) for key in ("losses", "grad_norms")
                 for step in run[key])
    gaps = [abs(bf16["losses"][s] - fp32["losses"][s]) for s in steps]
    return {
        "logged_steps": len(steps),
        "all_finite": finite,
        "mean_abs_loss_gap": sum(gaps) / len(gaps),
        "max_abs_loss_gap": max(gaps),
        "mean_loss_fp32": sum(fp32["losses"][s] for s in steps) / len(steps),
        "final_loss_fp32": fp32["losses"][steps[-1]],
        "final_loss_bf16": bf16["losses"][steps[-1]],
        "test_accuracy_fp32": fp32["test_accuracy"],
        "test_accuracy_bf16": bf16["test_accuracy"],
    }


def markdown(rows: dict, steps: int, command: str) -> str:
    lines = [
        "# bf16 autocast against fp32 during training (CPU)", "",
        f"Command: `{command}`. The main job's model on the bundled digits, {steps} AdamW steps, batch 64, "
        "the same seed for both precisions; losses logged every 10 steps.", "",
        "| mixer | all losses and grad norms finite | loss gap, mean / max (absolute) | mean fp32 loss "
        "| final loss fp32 / bf16 | test accuracy fp32 / bf16 |",
        "|---|---|---|---|---|---|",
    ]
    for mixer, row in rows.items():
        lines.append(
            f"| {mixer} | {'yes' if row['all_finite'] else '**no**'} | "
            f"{row['mean_abs_loss_gap']:.3f} / {row['max_abs_loss_gap']:.3f} | {row['mean_loss_fp32']:.3f} | "
            f"{row['final_loss_fp32']:.3f} / {row['final_loss_bf16']:.3f} | "
            f"{100 * row['test_accuracy_fp32']:.1f}% / {100 * row['test_accuracy_bf16']:.1f}% |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--mixers", nargs="+", default=list(MIXERS), choices=MIXERS)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results/bf16_training.md"))
    args = parser.parse_args(argv)

    rows, curves = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        for mixer in args.mixers:
            runs = {bf16: train_once(mixer, bf16, args.steps, Path(scratch) / f"{mixer}-{bf16}")
                    for bf16 in (False, True)}
            rows[mixer] = compare(runs[False], runs[True])
            curves[mixer] = {"fp32": runs[False]["losses"], "bf16": runs[True]["losses"]}
            print(mixer, rows[mixer], flush=True)
    text = markdown(rows, args.steps, "python -m benchmarks.bf16_training " + " ".join(argv))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    args.output.with_suffix(".json").write_text(json.dumps({"summary": rows, "loss_curves": curves}, indent=1))
    print(text)
    return rows


if __name__ == "__main__":
    main()
