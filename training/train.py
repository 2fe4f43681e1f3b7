"""Main job: train a ViX with `transformers.Trainer`, select it on validation, test it once, write a Hub-ready folder.

    python -m training.train                                   # digits (offline), a small hybrid ViN, ~2 CPU minutes
    python -m training.train training/recipes/cpu_cifar10_hybrid_vin_rope.yaml   # a recipe (YAML or JSON)
    python -m training.train training/recipes/modern_cifar10.yaml --num_train_epochs 10   # recipe + overrides
    python -m training.train --dataset_name uoft-cs/cifar10 --attention_type performer --bf16 true
    python -m training.train --model_name_or_path outputs/vix-digits/final --dataset_name path/to/images \
        --ignore_mismatched_sizes true                         # fine-tune on a new label set
    torchrun --nproc_per_node 2 -m training.train ...          # DDP (gloo on CPU, nccl on GPU)

Arguments come in three layers: the defaults below (`TRAINING_DEFAULTS` for the `TrainingArguments` that
differ from transformers' own), then a recipe file, then command-line flags. Every `ModelArguments`,
`DataArguments` (see training/data.py) and `TrainingArguments` field is a flag.

The final folder (`<output_dir>/final`) holds model.safetensors, config.json (with auto_map), the modeling
files, preprocessor_config.json, metrics.json, recipe.yaml (every setting of the run, re-runnable) and a
model card (README.md) with the measured results.
"""

import json
import logging
import math
import os
import platform
import resource
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import (
    AutoImageProcessor,
    AutoModelForImageClassification,
    DefaultDataCollator,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.integrations import is_tensorboard_available

from modeling_vix import VixConfig, VixForImageClassification, VixImageProcessor

from .augment import Augmenter
from .data import ROW_COLUMN, DataArguments, dataset_display_name, load_splits


logger = logging.getLogger(__name__)

RECIPE_SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class ModelArguments:
    """A new ViX (the `VixConfig` fields below), or `--model_name_or_path` to fine-tune a checkpoint."""

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local folder or Hub id to fine-tune; its architecture wins over the model flags below "
                          "(use --config_overrides to change e.g. dropout)."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise the classifier when the checkpoint has another label set."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow a checkpoint's own modeling code."})
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
    conv_stem_channels: list[int] = field(default_factory=lambda: [32, 64])
    conv_stem_activation: str = field(default="none", metadata={"help": "none|relu|gelu, between stem convs"})
    conv_stem_downsampling: str = field(default="last_conv", metadata={"help": "last_conv|max_pool (CCT-style)"})
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    qkv_bias: bool = False
    nystrom_num_landmarks: int = 16
    nystrom_residual_conv_kernel: int = 33
    linformer_k: int = 32
    performer_num_features: int | None = None
    mixer_token_expansion: float = 1.0
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Any other VixConfig fields, 'key=value,key=value' (PreTrainedConfig.update_from_string), "
                          "e.g. 'nystrom_padding=zeros_front,layer_norm_eps=1e-12'."},
    )

    def config_kwargs(self) -> dict:
        skip = {"model_name_or_path", "ignore_mismatched_sizes", "trust_remote_code", "config_overrides"}
        return {key: value for key, value in asdict(self).items() if key not in skip}


# TrainingArguments defaults of this job that differ from transformers' own (a recipe or a flag overrides them).
TRAINING_DEFAULTS = {
    "output_dir": "outputs/vix-digits",
    "num_train_epochs": 8,
    "learning_rate": 2e-3,
    "weight_decay": 0.05,
    "warmup_steps": 0.1,
    "lr_scheduler_type": "cosine",
    "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 2,
    "load_best_model_at_end": True,
    "metric_for_best_model": "accuracy",
    "logging_steps": 20,
    "report_to": "tensorboard" if is_tensorboard_available() else "none",
    "remove_unused_columns": False,  # required with set_transform
    "dataloader_pin_memory": False,
    "seed": 0,
    "optim": "adamw_torch",  # the fused default ran about 3x slower per step on 2 CPU cores with small models
}


