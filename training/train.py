"""Main job: train a small ViX with `transformers.Trainer`, evaluate it, and write a Hub-ready folder.

With no arguments it trains on scikit-learn's bundled 8x8 digits (real data that installs offline) for a
few CPU minutes. Every `VixConfig` switch and every `TrainingArguments` flag is a command-line flag:

    python -m training.train --attention_type nystrom --embedding_type conv --position_embedding_type rope_2d
"""

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import DefaultDataCollator, HfArgumentParser, Trainer, TrainingArguments, set_seed

from modeling_vix import VixConfig, VixForImageClassification, VixImageProcessor


@dataclass
class ModelArguments:
    attention_type: str = field(default="nystrom", metadata={"help": "softmax|performer|linformer|nystrom|fnet|mixer"})
    embedding_type: str = field(default="conv", metadata={"help": "linear|conv"})
    position_embedding_type: str = field(default="rope_2d", metadata={"help": "learned|rope_1d|rope_2d|none"})
    pooling: str = field(default="cls", metadata={"help": "cls|mean"})
    image_size: int = 32
    patch_size: int = 4
    hidden_size: int = 64
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 128
    nystrom_num_landmarks: int = 16
    linformer_k: int = 32


def load_digits_splits(seed: int):
    """scikit-learn's 1797 8x8 digits as grayscale PIL images, split 70/10/20 into train/validation/test."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from sklearn.datasets import load_digits
    from PIL import Image as PILImage

    digits = load_digits()
    images = [PILImage.fromarray((image * 255 / 16).astype(np.uint8), mode="L") for image in digits.images]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    full = Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features)
    train_rest = full.train_test_split(test_size=0.3, seed=seed, stratify_by_column="label")
    val_test = train_rest["test"].train_test_split(test_size=2 / 3, seed=seed, stratify_by_column="label")
    return DatasetDict(train=train_rest["train"], validation=val_test["train"], test=val_test["test"])


def compute_metrics(eval_prediction):
    """Top-1 accuracy in plain numpy (`evaluate.load` would need the Hub)."""
    logits, labels = eval_prediction
    return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}


def main(argv=None):
    parser = HfArgumentParser((ModelArguments, TrainingArguments))
    defaults = [
        "--output_dir", "outputs/vix-digits", "--num_train_epochs", "8", "--learning_rate", "2e-3",
        "--per_device_train_batch_size", "64", "--per_device_eval_batch_size", "256", "--weight_decay", "0.05",
        "--warmup_steps", "0.1", "--lr_scheduler_type", "cosine", "--eval_strategy", "epoch",
        "--save_strategy", "epoch", "--save_total_limit", "2", "--load_best_model_at_end", "true",
        "--metric_for_best_model", "accuracy", "--logging_steps", "20", "--report_to", "none",
        "--remove_unused_columns", "false", "--dataloader_pin_memory", "false", "--seed", "0",
    ]
    model_args, training_args = parser.parse_args_into_dataclasses(args=defaults + list(sys.argv[1:] if argv is None else argv))
    set_seed(training_args.seed)

    splits = load_digits_splits(training_args.seed)
    labels = splits["train"].features["label"].names
    processor = VixImageProcessor(size={"height": model_args.image_size, "width": model_args.image_size})

    def to_model_inputs(batch):
        inputs = processor(batch["image"], return_tensors="pt")
        inputs["labels"] = batch["label"]
        return inputs

    for split in splits.values():
        split.set_transform(to_model_inputs)

    config = VixConfig(
        **vars(model_args), num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={name: i for i, name in enumerate(labels)},
    )
    model = VixForImageClassification(config)
    trainer = Trainer(
        model=model, args=training_args, train_dataset=splits["train"], eval_dataset=splits["validation"],
        data_collator=DefaultDataCollator(), processing_class=processor, compute_metrics=compute_metrics,
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = trainer.evaluate(splits["test"], metric_key_prefix="test")
    if trainer.is_world_process_zero():
        final_dir = Path(training_args.output_dir) / "final"
        trainer.save_model(str(final_dir))
        metrics["num_parameters"] = model.num_parameters()
        (final_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        print(f"test accuracy {metrics['test_accuracy']:.4f}; model folder: {final_dir.resolve()}")
    return metrics


if __name__ == "__main__":
    main()
