"""The model flags of the training job, derived from the config classes instead of re-declared.

`modeling_vix.BACKBONE_CONFIGS` maps each model_type ("vix", later "vix_cct", "vix_pit", ...) to its config
class. Every dataclass field of those classes (less `PreTrainedConfig`'s own and `num_channels`, which the
data decides) is a flag, `--attention_type`, `--hidden_size`, ..., with default None, meaning "not set".
A new model's settings then come, per field, from:

1. the flag, else the recipe (both "given");
2. else the job's quick start (`QUICK_START`, a small Hybrid ViN-RoPE (2D) for digits; model_type "vix" only);
3. else the config class's own default.

Defaults must not break a setting that was given: for the fields in `FALLBACKS` that were not given, the
first value (the default, then each alternative in order) that the config class accepts together with
everything else is taken. So `--attention_type fnet` alone gets learned positions (FNet has no queries or
keys to rotate) instead of the quick start's rope_2d. The config class is the judge: it validates its own
combinations and raises ValueError, which the job reports as a one-line error.
"""

import dataclasses
import itertools
import types
import typing
from argparse import ArgumentTypeError

from huggingface_hub.errors import StrictDataclassError
from transformers import PreTrainedConfig
from transformers.hf_argparser import string_to_bool

import modeling_vix

from .errors import UsageError


BACKBONE_CONFIGS: dict[str, type] = getattr(modeling_vix, "BACKBONE_CONFIGS", None) or {"vix": modeling_vix.VixConfig}
NOT_FLAGS = {field.name for field in dataclasses.fields(PreTrainedConfig)} | {"num_channels"}  # RGB, always

# The quick start's model (README): a Hybrid ViN-RoPE (2D) at patch 4 on 32x32, 220k parameters, ~1 CPU minute
# on digits. Only what differs from VixConfig's defaults (the paper's CIFAR-10 model) is listed.
QUICK_START = {
    "vix": {
        "attention_type": "nystrom",
        "embedding_type": "conv",
        "position_embedding_type": "rope_2d",
        "patch_size": 4,
        "hidden_size": 64,
        "intermediate_size": 128,
        "nystrom_num_landmarks": 16,
        "linformer_k": 32,
    },
}

# Alternatives to a default that the given settings rule out, in order of preference.
FALLBACKS = {
    "position_embedding_type": ("rope_2d", "rope_1d", "learned"),  # the best positions the mixer and heads take
    "conv_stem_channels": ([32, 64], [32], [32, 64, 128]),  # max_pool downsampling fixes the stem's depth by patch
    "embedding_type": ("conv", "linear"),  # patch_embedding_norm exists only for the linear embedding
    "use_distillation_token": (False, True),  # use_distillation_head needs the token
    "attention_bias": (True, False),  # LeViT's attention bias, which Performer cannot add
}


def config_fields(config_class) -> dict[str, dataclasses.Field]:
    """The config class's own fields that are flags, by name (in declaration order)."""
    return {field.name: field for field in dataclasses.fields(config_class) if field.name not in NOT_FLAGS}


def _members(annotation) -> list:
    """The non-None types of a union annotation, or [annotation]."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [member for member in typing.get_args(annotation) if member is not type(None)]
    return [annotation]


def flag_type(*annotations):
    """A type HfArgumentParser can parse for a field that one or more backbone configs declare (PiT's int
    `patch_stride` and CvT's per-stage list share one flag): a list when any of them is a list (of float when any
    is float; of str for bools, which `from_flag` reads as true/false), else float for numbers."""
    members = [member for annotation in annotations for member in _members(annotation)]
    elements = [typing.get_args(member)[0] for member in members if typing.get_origin(member) in (list, tuple)]
    if elements:
        if bool in elements:
            return list[str]  # HfArgumentParser would read `false` as bool("false") == True
        return list[float] if float in elements or float in members else list[elements[0]]
    if float in members:
        return float
    return members[0]


def from_flag(value, annotation):
    """A parsed flag value as this backbone's config field takes it: `--image_size 32` parses to [32], the field
    wants 32; `--drop_path_rate 0.1` to [0.1] for CCT's float; `--cls_token false true` to [False, True]."""
    members = _members(annotation)
    if isinstance(value, list) and len(value) == 1 and (int in members or float in members):
        value = value[0]  # a field that takes a number (maybe also a list, as image_size) gets the number
    element = next((typing.get_args(m)[0] for m in members if typing.get_origin(m) in (list, tuple)), None)
    if isinstance(value, list) and element is bool:
        try:
            return [item if isinstance(item, bool) else string_to_bool(item) for item in value]
        except ArgumentTypeError as error:
            raise UsageError(f"{error} (per-stage booleans are true or false)") from None
    if isinstance(value, float) and int in members and float not in members and value.is_integer():
        return int(value)
    if isinstance(value, list) and element is int and all(isinstance(v, float) and v.is_integer() for v in value):
        return [int(v) for v in value]
    return value