def make_parser() -> HfArgumentParser:
    parser = HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    parser.set_defaults(**TRAINING_DEFAULTS)
    return parser


def read_recipe(path) -> dict:
    """A recipe file (YAML or JSON) as a dict of field -> value; unknown keys raise.

    Values are checked and converted by HfArgumentParser when `parse_args` layers them under the flags.
    """
    path = Path(path)
    recipe = json.loads(path.read_text()) if path.suffix == ".json" else yaml.safe_load(path.read_text()) or {}
    if not isinstance(recipe, dict):
        raise ValueError(f"Recipe {path} must be a mapping of argument names to values.")
    known = {f.name for dataclass_type in make_parser().dataclass_types for f in fields(dataclass_type) if f.init}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise ValueError(f"Recipe {path} has unknown arguments: {', '.join(unknown)}.")
    return recipe


def parse_args(argv=None):
    """(ModelArguments, DataArguments, TrainingArguments) from defaults < recipe file (first argument) < flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    if argv and not argv[0].startswith("-") and argv[0].endswith(RECIPE_SUFFIXES):
        parser.set_defaults(**read_recipe(argv[0]))  # argparse converts string defaults with each flag's type
        argv = argv[1:]
    return parser.parse_args_into_dataclasses(args=argv)


def recipe_dict(model_args, data_args, training_args) -> dict:
    """Every setting of a run that differs from the dataclass defaults, re-parseable by `parse_args`."""
    out = {}
    for args in (model_args, data_args):
        defaults = type(args)()
        out.update({k: v for k, v in asdict(args).items() if v != getattr(defaults, k)})
    reference = TrainingArguments(output_dir=training_args.output_dir).to_dict()
    reference.update({k: None for k in TRAINING_DEFAULTS})  # always record the job's own defaults
    current = training_args.to_dict()
    skip = {"hub_token", "report_to", "do_eval", "do_train", "greater_is_better"}  # secrets; derived or per-machine
    out.update({k: v for k, v in current.items() if k not in skip and k in reference and v != reference[k]})
    return out


def write_recipe(path, recipe: dict) -> None:
    Path(path).write_text(yaml.safe_dump(recipe, sort_keys=False))


def compute_metrics(eval_prediction):
    """Top-1 and top-5 accuracy in plain numpy (`evaluate.load` would need the Hub)."""
    logits, labels = eval_prediction.predictions, eval_prediction.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    k = min(5, logits.shape[-1])
    top_k = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    return {
        "accuracy": float((logits.argmax(-1) == labels).mean()),
        "top5_accuracy": float((top_k == labels[:, None]).any(-1).mean()),
    }


class EpochCallback(TrainerCallback):
    """Tells the augmenter which epoch is running (also the partial epoch after a resume)."""

    def __init__(self, augmenter: Augmenter):
        self.augmenter = augmenter

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.augmenter.epoch = math.floor((state.epoch or 0) + 1e-6)


def make_transform(processor, image_column, label_column, augmenter=None):
    """datasets `set_transform` function: images -> normalized `pixel_values` (+ seeded augmentation), labels."""
    mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(processor.image_std, dtype=torch.float32).view(-1, 1, 1)

    def transform(batch):
        if augmenter is not None and augmenter.active:
            pixels = processor(batch[image_column], do_normalize=False, return_tensors="pt")["pixel_values"]
            pixels = augmenter(pixels.float(), batch[ROW_COLUMN])
            if processor.do_normalize:
                pixels = (pixels - mean) / std
        else:
            pixels = processor(batch[image_column], return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": batch[label_column]}

    return transform


def build_model(model_args: ModelArguments, labels):
    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in enumerate(labels)}
    if model_args.model_name_or_path:
        model = AutoModelForImageClassification.from_pretrained(
            model_args.model_name_or_path, num_labels=len(labels), id2label=id2label, label2id=label2id,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes, trust_remote_code=model_args.trust_remote_code,
        )
        if model_args.config_overrides:
            model.config.update_from_string(model_args.config_overrides)
        try:
            processor = AutoImageProcessor.from_pretrained(
                model_args.model_name_or_path, trust_remote_code=model_args.trust_remote_code
            )
        except OSError:
            height, width = model.config.image_size_hw
            processor = VixImageProcessor(size={"height": height, "width": width})
        return model, processor
    config = VixConfig(**model_args.config_kwargs(), num_labels=len(labels), id2label=id2label, label2id=label2id)
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
        config.check_combinations()
    height, width = config.image_size_hw
    return VixForImageClassification(config), VixImageProcessor(size={"height": height, "width": width})


def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_description(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (1 GPU)"
    return f"{cpu_model_name()}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv=None, callbacks=None):
    model_args, data_args, training_args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    resume = training_args.resume_from_checkpoint
    if isinstance(resume, str) and resume.lower() in ("true", "last"):
        resume = True  # the last checkpoint in output_dir
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="dataset loading"):
        splits, data_info = load_splits(data_args, training_args.seed)
    labels = data_info["labels"]
    model, processor = build_model(model_args, labels)

    augmenter = Augmenter(
        data_args.augmentation, seed=training_args.seed, crop_padding=data_args.crop_padding,
        randaugment_num_ops=data_args.randaugment_num_ops, randaugment_magnitude=data_args.randaugment_magnitude,
        random_erasing=data_args.random_erasing,
    )
    image_column, label_column = data_info["image_column"], data_info["label_column"]
    splits["train"].set_transform(make_transform(processor, image_column, label_column, augmenter))
    for name in ("validation", "test"):
        splits[name].set_transform(make_transform(processor, image_column, label_column))

    trainer = Trainer(
        model=model, args=training_args, train_dataset=splits["train"], eval_dataset=splits["validation"],
        data_collator=DefaultDataCollator(), processing_class=processor, compute_metrics=compute_metrics,
        callbacks=[EpochCallback(augmenter), *(callbacks or [])],
    )
    start = time.time()
    train_result = trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.time() - start
    final_dir = Path(training_args.output_dir) / "final"
    trainer.save_model(str(final_dir))  # on every rank: Trainer writes from the main process only
    metrics = trainer.evaluate(splits["test"], metric_key_prefix="test")  # once, with the best validation model

    metrics.update({
        "best_validation_accuracy": trainer.state.best_metric,
        # relative to output_dir: metrics.json travels with the published folder, local paths should not
        "best_checkpoint": Path(best).name if (best := trainer.state.best_model_checkpoint) else None,
        "train_runtime": train_result.metrics.get("train_runtime", train_seconds),
        "train_loss": train_result.metrics.get("train_loss"),
        "epochs": trainer.state.epoch,
        "global_steps": trainer.state.global_step,
        "num_parameters": trainer.model.num_parameters(),
        "peak_memory_mb": round(peak_memory_mb(training_args.device), 1),
        "hardware": hardware_description(training_args.device),
        "world_size": training_args.world_size,
        "precision": "bf16" if training_args.bf16 else "fp16" if training_args.fp16 else "fp32",
        "dataset": dataset_display_name(data_args),
        "split_sizes": data_info["split_sizes"],
        "skipped_images": data_info["skipped_images"],
    })
    if trainer.is_world_process_zero():
        from model_cards import write_model_card

        recipe = recipe_dict(model_args, data_args, training_args)
        write_recipe(final_dir / "recipe.yaml", recipe)
        (final_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        card_path = write_model_card(final_dir, metrics, recipe)
        print(
            f"test accuracy {metrics['test_accuracy']:.4f} (top-5 {metrics['test_top5_accuracy']:.4f}) on "
            f"{metrics['split_sizes']['test']} {metrics['dataset']} test images, "
            f"{metrics['num_parameters']:,} parameters, {metrics['train_runtime']:.0f} s training\n"
            f"model folder: {final_dir.resolve()}\nmodel card: {card_path.resolve()}"
        )
    return metrics


if __name__ == "__main__":
    main()
