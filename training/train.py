"""Main job: train a ViX with `transformers.Trainer`, select it on validation, test it once, write a Hub-ready folder.

    python -m training.train                                   # digits (offline), a small hybrid ViN, ~2 CPU minutes
    python -m training.train training/recipes/cpu/cifar10_hybrid_vin_rope.yaml   # a recipe (YAML or JSON)
    python -m training.train training/recipes/modern_cifar10.yaml --num_train_epochs 10   # recipe + overrides
    python -m training.train --dataset_name uoft-cs/cifar10 --attention_type performer --precision bf16
    python -m training.train --model_name_or_path outputs/vix-nystrom-digits/final --dataset_name path/to/images \
        --ignore_mismatched_sizes true --output_dir outputs/vix-images   # fine-tune on a new label set
    torchrun --nproc_per_node 2 -m training.train ...          # DDP (gloo on CPU, nccl on GPU)
    accelerate launch --multi_gpu --num_processes 2 -m training.train ... --use_cpu true   # the same via accelerate
    vix-train cpu/cifar10_ccn.yaml     # installed (pip install vix): the console script; shipped recipes by name

Arguments come in three layers: the job's defaults (`TRAINING_DEFAULTS` for the `TrainingArguments` that
differ from transformers' own, `model_flags.QUICK_START` for the model), then a recipe file, then
command-line flags. Every `JobArguments`, model config field (`model_flags.ModelArguments`, one per field of
each `--model_type`'s config class), `DataArguments` (training/data.py) and `TrainingArguments` field is a flag.
Settings that cannot work (an invalid model combination, labels out of range, a folder the run must not
write to) stop the job before training with a one-line error and exit status 2.

`--precision auto` (the default) trains in bf16 only where the device computes it natively (training/precision.py);
metrics.json records what ran and why, and recipe.yaml keeps `auto`, so a re-run on other hardware chooses again.

The final folder (`<output_dir>/final`) holds model.safetensors, config.json (with auto_map), the modeling
files, preprocessor_config.json, training_args.bin, metrics.json, recipe.yaml (every setting of the run,
resolved, re-runnable on its own) and a model card (README.md) with the measured results.
"""

import contextlib
import json
import logging
import math
import os
import platform
import resource
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import NamedTuple

import evaluate
import torch
from datasets import Image
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModelForImageClassification,
    HfArgumentParser,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.integrations import is_tensorboard_available

from modeling_vix import VixImageProcessor

from .augment import Augmenter
from .checks import check_training_settings
from .data import DataArguments, dataset_display_name, load_splits
from .errors import UsageError
from .lazy_images import ReadableImagesCollator, SkippedReads, make_transform
from .lora import LoraArguments, add_lora_adapter, check_lora_arguments, count_parameters
from .model_flags import (
    BACKBONE_CONFIGS,
    ModelArguments,
    build_config,
    config_class_for,
    given_settings,
    one_line,
    override_values,
    resolve_model_settings,
)
from .optimizers import MuonAdamWFactory
from .precision import PRECISIONS, Precision, resolve_precision
from .preload import PreloadedImages
from .recipe_files import RECIPE_SUFFIXES, find_recipe, resolve_recipe, write_recipe
from .runs import RunTotals, check_launch, default_output_dir, prepare_output_dir, run_name
from .streaming import streaming_max_steps, streaming_splits, with_transforms
from .time_budget import TimeBudget, TimeBudgetTrainer, check_time_budget


logger = logging.getLogger(__name__)

METRIC_MODULE = Path(__file__).resolve().parent / "metrics" / "top_k_accuracy"


