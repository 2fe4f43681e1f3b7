"""Loading a transformers image classifier as a conversion source (a model instance, a local folder or a Hub id),
shared by the ViT / DeiT, CvT and LeViT converters.

Nothing runs the source's code (`trust_remote_code` is never set), weights come from safetensors or with
`weights_only=True` (transformers' own loading), and a checkpoint that does not fill its class exactly is refused:
every failure is one ConversionError line that names the source and says nothing was written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .common import ConversionError, first_line, source_label
from .pipeline import ATTENTION_TYPES, Source


PROCESSOR_FIELDS = ("image_mean", "image_std", "resample", "rescale_factor", "do_rescale", "do_normalize")


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


def load_classifier(source, revision, *, what: str, classes: tuple, default_class=None):
    """(classifier, Hub id or None) from a model instance (one of `classes`), or from a local folder or a Hub id whose
    config has one of their model_types. A checkpoint loads as the class its config's `architectures` names among
    `classes` (e.g. DeiT's or LeViT's `...WithTeacher`), else as `default_class` (default: the first of `classes`),
    and must fill it exactly."""
    if not isinstance(source, (str, Path)):
        if not isinstance(source, classes):
            model_type = getattr(getattr(source, "config", None), "model_type", None)
            raise ConversionError(f"Unsupported source {type(source).__name__} (model_type {model_type!r}); this "
                                  f"converter takes transformers' {' / '.join(cls.__name__ for cls in classes)}.")
        return source, None
    from transformers import AutoConfig

    config = load_or_refuse(AutoConfig.from_pretrained, source, what, revision=revision)
    if config.model_type not in {cls.config_class.model_type for cls in classes}:
        raise ConversionError(f"Unsupported source architecture: model_type {config.model_type!r} "
                              f"({', '.join(config.architectures or [])}); this converter takes {what}.")
    architectures = config.architectures or []
    model_class = next((cls for cls in classes if cls.__name__ in architectures), default_class or classes[0])
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
    return model, hub_id


def classifier_source(model, source, hub_id, reference_suffix: str = "", **fields) -> Source:
    """A loaded transformers classifier as the pipeline's Source, named after its class (and `source`)."""
    name = type(model).__name__
    return Source(name=f"transformers {name} ({source_label(source)})", state=model.state_dict(),
                  reference=f"transformers {name}{reference_suffix}", base_model=hub_id, model=model, **fields)


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


__all__ = [
    "TransformersSourceArguments", "classifier_source", "load_classifier", "load_or_refuse", "processor_settings",
    "read_processor",
]
