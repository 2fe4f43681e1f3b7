"""Loading a transformers image classifier as a conversion source (a model instance, a local folder or a Hub id),
shared by the ViT / DeiT, CvT and LeViT converters.

Nothing runs the source's code (`trust_remote_code` is never set), weights come from safetensors or with
`weights_only=True` (transformers' own loading), and a checkpoint that does not fill its class exactly is refused:
every failure is one ConversionError line that names the source and says nothing was written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .common import ConversionError, first_line


PROCESSOR_FIELDS = ("image_mean", "image_std", "resample", "rescale_factor", "do_rescale", "do_normalize")
ATTENTION_TYPES = ("softmax", "performer", "nystrom", "linformer")


@dataclass
class TransformersSourceArguments:
    """The flags of every transformers converter's CLI: the source checkpoint and the target mixer."""

    model: str = field(metadata={"help": "A local folder or a Hub id of a transformers image classifier."})
    revision: str | None = field(default=None, metadata={"help": "Hub revision (branch, tag or commit) to convert."})
    attention_type: str = field(default="softmax", metadata={"help": "|".join(ATTENTION_TYPES)})
    config_overrides: str | None = field(default=None, metadata={
        "help": "Other fields of the target ViX config, 'key=value,key=value' (as training's --config_overrides), "
                "e.g. 'nystrom_num_landmarks=49'."})
    seed: int = field(default=0, metadata={"help": "Seed for new Performer features / Linformer projections."})


def load_or_refuse(from_pretrained, source, what: str, **kwargs):
    """`from_pretrained(source, ...)`, with whatever it raises on a broken source (a truncated checkpoint, an
    unreadable config, a missing folder) turned into one ConversionError line naming it and the expected `what`
    ("ViT / DeiT", "CvT", ...). transformers' progress bars and load report are silenced meanwhile: the caller
    reports what went wrong itself."""
    from transformers.utils import logging

    verbosity, progress = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        return from_pretrained(source, **kwargs)
    except Exception as error:  # the source is user input: every failure to read it is the user's to fix
        raise ConversionError(f"{source} cannot be loaded as a transformers {what} checkpoint "
                              f"({first_line(error)}); nothing was written.") from None
    finally:
        logging.set_verbosity(verbosity)
        if progress:
            logging.enable_progress_bar()


def load_classifier(source, revision, *, what: str, model_types: tuple[str, ...], default_class,
                    classes_by_architecture: dict | None = None):
    """(classifier in eval mode, Hub id or None) from a local folder or a Hub id whose config has one of
    `model_types`. The class is the one `classes_by_architecture` names for the checkpoint's `architectures`
    (e.g. DeiT's or LeViT's `...WithTeacher`), else `default_class`; the checkpoint must fill it exactly."""
    from transformers import AutoConfig

    config = load_or_refuse(AutoConfig.from_pretrained, source, what, revision=revision)
    if config.model_type not in model_types:
        raise ConversionError(f"Unsupported source architecture: model_type {config.model_type!r} "
                              f"({', '.join(config.architectures or [])}); this converter takes {what}.")
    architectures = config.architectures or []
    model_class = next((cls for name, cls in (classes_by_architecture or {}).items() if name in architectures),
                       default_class)
    # ignore_mismatched_sizes=True only so that a tensor of the wrong shape comes back in `info` (and is refused
    # below with its name) instead of as an error that points at a load report.
    model, info = load_or_refuse(model_class.from_pretrained, source, what, revision=revision,
                                 output_loading_info=True, ignore_mismatched_sizes=True)
    problems = {name: info.get(name) for name in ("missing_keys", "unexpected_keys", "mismatched_keys")
                if info.get(name)}
    if problems:
        raise ConversionError(
            f"{source} does not load strictly into {model_class.__name__} (checkpoint architectures {architectures}): "
            + "; ".join(f"{name}: {sorted(map(str, keys))[:8]}" for name, keys in problems.items())
            + ". A backbone without a classification head, or a tensor of the wrong shape, cannot be converted."
        )
    hub_id = None if Path(str(source)).exists() else str(source)
    return model.eval(), hub_id


def read_processor(source, revision=None):
    """The source's image processor, or None (a model instance, or a folder / repo without a readable one)."""
    if not isinstance(source, (str, Path)):
        return None
    try:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(source, revision=revision)
    except Exception:  # no (readable) preprocessor_config.json: the caller keeps its defaults
        return None


def processor_settings(processor, defaults: dict) -> dict:
    """Normalisation and resampling of `processor` (None: `defaults`) over the architecture's `defaults`."""
    settings = dict(defaults)
    for name in PROCESSOR_FIELDS:
        value = getattr(processor, name, None)
        if value is not None:
            settings[name] = value
    return settings


__all__ = ["TransformersSourceArguments", "load_classifier", "load_or_refuse", "processor_settings", "read_processor"]