@dataclass
class JobArguments:
    """What the run starts from (a new `--model_type`, or a checkpoint) and whether it may replace an earlier run."""

    model_type: str = field(
        default="vix", metadata={"help": "Backbone of a new model.", "choices": tuple(BACKBONE_CONFIGS)}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local folder or Hub id to fine-tune; its architecture wins over the model flags "
                          "(use --config_overrides to change e.g. dropout). Never inside --output_dir."},
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise the classifier when the checkpoint has another label set."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow a checkpoint's own modeling code."})
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Any other config fields, 'key=value,key=value' (PreTrainedConfig.update_from_string), "
                          "e.g. 'nystrom_padding=zeros_front,layer_norm_eps=1e-12'."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Delete the checkpoints and final/ of an earlier run in --output_dir and start afresh "
                          "(without it, such a folder is an error unless resuming)."},
    )
    precision: str = field(
        default="auto",
        metadata={"help": "Mixed precision: auto = bf16 where the device computes it natively (GPUs from Ampere on, "
                          "CPUs with avx512_bf16 or amx_bf16), else fp16 on a GPU and fp32 on a CPU. --bf16/--fp16 "
                          "given with auto decide; with an explicit choice they must agree.",
                  "choices": PRECISIONS},
    )
    channels_last: bool = field(default=False, metadata={
        "help": "Keep conv weights and activations channels-last (NHWC): oneDNN's convolutions and pooling run "
                "faster so on CPUs (benchmarks/results/training_step.md)."})
    test_flip_average: bool = field(default=False, metadata={
        "help": "Also score the test split with each image and its mirror image averaged (softmax mean): "
                "metrics.json's test_flip_accuracy, beside the single-view test_accuracy. Only for data whose "
                "labels survive a horizontal flip (photos, not digits or text)."})
    muon: bool = field(default=False, metadata={
        "help": "Train the weight matrices of the transformer layers with Muon (torch.optim.Muon: momentum updates "
                "orthogonalised by Newton-Schulz, scaled to AdamW's update size) and every other parameter with "
                "AdamW, at the one --learning_rate and schedule (training/optimizers.py). Replaces --optim, which "
                "must then stay adamw_torch."})
    max_train_minutes: float | None = field(default=None, metadata={
        "help": "Train for this many minutes of train_runtime (evaluations and checkpoints included, across "
                "resumes) instead of a fixed number of steps: the warm-up (--warmup_steps, a fraction) and the "
                "decay (--lr_scheduler_type cosine or linear) run on the fraction of the budget spent and reach zero "
                "as it ends; training stops when the budget is spent, after evaluating and checkpointing the last "
                "partial epoch. --num_train_epochs stays an upper bound. Not reproducible step for step: the steps "
                "that fit follow the machine's speed (training/time_budget.py)."})
    sdpa_backend: str = field(default="default", metadata={
        "help": "default: torch picks the fused attention kernel; math: attention as matmul + softmax, much faster "
                "to train on CPUs for short sequences (the fused CPU kernel's backward dominated a 64-token step).",
        "choices": ("default", "math")})


# TrainingArguments defaults of this job that differ from transformers' own (a recipe or a flag overrides them).
TRAINING_DEFAULTS = {
    "output_dir": None,  # not given: outputs/<model>-<data>, numbered if taken (runs.default_output_dir)
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
    # Every ViX parameter gets a gradient in every step (tested), so DDP need not search for unused ones (the
    # Trainer's default for models without gradient checkpointing, which makes DDP warn on every rank).
    "ddp_find_unused_parameters": False,
}
NOT_RECORDED = {"hub_token", "report_to"}  # a secret; a per-machine choice


class Settings(NamedTuple):
    job: JobArguments
    model: ModelArguments  # as given: None = not set
    data: DataArguments
    training: TrainingArguments
    model_settings: dict  # the resolved config kwargs of a new model ({} when fine-tuning a checkpoint)
    changed_training: frozenset  # TrainingArguments set by the recipe or a flag
    precision: Precision  # what --precision resolved to, why, and the metrics.json record
    lora: LoraArguments  # lora_r 0: no adapter


SHORT_USAGE = "usage: python -m training.train [RECIPE.yaml] [--flag value ...]   (--help lists every flag)"


class JobParser(HfArgumentParser):
    """argparse's errors as one `error:` line (exit 2) instead of the ~200-line usage of every flag: a bad value
    (`--attention_type nystorm`: invalid choice) alone, a syntax error (unknown flag, missing value) after a
    one-line usage."""

    def error(self, message):
        syntax = not message.startswith("argument ") or "expected" in message
        self.exit(2, (SHORT_USAGE + "\n" if syntax else "") + f"error: {message}\n")


