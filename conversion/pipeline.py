"""The one conversion pipeline: every converter describes its source as a `Source` (how to build the ViX config for
an attention type, the rename table, how to run the source for parity) and `convert` does the rest, once:

1. refuse a non-empty output folder and an attention type without queries and keys, before any work;
2. build the ViX model for the target attention type, seeded (the init of the kernel's new tensors);
3. rename the source's tensors by the rule table;
4. into another mixer than the source's, fill the kernel's own tensors (`fill_kernel_tensors`): they keep their
   seeded init (Linformer's `seq_proj_*`, Performer's `projection_matrix` and, with redraws, `steps_since_redraw`),
   except Nystrom's residual conv, which starts at zero (so the model starts from the source's function,
   approximated); a missing output projection of a one-head layer (vit-pytorch) is the identity;
5. load strictly: every source tensor used, every ViX tensor filled, shapes equal;
6. parity on real images: into the source's own mixer the logits must match the source's (else nothing is written);
   into another mixer the same weights are first checked exactly in the source's mixer, then the drift of the
   target from the source is measured and reported;
7. write the folder (staged, reloaded with the same logits, then moved into place).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn

from modeling_vix import BACKBONES, MIXER_CAPABILITIES
from modeling_vix.kernels_vix import ATTENTION_KERNELS, AttentionKernel

from .common import (
    ConversionError,
    ConversionResult,
    Rule,
    apply_rules,
    check_output_dir,
    check_tolerance,
    first_line,
    load_strict,
    logit_parity,
    parity_pixels,
    write_folder,
)


ATTENTION_TYPES = tuple(ATTENTION_KERNELS)  # the mixers with queries, keys and values: what attention carries into
# How parity names the outputs a source and ViX both have (a distilled model's two heads apart, and their mean).
OUTPUT_NAMES = {"logits": "", "cls_logits": " (cls head)", "distillation_logits": " (distillation head)"}
# Config fields a conversion may choose beside the source's architecture: the mixer's own settings, and training-only
# regularisation (the source's values are a default, not part of the function it computes).
MIXER_PREFIXES = ("nystrom_", "performer_", "linformer_")
TRAINING_ONLY = ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")


@dataclass
class Source:
    """A loaded source, as `convert` needs it.

    configure: attention_type -> the ViX config the source's weights fill (with the converter's checked overrides).
    rules: ViX config -> the rename table from the source's keys to that model's keys.
    run: pixels -> {ViX output field ("logits", "cls_logits", ...): the source's logits}; None when the source cannot
        be run here (`unavailable` says why, in a note).
    exact: ViX config -> whether its logits should equal the source's in the source's own mixer (False when the
        converter drops something on request, e.g. a distillation token).
    notes: ViX config -> what the card and the summary should say about this conversion.
    model: the source module, put in eval mode while it runs and then restored.
    """

    name: str
    state: Mapping[str, torch.Tensor]
    configure: Callable[[str], object]
    rules: Callable[[object], list[Rule]]
    processor: object
    reference: str
    run: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = None
    unavailable: str = ""
    native_attention: str = "softmax"
    exact: Callable[[object], bool] = lambda config: True
    notes: Callable[[object], list[str]] = lambda config: []
    base_model: str | None = None
    model: nn.Module | None = field(default=None, repr=False)


def check_attention_type(attention_type: str) -> None:
    """Refuse an attention type whose weights a softmax source cannot fill: unknown, or without queries and keys."""
    if attention_type in ATTENTION_TYPES:
        return
    choices = ", ".join(ATTENTION_TYPES)
    if attention_type in MIXER_CAPABILITIES:
        raise ConversionError(f"attention_type={attention_type!r} has no queries, keys or values, so the source's "
                              f"attention weights cannot carry over; choose one of {choices}.")
    raise ConversionError(f"Unknown attention_type {attention_type!r}; choose one of {choices}.")


def with_mixer(config, attention_type: str, overrides: Mapping | None = None):
    """`config` (a converted softmax config) with another attention type and mixer settings: the configure step of
    sources whose config is read off the source itself (vit-pytorch)."""
    check_attention_type(attention_type)
    overrides = dict(overrides or {})
    fixed = [key for key in overrides if not key.startswith(MIXER_PREFIXES) and key not in TRAINING_ONLY]
    if fixed:
        raise ConversionError(f"{', '.join(fixed)} come from the source checkpoint and cannot be set with "
                              "config_overrides.")
    settings = {**config.to_dict(), **overrides, "attention_type": attention_type}
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        settings.pop(key, None)
    try:
        return type(config)(**settings)
    except (TypeError, ValueError, StrictDataclassError) as error:  # the config's own checks of the combination
        raise ConversionError(f"Invalid config_overrides {overrides} for attention_type={attention_type!r}: "
                              f"{first_line(error)}") from None


def attention_modules(model: nn.Module):
    """(name prefix, module) of every module that hands its heads to an attention kernel (the backbone's attention)."""
    for name, module in model.named_modules():
        if isinstance(getattr(module, "kernel", None), AttentionKernel):
            yield (f"{name}." if name else ""), module


@torch.no_grad()
def fill_kernel_tensors(model: nn.Module, converted: dict[str, torch.Tensor], seed: int) -> list[str]:
    """Into a mixer the source does not have: fill, in `converted`, the kernel's own tensors (none of which the source
    has) and drop value projections the kernel has no use for; returns notes saying what was done.

    The kernel's tensors keep the model's seeded init (Linformer's sequence projections, Performer's features and
    redraw counter), except Nystrom's residual conv on V, which starts at zero so that the converted model computes
    the Nystrom approximation of the source's attention.
    """
    new_kinds, zeroed, dropped = set(), 0, 0
    for prefix, module in attention_modules(model):
        for key, tensor in module.kernel.state_dict().items():
            if key.startswith("residual_conv."):
                converted[f"{prefix}kernel.{key}"], zeroed = torch.zeros_like(tensor), zeroed + 1
            else:
                converted[f"{prefix}kernel.{key}"] = tensor.clone()
                new_kinds.add(key)
        if getattr(module, "v_proj", False) is None:  # Linformer with V = K
            for key in [key for key in converted if key.startswith(prefix + "v_proj.")]:
                del converted[key]
                dropped += 1
    notes = []
    if zeroed:
        notes.append(f"Nystrom's depthwise residual conv on V ({zeroed} layers; not in the source) starts at zero, so "
                     "the model starts from the Nystrom approximation of the source's attention "
                     "(nystrom_residual_conv_kernel=0 removes it).")
    if new_kinds:
        notes.append(f"New kernel tensors, not in the source, keep their init (seed {seed}): "
                     f"{', '.join(sorted(new_kinds))}.")
    if dropped:
        notes.append(f"The source's value projections ({dropped} tensors) were dropped: this Linformer takes V = K.")
    return notes


@torch.no_grad()
def fill_missing_output_projections(model: nn.Module, converted: dict[str, torch.Tensor]) -> list[str]:
    """vit-pytorch has no output projection when one head is as wide as the model; ViX's o_proj is the identity
    there. Only for one-head layers with a square o_proj: anywhere else a missing o_proj stays an error."""
    filled = 0
    for prefix, module in attention_modules(model):
        o_proj = getattr(module, "o_proj", None)
        if (isinstance(o_proj, nn.Linear) and prefix + "o_proj.weight" not in converted
                and module.kernel.num_heads == 1 and o_proj.in_features == o_proj.out_features):
            converted[prefix + "o_proj.weight"] = torch.eye(o_proj.out_features)
            converted[prefix + "o_proj.bias"] = torch.zeros(o_proj.out_features)
            filled += 1
    return [f"The source has no attention output projection in {filled} layers (one head as wide as the model); "
            "ViX's o_proj is set to the identity there."] if filled else []


def build_filled(source: Source, config, seed: int) -> tuple[nn.Module, list[str]]:
    """The ViX model of `config` holding the source's weights (steps 2-5); its seeded new tensors and notes."""
    torch.manual_seed(seed)  # the init of the kernel tensors the source does not have
    model = BACKBONES[config.model_type][2](config).eval()
    converted, unused = apply_rules(source.state, source.rules(config))
    notes = fill_missing_output_projections(model, converted)
    if config.attention_type != source.native_attention:  # in the source's own mixer every tensor is the source's
        notes += fill_kernel_tensors(model, converted, seed)
    load_strict(model, converted, unused, source.name)
    return model, notes


def compare(source: Source, expected: dict[str, torch.Tensor], outputs, attention_type: str, inputs: str,
            exact: bool, atol: float | None) -> list[dict]:
    """One parity entry per output the source gives, refused beyond `atol` when `exact`."""
    entries = []
    for output, logits in expected.items():
        entry = logit_parity(logits, getattr(outputs, output), source.reference + OUTPUT_NAMES[output],
                             attention_type, inputs, expected_exact=exact)
        check_tolerance(entry, atol, source.name)
        entries.append(entry)
    return entries


@contextlib.contextmanager
def evaluating(module: nn.Module | None):
    """`module` in eval mode for the block, its own mode restored after."""
    was_training = module is not None and module.training
    if module is not None:
        module.eval()
    try:
        yield
    finally:
        if was_training:
            module.train()


@torch.no_grad()
def convert_loaded(source: Source, attention_type: str, *, seed: int = 0, images=None,
                   atol: float | None = 1e-4) -> ConversionResult:
    """Steps 2-6 for a loaded source: the converted model with its parity entries and notes (nothing written)."""
    config = source.configure(attention_type)
    model, notes = build_filled(source, config, seed)
    size = (source.processor.size["height"], source.processor.size["width"])
    pixels, inputs = parity_pixels(source.processor, images, config.num_channels, size, seed)
    outputs = model(pixels)
    result = ConversionResult(model=model, processor=source.processor, check_pixels=pixels,
                              check_logits=outputs.logits)
    native = attention_type == source.native_attention
    with evaluating(source.model):
        expected = source.run(pixels) if source.run is not None else None
    if expected is None:
        result.notes.append(source.unavailable)
    else:
        if not native:  # the same weights in the source's own mixer first: proof that every one of them landed
            native_config = source.configure(source.native_attention)
            if source.exact(native_config):
                native_model, _ = build_filled(source, native_config, seed)
                checked = compare(source, expected, native_model(pixels), source.native_attention, inputs, True, atol)
                worst = max(entry["max_abs_logit_diff"] for entry in checked)
                result.notes.append(f"The converted weights were first checked in the source's own "
                                    f"{source.native_attention} attention: max abs logit diff {worst:.2e} from the "
                                    f"source on {inputs}.")
        result.parity = compare(source, expected, outputs, attention_type, inputs, native and source.exact(config),
                                atol)
    result.notes += notes + source.notes(config)
    if not native:
        result.notes.append(f"`{attention_type}` approximates the source's {source.native_attention} attention: the "
                            "weights carry over, the logits move by the amount above; fine-tune before use.")
    return result


def convert(load: Callable[[], Source], output_dir=None, *, attention_type: str | None = None, seed: int = 0,
            images=None, atol: float | None = 1e-4, overwrite: bool = False) -> ConversionResult:
    """The whole conversion: checks before any work, `load()` the source, convert it, write `output_dir` when given.

    attention_type: the target mixer; None = the source's own.
    """
    check_output_dir(output_dir, overwrite)
    if attention_type is not None:
        check_attention_type(attention_type)
    source = load()
    result = convert_loaded(source, attention_type or source.native_attention, seed=seed, images=images, atol=atol)
    if output_dir is not None:
        write_folder(result, output_dir, source=source.name, base_model=source.base_model,
                     check_pixels=result.check_pixels, check_logits=result.check_logits, overwrite=overwrite)
    return result


__all__ = ["ATTENTION_TYPES", "Source", "attention_modules", "check_attention_type", "convert", "convert_loaded",
           "fill_kernel_tensors", "fill_missing_output_projections", "with_mixer"]