def _help(name: str, classes: list[type]) -> str:
    owners = ", ".join(cls.__name__ for cls in classes)
    defaults = [f"{model_type}: {values[name]!r}" for model_type, values in QUICK_START.items() if name in values]
    quick_start = f"the quick start's ({'; '.join(defaults)}), else " if defaults else ""
    return f"{owners} field. Unset: the recipe's value, else {quick_start}the config's default."


def make_model_arguments():
    """The `ModelArguments` dataclass: one optional flag per field of every backbone config class."""
    owners: dict[str, list[type]] = {}
    annotations: dict[str, list] = {}
    for config_class in BACKBONE_CONFIGS.values():
        for name, field in config_fields(config_class).items():
            owners.setdefault(name, []).append(config_class)
            annotations.setdefault(name, []).append(field.type)
    specs = []
    for name, field_types in annotations.items():
        cli_type = flag_type(*field_types)
        metadata = {"help": _help(name, owners[name])}
        if cli_type is bool:
            metadata.update(nargs="?", const=True)  # `--qkv_bias` alone means true, as for TrainingArguments flags
        specs.append((name, cli_type | None, dataclasses.field(default=None, metadata=metadata)))
    model_arguments = dataclasses.make_dataclass("ModelArguments", specs)
    model_arguments.__doc__ = "Architecture of a new model: the config fields of every --model_type (None = unset)."
    return model_arguments


ModelArguments = make_model_arguments()


def config_class_for(model_type: str) -> type:
    if model_type not in BACKBONE_CONFIGS:
        raise UsageError(f"--model_type {model_type!r} is not known; choose one of {', '.join(BACKBONE_CONFIGS)}.")
    return BACKBONE_CONFIGS[model_type]


def given_settings(model_args) -> dict:
    """The model settings a flag or the recipe set (the rest are None)."""
    return {key: value for key, value in dataclasses.asdict(model_args).items() if value is not None}


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def build_config(config_class, settings: dict, **extra):
    """config_class(**settings, **extra), its validation errors as a one-line UsageError."""
    try:
        return config_class(**settings, **extra)
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise UsageError(f"Invalid model settings for {config_class.__name__}: {one_line(error)}") from error


def _accepts(config_class, settings: dict) -> bool:
    try:
        build_config(config_class, settings)
    except UsageError:
        return False
    return True


def with_fallbacks(config_class, settings: dict, given: set) -> dict:
    """`settings` with the first combination of FALLBACKS values that the config class accepts.

    Only fields that were not given are changed; when nothing fits, `settings` come back unchanged and building
    the config reports why the preferred combination is invalid.
    """
    fields = config_fields(config_class)
    adaptable = [name for name in FALLBACKS if name in fields and name not in given]
    preferred = {
        name: settings.get(name, fields[name].default if fields[name].default is not dataclasses.MISSING else None)
        for name in adaptable
    }
    options = [[preferred[name], *(value for value in FALLBACKS[name] if value != preferred[name])]
               for name in adaptable]
    for choice in itertools.product(*options):
        changed = {name: value for name, value in zip(adaptable, choice, strict=True)
                   if value != preferred[name] or name in settings}
        candidate = {**settings, **changed}
        if _accepts(config_class, candidate):
            return candidate
    return settings


def resolve_model_settings(model_type: str, model_args) -> dict:
    """The config kwargs of a new model of `model_type`: given settings over the job's defaults (module doc)."""
    config_class = config_class_for(model_type)
    fields = config_fields(config_class)
    given = given_settings(model_args)
    foreign = [name for name in given if name not in fields]
    if foreign:
        others = [model for model, cls in BACKBONE_CONFIGS.items() if foreign[0] in config_fields(cls)]
        raise UsageError(
            f"--{foreign[0]} is not a setting of {config_class.__name__} (--model_type {model_type}); "
            f"it belongs to --model_type {' / '.join(others)}."
        )
    given = {name: from_flag(value, fields[name].type) for name, value in given.items()}
    defaults = {name: value for name, value in QUICK_START.get(model_type, {}).items() if name not in given}
    settings = with_fallbacks(config_class, {**defaults, **given}, set(given))
    build_config(config_class, settings)  # an invalid combination stops the job now, before any data is loaded
    return {name: settings[name] for name in fields if name in settings}  # the config's order, for recipe.yaml


def override_values(config_class, overrides: str | None) -> dict:
    """`--config_overrides "key=value,..."` as typed values, via `PreTrainedConfig.update_from_string`."""
    if not overrides:
        return {}
    probe = config_class()
    try:
        probe.update_from_string(overrides)
    except ValueError as error:
        raise UsageError(f"--config_overrides: {one_line(error)}") from error
    keys = [item.split("=", 1)[0].strip() for item in overrides.split(",") if item.strip()]
    return {key: getattr(probe, key) for key in keys}