def make_parser() -> HfArgumentParser:
    parser = JobParser((JobArguments, ModelArguments, DataArguments, LoraArguments, TrainingArguments),
                       prog="python -m training.train")
    parser.set_defaults(**TRAINING_DEFAULTS)
    return parser


def derived_output_dir(namespace: dict, model_settings: dict) -> str:
    """The run folder when --output_dir is not given: named after the model and the data, numbered if taken."""
    model = namespace["model_name_or_path"] or (
        f"{namespace['model_type']}-{model_settings.get('attention_type') or 'softmax'}")
    data = namespace["data_dir"] if namespace["dataset_name"] == "imagefolder" and namespace["data_dir"] else \
        namespace["dataset_name"]
    resume = namespace["resume_from_checkpoint"]
    reuse_last = namespace["overwrite_output_dir"] or (resume is not None and str(resume).lower() != "false")
    return str(default_output_dir(run_name(model, data), reuse_last))


def read_recipe(path) -> dict:
    """A recipe file (YAML or JSON, with its `base` merged in) as a dict of argument -> value; unknown keys raise.

    A relative path that names no file is looked up in the shipped recipes (`cpu/cifar10_ccn.yaml`).
    Values are checked and converted by HfArgumentParser when `parse_args` layers them under the flags.
    """
    recipe = resolve_recipe(find_recipe(path))
    known = {f.name for dataclass_type in make_parser().dataclass_types for f in fields(dataclass_type) if f.init}
    unknown = sorted(set(recipe) - known)
    if unknown:
        raise UsageError(f"Recipe {path} has unknown arguments: {', '.join(unknown)}.")
    return recipe


def build_arguments(dataclass_type, namespace: dict):
    values = {f.name: namespace[f.name] for f in fields(dataclass_type) if f.init}
    try:
        return dataclass_type(**values)
    except ValueError as error:  # TrainingArguments refuses impossible combinations, e.g. bf16 without support
        raise UsageError(one_line(error)) from error


def parse_args(argv=None) -> Settings:
    """The run's settings from defaults < recipe file (first argument) < flags."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = make_parser()
    # None = not given, so that --precision decides (a default False would read as an explicit "not bf16")
    parser.set_defaults(bf16=None, fp16=None)
    baseline = vars(parser.parse_args([]))  # the job's defaults alone (argparse only: no TrainingArguments built)
    if argv and not argv[0].startswith("-") and argv[0].endswith(RECIPE_SUFFIXES):
        parser.set_defaults(**read_recipe(argv[0]))  # argparse converts string defaults with each flag's type
        argv = argv[1:]
    namespace = vars(parser.parse_args(argv))
    training_names = {f.name for f in fields(TrainingArguments)}
    # before bf16/fp16 are resolved: only a given --bf16/--fp16 is the user's choice, recorded in recipe.yaml
    changed = frozenset(name for name in training_names if namespace[name] != baseline[name])
    precision = resolve_precision(namespace["precision"], training_device(namespace["use_cpu"]),
                                  bf16=namespace["bf16"], fp16=namespace["fp16"], use_cpu=namespace["use_cpu"])
    namespace["bf16"], namespace["fp16"] = precision.name == "bf16", precision.name == "fp16"
    if precision.use_cpu:  # bf16 on a CPU-only machine: TrainingArguments refuse it without use_cpu (not recorded)
        namespace["use_cpu"] = True
    job, model, data = (build_arguments(dtype, namespace) for dtype in parser.dataclass_types[:3])
    if job.model_name_or_path:
        if ignored := sorted(given_settings(model)):
            logger.warning("Fine-tuning %s: its architecture is used, so these model settings are ignored: %s "
                           "(--config_overrides changes the others).", job.model_name_or_path, ", ".join(ignored))
        model_settings = {}
    else:
        model_settings = resolve_model_settings(job.model_type, model)
    if namespace["output_dir"] is None:
        namespace["output_dir"] = derived_output_dir(namespace, model_settings)
    lora = build_arguments(LoraArguments, namespace)
    try:
        check_lora_arguments(lora)
    except ValueError as error:
        raise UsageError(str(error)) from error
    if lora.lora_r and not job.model_name_or_path:
        raise UsageError("--lora_r adapts a trained model: give its folder or Hub id as --model_name_or_path (a new "
                         "model trains in full).")
    if lora.lora_r:  # peft's wrapper hides the model's `labels` argument from Trainer's signature check
        namespace["label_names"] = ["labels"]
    training = build_arguments(TrainingArguments, namespace)
    check_training_settings(training, data)
    if job.muon and training.optim not in ("adamw_torch", "adamw_torch_fused"):
        optim = getattr(training.optim, "value", training.optim)  # an OptimizerNames member
        raise UsageError(f"--muon trains with Muon + AdamW, which replaces --optim {optim}: leave --optim "
                         "at adamw_torch, or drop --muon.")
    if job.max_train_minutes is not None:
        try:
            check_time_budget(job.max_train_minutes, training.warmup_steps, schedule_name(training))
        except ValueError as error:
            raise UsageError(str(error)) from error
    return Settings(job, model, data, training, model_settings, changed, precision, lora)


def differing(args) -> dict:
    """The fields of a dataclass instance that differ from its class defaults."""
    defaults = type(args)()
    return {key: value for key, value in asdict(args).items() if value != getattr(defaults, key)}


def recipe_dict(settings: Settings) -> dict:
    """Every setting of a run, resolved (no `base`, model defaults filled in), re-parseable by `parse_args`.

    TrainingArguments are those the job, a recipe or a flag chose, read from the arguments themselves: no
    second TrainingArguments is built (under torchrun, one built late warns that DDP is not in use).
    """
    # precision always, `auto` included: bf16/fp16 are recorded only when given, so the reader sees what chose them
    out = {**differing(settings.job), "precision": settings.job.precision, **settings.model_settings,
           **differing(settings.data), **differing(settings.lora)}
    training = settings.training.to_dict()
    chosen = (set(TRAINING_DEFAULTS) | settings.changed_training) - NOT_RECORDED
    out.update({f.name: training[f.name] for f in fields(TrainingArguments) if f.name in chosen and f.name in training})
    return out


def load_metric():
    """The repository's own `evaluate` module (loads offline; `evaluate.load("accuracy")` needs the Hub)."""
    return evaluate.load(str(METRIC_MODULE), keep_in_memory=True)  # in memory: no cache files shared by DDP ranks


TOP_K = 5


def class_logits(predictions):
    """The logits of a Trainer prediction (the first output when the model returned several)."""
    return predictions[0] if isinstance(predictions, tuple) else predictions


def make_compute_metrics(metric, k: int = TOP_K):
    """Trainer `compute_metrics`: top-1 accuracy, and top-k through the evaluate module where it means something:
    with k classes or fewer every label is among the k highest logits, so top-k is left out."""

    def compute_metrics(eval_prediction):
        logits, labels = class_logits(eval_prediction.predictions), eval_prediction.label_ids
        result = metric.compute(predictions=logits, references=labels, k=k)
        return result if logits.shape[-1] > k else {"accuracy": result["accuracy"]}

    return compute_metrics


class EvaluatedCount:
    """How many samples the last evaluation scored (a stream's split size is known once it has been read), and,
    with `keep_logits`, its logits and labels (the single view that --test_flip_average averages with)."""

    def __init__(self, keep_logits: bool = False):
        self.count = None
        self.keep_logits = keep_logits
        self.logits = self.labels = None

    def wrap(self, compute_metrics):
        def counted(eval_prediction):
            self.count = len(eval_prediction.label_ids)
            if self.keep_logits:
                self.logits = class_logits(eval_prediction.predictions)
                self.labels = eval_prediction.label_ids
            return compute_metrics(eval_prediction)

        return counted


class MirroredImages:
    """A collator whose batches hold the mirror images (width flipped) of what `collator` gives."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, features):
        batch = self.collator(features)
        batch["pixel_values"] = batch["pixel_values"].flip(-1)  # (B, C, H, W): W reversed
        return batch


def flip_averaged_accuracy(trainer: Trainer, test_split, logits, labels) -> float:
    """Top-1 accuracy of the softmax mean over each test image (`logits`, from the single-view evaluation) and its
    mirror image, predicted here. The same rows in the same order: the test split is read unshuffled."""
    collator = trainer.data_collator
    trainer.data_collator = MirroredImages(collator)
    try:
        mirrored = trainer.predict(test_split, metric_key_prefix="test_flip")
    finally:
        trainer.data_collator = collator
    mirrored_logits = class_logits(mirrored.predictions)
    if mirrored_logits.shape != logits.shape or not (mirrored.label_ids == labels).all():
        raise RuntimeError("the mirrored test pass did not see the rows of the single-view one")
    probabilities = torch.tensor(logits).float().softmax(-1) + torch.tensor(mirrored_logits).float().softmax(-1)
    return (probabilities.argmax(-1) == torch.tensor(labels)).float().mean().item()


class EpochCallback(TrainerCallback):
    """Tells the augmenter which epoch is running (also the partial epoch after a resume)."""

    def __init__(self, augmenter: Augmenter):
        self.augmenter = augmenter

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.augmenter.epoch = math.floor((state.epoch or 0) + 1e-6)


def attention_backend(name: str):
    """The `scaled_dot_product_attention` backend for a block of the run: torch's choice, or the math path."""
    if name == "math":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)
    return contextlib.nullcontext()


def image_size_hw(config) -> tuple[int, int]:
    size = config.image_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def load_pretrained(job: JobArguments, labels, label_kwargs):
    """The checkpoint's model, with --config_overrides applied to its config before the model is built: a changed
    mixer (e.g. `attention_type=nystrom` on a softmax checkpoint) is built as such, takes every tensor the two
    share, and initialises only its own new parameters (the warm start of a linear-attention fine-tune)."""
    config = AutoConfig.from_pretrained(
        job.model_name_or_path, num_labels=len(labels), **label_kwargs, trust_remote_code=job.trust_remote_code
    )
    if job.config_overrides:
        try:
            config.update_from_string(job.config_overrides)
            config.validate_architecture()
        except (ValueError, TypeError, StrictDataclassError) as error:
            raise UsageError(f"--config_overrides on {job.model_name_or_path}: {one_line(error)}") from error
    model = AutoModelForImageClassification.from_pretrained(
        job.model_name_or_path, config=config, ignore_mismatched_sizes=job.ignore_mismatched_sizes,
        trust_remote_code=job.trust_remote_code,
    )
    try:
        processor = AutoImageProcessor.from_pretrained(job.model_name_or_path, trust_remote_code=job.trust_remote_code)
    except OSError:
        height, width = image_size_hw(model.config)
        processor = VixImageProcessor(size={"height": height, "width": width})
    return model, processor


def build_model(settings: Settings, labels):
    """(model, image processor): a checkpoint to fine-tune, or a new model of --model_type from the resolved
    settings."""
    label_kwargs = {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}
    if settings.job.model_name_or_path:
        return load_pretrained(settings.job, labels, label_kwargs)
    config_class = config_class_for(settings.job.model_type)
    overrides = override_values(config_class, settings.job.config_overrides)
    config = build_config(config_class, {**settings.model_settings, **overrides}, num_labels=len(labels),
                          **label_kwargs)
    height, width = image_size_hw(config)
    processor = VixImageProcessor(size={"height": height, "width": width})
    return AutoModelForImageClassification.from_config(config), processor


def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what `platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def training_device(use_cpu: bool) -> str:
    """Where the Trainer will train, known before TrainingArguments are built ("cuda" or "cpu"): precision
    must be resolved first, as TrainingArguments check bf16 against the device when built."""
    return "cuda" if torch.cuda.is_available() and not use_cpu else "cpu"


def validation_curve(log_history: list[dict], train_runtime: float, global_steps: int) -> list[dict]:
    """Validation accuracy after each evaluation: [{"epoch", "step", "minutes", "accuracy"}].

    Trainer logs no clock time, so `minutes` shares the run's train_runtime out by step: every step has the same
    batch shape and every evaluation the same size, so step k of N ends about k/N into the run.
    """
    seconds_per_step = train_runtime / max(global_steps, 1)
    return [{"epoch": entry["epoch"], "step": entry["step"], "minutes": round(entry["step"] * seconds_per_step / 60, 2),
             "accuracy": entry["eval_accuracy"]} for entry in log_history if "eval_accuracy" in entry]


def hardware_description(device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (1 GPU)"
    return f"{cpu_model_name()}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"


def peak_memory_mb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv=None, callbacks=None):
    """The job; a UsageError (bad settings or data, found before training) becomes one line on stderr and exit 2."""
    try:
        return run(argv, callbacks)
    except UsageError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def cli() -> None:
    """The `vix-train` console script. Not `main`: it returns the metrics, which the script's `sys.exit(main())`
    would print to stderr as an error, with exit status 1."""
    main()


def schedule_name(training: TrainingArguments) -> str:
    return getattr(training.lr_scheduler_type, "value", training.lr_scheduler_type)  # a SchedulerType member


def time_budget(job: JobArguments, training_args: TrainingArguments, totals: RunTotals) -> TimeBudget | None:
    """--max_train_minutes' callback, on the clock of the run's totals (None without a budget)."""
    if job.max_train_minutes is None:
        return None
    return TimeBudget(job.max_train_minutes, totals, training_args.warmup_steps, schedule_name(training_args))


def muon_optimizer(training_args: TrainingArguments) -> tuple:
    """Trainer's `optimizer_cls_and_kwargs` for --muon: the factory and AdamW's settings of this run."""
    return MuonAdamWFactory, {"lr": training_args.learning_rate, "weight_decay": training_args.weight_decay,
                              "betas": (training_args.adam_beta1, training_args.adam_beta2),
                              "eps": training_args.adam_epsilon}


def run(argv=None, callbacks=None):
    check_launch()
    settings = parse_args(argv)
    job, data_args, training_args = settings.job, settings.data, settings.training
    logging.basicConfig(level=logging.INFO if training_args.should_log else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    logger.info("precision %s (%s)", settings.precision.name, settings.precision.reason)
    logger.info("output folder %s", training_args.output_dir)
    with training_args.main_process_first(desc="output folder check"):
        resume = prepare_output_dir(training_args.output_dir, job.model_name_or_path,
                                    training_args.resume_from_checkpoint, job.overwrite_output_dir,
                                    is_main_process=training_args.process_index == 0)
    set_seed(training_args.seed)

    with training_args.main_process_first(desc="dataset loading"):
        if data_args.streaming:
            splits, data_info = streaming_splits(data_args, training_args.seed)
            training_args.max_steps = streaming_max_steps(training_args, data_info["split_sizes"].get("train"))
        else:
            splits, data_info = load_splits(data_args, training_args.seed)
        metric = load_metric()
    labels = data_info["labels"]
    model, processor = build_model(settings, labels)
    try:
        model = add_lora_adapter(model, settings.lora)
    except ValueError as error:  # e.g. target modules the model does not have
        raise UsageError(str(error)) from error
    trainable_parameters, _ = count_parameters(model)
    if job.channels_last:  # the weights; conv outputs follow them, so the inputs need not be converted
        model = model.to(memory_format=torch.channels_last)

    augmenter = Augmenter(
        data_args.augmentation, seed=training_args.seed, crop_padding=data_args.crop_padding,
        randaugment_num_ops=data_args.randaugment_num_ops, randaugment_magnitude=data_args.randaugment_magnitude,
        random_erasing=data_args.random_erasing,
    )
    image_column, label_column = data_info["image_column"], data_info["label_column"]
    skipped = SkippedReads(splits) if data_args.skip_unreadable_images else None  # images found unreadable as read
    if data_args.streaming:
        splits = with_transforms(splits, processor, image_column, label_column, augmenter, skipped,
                                 training_args.per_device_train_batch_size)
    elif data_args.preload_images:  # decoded once, here, not in every epoch (training/preload.py)
        splits = {name: PreloadedImages(split, processor, image_column, label_column,
                                        augmenter if name == "train" else None) for name, split in splits.items()}
    else:  # decoded as read, undecoded in the dataset so that an unreadable file is named (training/lazy_images.py)
        for name in list(splits):
            splits[name] = splits[name].cast_column(image_column, Image(decode=False))
            splits[name].set_transform(make_transform(processor, image_column, label_column,
                                                      augmenter if name == "train" else None, name, skipped))

    totals = RunTotals()
    evaluated = EvaluatedCount(keep_logits=job.test_flip_average)
    budget = time_budget(job, training_args, totals)
    trainer_class, budget_kwargs = (TimeBudgetTrainer, {"time_budget": budget}) if budget else (Trainer, {})
    trainer = trainer_class(
        model=model, args=training_args, train_dataset=splits["train"], eval_dataset=splits["validation"],
        data_collator=ReadableImagesCollator(), processing_class=processor,
        compute_metrics=evaluated.wrap(make_compute_metrics(metric)),
        callbacks=[EpochCallback(augmenter), totals, *(callbacks or [])],
        optimizer_cls_and_kwargs=muon_optimizer(training_args) if job.muon else None, **budget_kwargs,
    )
    with attention_backend(job.sdpa_backend):
        train_result = trainer.train(resume_from_checkpoint=resume)
    whole_run = totals.whole_run(train_result.training_loss)
    final_dir = Path(training_args.output_dir) / "final"
    if settings.lora.lora_r:
        # The adapter alone (peft's format) in final/adapter, then the merged model: a plain ViX folder in final/.
        trainer.save_model(str(final_dir / "adapter"))
        trainer.model = trainer.model_wrapped = trainer.model.merge_and_unload()
    trainer.save_model(str(final_dir))  # on every rank: Trainer writes from the main process only
    with attention_backend(job.sdpa_backend):
        metrics = trainer.evaluate(splits["test"], metric_key_prefix="test")  # once, with the best validation model
        if job.test_flip_average:  # beside test_accuracy, never instead of it
            metrics["test_flip_accuracy"] = flip_averaged_accuracy(trainer, splits["test"], evaluated.logits,
                                                                   evaluated.labels)
    if data_args.streaming:  # a stream's sizes: the test split as evaluated (the metadata may not have it)
        data_info["split_sizes"]["test"] = evaluated.count

    metrics.update({
        "best_validation_accuracy": trainer.state.best_metric,
        # relative to output_dir: metrics.json travels with the published folder, local paths should not
        "best_checkpoint": Path(best).name if (best := trainer.state.best_model_checkpoint) else None,
        **whole_run,  # train_runtime and train_loss of the whole run, across resumes
        "epochs": trainer.state.epoch,
        "global_steps": trainer.state.global_step,
        "validation_curve": validation_curve(trainer.state.log_history, whole_run["train_runtime"],
                                             trainer.state.global_step),
        "num_parameters": trainer.model.num_parameters(),
        "trainable_parameters": trainable_parameters,
        "peak_memory_mb": round(peak_memory_mb(training_args.device), 1),
        "hardware": hardware_description(training_args.device),
        "world_size": training_args.world_size,
        **settings.precision.record,  # precision (what ran), precision_requested, precision_reason, cpu_capability
        "channels_last": job.channels_last,
        "sdpa_backend": job.sdpa_backend,
        "dataset": dataset_display_name(data_args),
        "split_sizes": data_info["split_sizes"],
        "skipped_images": data_info["skipped_images"],
        **({"skipped_image_reads": skipped.totals()} if skipped is not None and skipped.totals() else {}),
        "streaming": data_args.streaming,
    })
    if trainer.is_world_process_zero():
        if __package__.startswith("vix."):  # installed: vix.training, whose sibling is vix.model_cards
            from ..model_cards import inherited_base_model, write_model_card
        else:  # the checkout's top-level packages (a try/except ImportError would hide e.g. a missing jinja2)
            from model_cards import inherited_base_model, write_model_card

        metrics["base_model"] = inherited_base_model(settings.job.model_name_or_path)
        recipe = recipe_dict(settings)
        write_recipe(final_dir / "recipe.yaml", recipe)
        (final_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        card_path = write_model_card(final_dir, metrics, recipe)
        top_k_key = f"test_top{TOP_K}_accuracy"
        top_k = f" (top-{TOP_K} {metrics[top_k_key]:.4f})" if top_k_key in metrics else ""
        print(
            f"test accuracy {metrics['test_accuracy']:.4f}{top_k} on "
            f"{metrics['split_sizes']['test']} {metrics['dataset']} test images, "
            f"{metrics['num_parameters']:,} parameters, {metrics['train_runtime']:.0f} s training\n"
            f"model folder: {final_dir.resolve()}\nmodel card: {card_path.resolve()}"
        )
    return metrics


if __name__ == "__main__":
    main()
