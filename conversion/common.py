"""Shared parts of the converters: safe loading, the rename table, strict filling of a ViX model, the parity
check on real images, writing a Hub-ready folder (weights, config with `auto_map`, modeling files, processor,
the conversion record `conversion.json`, and the model card from `model_cards`, the one card builder), and
the command-line style shared with training and publishing (HfArgumentParser over dataclasses,
`--config_overrides "key=value,key=value"`).

Safety: weights are read with safetensors or `torch.load(..., weights_only=True)`; nothing here unpickles
code. Strictness: every source key must be consumed by a rule and every ViX key filled, with matching
shapes; otherwise a `ConversionError` lists the offending keys and nothing is written.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from torch import nn
from transformers import HfArgumentParser

from modeling_vix import VixConfig, VixForImageClassification, VixImageProcessor
from modeling_vix.embeddings_vix import resample_position_grid


if __package__.startswith("vix."):  # installed: vix.conversion, whose sibling is vix.model_cards
    from ..model_cards.card import CONVERSION_RECORD, write_model_card
else:  # the checkout's top-level packages (a try/except ImportError would hide e.g. a missing jinja2)
    from model_cards.card import CONVERSION_RECORD, write_model_card


class ConversionError(ValueError):
    """A checkpoint that cannot be converted as asked (unknown or unused keys, shapes, architecture)."""


# --------------------------------------------------------------------------------------------------------
# Loading without unpickling code
# --------------------------------------------------------------------------------------------------------

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "module", "net")
PREFIXES_TO_STRIP = ("module.", "_orig_mod.")  # DataParallel / DistributedDataParallel, torch.compile


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from `.safetensors` (safetensors) or a torch file (`torch.load(weights_only=True)`).

    A training checkpoint that wraps the weights (`{"state_dict": ...}`, `{"model": ...}`) is unwrapped, and
    `module.` / `_orig_mod.` prefixes (DataParallel, torch.compile) are stripped.
    """
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"Checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        state = read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError for a pickled nn.Module, among others
            raise ConversionError(
                f"{path} cannot be read with torch.load(weights_only=True) ({first_line(error)}). Pickled models "
                "(torch.save(model)) are refused because unpickling runs code; save `model.state_dict()` (or "
                "safetensors) instead."
            ) from None
    return clean_state_dict(state, what=str(path))


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file, or a ConversionError naming it when it is truncated or not safetensors at all (e.g. a
    torch pickle under that name, which is never unpickled here)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as error:
        raise ConversionError(f"{path} is not a readable safetensors file ({first_line(error)}); it may be truncated "
                              "or saved in another format.") from None


def first_line(error: Exception) -> str:
    """`Type: first line of the message`, for one-line error reports."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def read_state(source, what: str) -> SourceState:
    """The tensors of a source given as a model instance, a state dict, or a checkpoint file (see
    `load_state_dict_file`)."""
    if isinstance(source, nn.Module):
        return clean_state_dict(source.state_dict(), what=what)
    if isinstance(source, Mapping):
        return clean_state_dict(source, what=what)
    return load_state_dict_file(source)


class SourceState(dict):
    """A source state dict whose missing keys raise a ConversionError naming the key and the source, so that a
    checkpoint without a tensor every converter reads (e.g. `pos_embedding`) gets a clear message, not a KeyError."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], what: str):
        super().__init__(tensors)
        self.what = what

    def __missing__(self, key):
        raise ConversionError(f"{self.what} has no {key!r}, which this converter needs: not a complete checkpoint of "
                              f"the supported architecture (first keys: {list(self)[:6]}).")


def clean_state_dict(state, what: str = "state dict") -> SourceState:
    """Unwrap a checkpoint dict, strip wrapper prefixes, check that every value is a tensor."""
    while isinstance(state, Mapping) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        wrapped = [key for key in WRAPPER_KEYS if isinstance(state.get(key), Mapping)]
        if not wrapped:
            break
        state = state[wrapped[0]]
    if not isinstance(state, Mapping):
        raise ConversionError(f"{what} is not a state dict (got {type(state).__name__}).")
    cleaned = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise ConversionError(
                f"{what}: entry {key!r} is a {type(value).__name__}, not a tensor. Pass the model's state_dict()."
            )
        for prefix in PREFIXES_TO_STRIP:
            while key.startswith(prefix):
                key = key[len(prefix):]
        cleaned[key] = value.detach().cpu()
    if not cleaned:
        raise ConversionError(f"{what} holds no tensors.")
    return SourceState(cleaned, what)


def source_label(source) -> str:
    """How a card and the messages name a source: a file or folder by its name (no local paths in published
    folders), a Hub id as given, else what it is."""
    if isinstance(source, nn.Module):
        return "model instance"
    if isinstance(source, Mapping):
        return "state dict"
    path = Path(str(source))
    return path.name if path.exists() else str(source)


# --------------------------------------------------------------------------------------------------------
# The rename table
# --------------------------------------------------------------------------------------------------------

Handler = Callable[[re.Match, torch.Tensor], dict[str, torch.Tensor]]


@dataclass
class Rule:
    """`pattern` must match a whole source key; `handler(match, tensor)` returns the ViX keys it fills."""

    pattern: str
    handler: Handler

    def __post_init__(self):
        self.regex = re.compile(self.pattern)


def rename(template: str, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Handler:
    """One source tensor -> one ViX key (`template` may use the pattern's groups, e.g. `\\1`)."""

    def handler(match: re.Match, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        return {match.expand(template): transform(tensor) if transform else tensor}

    return handler


def split(*templates: str, dim: int = 0) -> Handler:
    """One fused tensor (e.g. `to_qkv.weight`) -> equal chunks along `dim`, one per template (q, k, v)."""

    def handler(match: re.Match, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        if tensor.shape[dim] % len(templates):
            raise ConversionError(
                f"{match.string}: size {tensor.shape[dim]} along dim {dim} does not split into {len(templates)} parts."
            )
        chunks = tensor.chunk(len(templates), dim=dim)
        return {match.expand(template): chunk.clone() for template, chunk in zip(templates, chunks, strict=True)}

    return handler


def drop() -> Handler:
    """Consume a source key on purpose (only for keys a caller has explicitly agreed to drop)."""
    return lambda match, tensor: {}


def apply_rules(source: Mapping[str, torch.Tensor], rules: Iterable[Rule]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Run every source key through the first rule that matches it whole.

    Returns the ViX state dict and the source keys that no rule consumed (the caller refuses those).
    """
    rules = list(rules)
    converted: dict[str, torch.Tensor] = {}
    produced_by: dict[str, str] = {}
    unused = []
    for key, tensor in source.items():
        rule = next((rule for rule in rules if rule.regex.fullmatch(key)), None)
        if rule is None:
            unused.append(key)
            continue
        for target, value in rule.handler(rule.regex.fullmatch(key), tensor).items():
            if target in converted:
                raise ConversionError(f"Both {produced_by[target]!r} and {key!r} map to ViX key {target!r}.")
            converted[target] = value.contiguous()
            produced_by[target] = key
    return converted, unused


def _listing(keys: Iterable[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_strict(model: nn.Module, converted: Mapping[str, torch.Tensor], unused_source_keys: Iterable[str],
                source_name: str) -> None:
    """Fill `model` from `converted`, refusing unused source keys, unfilled or unknown ViX keys and shape
    mismatches (all reported together)."""
    target = model.state_dict()
    problems = []
    unused_source_keys = list(unused_source_keys)
    if unused_source_keys:
        problems.append(f"source keys that no rule uses (unknown to this converter): {_listing(unused_source_keys)}")
    missing = set(target) - set(converted)
    if missing:
        problems.append(f"ViX keys that the source does not fill: {_listing(missing)}")
    unexpected = set(converted) - set(target)
    if unexpected:
        problems.append(f"converted keys that the ViX model does not have: {_listing(unexpected)}")
    mismatched = [
        f"{key} {tuple(converted[key].shape)} vs ViX {tuple(target[key].shape)}"
        for key in sorted(set(target) & set(converted)) if converted[key].shape != target[key].shape
    ]
    if mismatched:
        problems.append(f"shape mismatches: {_listing(mismatched)}")
    if problems:
        raise ConversionError(f"Cannot convert {source_name} strictly; nothing was written: {'; '.join(problems)}.")
    model.load_state_dict(dict(converted), strict=True)


# --------------------------------------------------------------------------------------------------------
# Tensor layouts shared by the converters
# --------------------------------------------------------------------------------------------------------


def patch_linear_to_conv(weight: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """A Linear over patches flattened as (p1 p2 c) (einops `b (h w) (p1 p2 c)`) -> Conv2d weight (C, c, p1, p2)."""
    out_features = weight.shape[0]
    return weight.reshape(out_features, patch, patch, channels).permute(0, 3, 1, 2).contiguous()


def patch_vector_to_unfold_order(vector: torch.Tensor, channels: int, patch: int) -> torch.Tensor:
    """A per-feature vector over (p1 p2 c) (the LayerNorm before the patch Linear) -> ViX's (c p1 p2) order."""
    return vector.reshape(patch, patch, channels).permute(2, 0, 1).reshape(-1).contiguous()


def resample_position_embeddings(positions: torch.Tensor, num_prefix_tokens: int, old_grid: tuple[int, int],
                                 new_grid: tuple[int, int]) -> torch.Tensor:
    """Learned positions for another patch grid, resampled exactly as ViX (and transformers' ViT) do with
    `interpolate_pos_encoding=True`: the model's own function, so a converted folder agrees with it."""
    if tuple(old_grid) == tuple(new_grid):
        return positions
    return resample_position_grid(positions, num_prefix_tokens, tuple(old_grid), tuple(new_grid))


def square_side(count: int, what: str) -> int:
    side = math.isqrt(count)
    if side * side != count:
        raise ConversionError(f"{what} ({count}) is not a square; pass the image size explicitly.")
    return side


# --------------------------------------------------------------------------------------------------------
# Parity on real images
# --------------------------------------------------------------------------------------------------------

# The offline CIFAR-10 copy beside the repository checkout (../shared); None when installed (no setup.cfg beside
# the package folder).
_PARENT = Path(__file__).resolve().parents[1]
DEFAULT_CIFAR10 = (_PARENT.parent / "shared" / "data" / "cifar10" / "plain_text" / "test-00000-of-00001.parquet"
                   if (_PARENT / "setup.cfg").is_file() else None)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")


def load_images(spec=None, limit: int = 8):
    """Images for the parity check: PIL images, or paths (image files, folders of them, or a parquet file in
    the Hub's image layout, e.g. CIFAR-10's). Default: the local CIFAR-10 test copy when it exists, else
    scikit-learn's bundled digits (`digits_images`).

    Returns (images, description); (None, reason) when no real image is available.
    """
    from PIL import Image

    if spec is None:
        return default_images(limit)
    if isinstance(spec, (str, Path)) or hasattr(spec, "convert"):
        spec = [spec]
    images, names = [], []
    for item in spec:
        if len(images) >= limit:
            break
        if hasattr(item, "convert"):
            images.append(item.convert("RGB"))
            names.append("PIL images")
            continue
        path = Path(item)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            images += [Image.open(p).convert("RGB") for p in files[: limit - len(images)]]
            names.append(str(path))
        elif path.suffix == ".parquet":
            images += parquet_images(path, limit - len(images))
            names.append(str(path))
        elif path.is_file():
            images.append(Image.open(path).convert("RGB"))
            names.append(str(path))
        else:
            raise ConversionError(f"Image source not found: {path}")
    if not images:
        return None, "no images found in " + ", ".join(map(str, spec))
    return images[:limit], f"{len(images[:limit])} real images ({', '.join(dict.fromkeys(names))})"


def default_images(limit: int):
    """(images, description) when no --images are given: CIFAR-10 test images from the offline copy when it
    exists; else scikit-learn's digits, which install with the package's train/test extras, so parity is
    measured on real images on any machine; (None, reason) when neither is available."""
    if DEFAULT_CIFAR10 is not None and DEFAULT_CIFAR10.exists():
        images = parquet_images(DEFAULT_CIFAR10, limit)
        return images, f"{len(images)} real images (CIFAR-10 test split, {DEFAULT_CIFAR10.name})"
    try:
        images, _ = digits_images(limit)
    except ImportError:
        return None, "no images given (--images), no local CIFAR-10 copy and no scikit-learn for its digits"
    return images, f"{len(images)} real images (scikit-learn digits, 8x8 upscaled to 32x32 RGB)"


def parquet_images(path: Path, limit: int) -> list:
    """The first `limit` images of a parquet file in the Hub's image layout (an `img` or `image` column)."""
    import pyarrow.parquet as pq
    from PIL import Image

    table = pq.read_table(path).slice(0, limit).to_pylist()
    column = next((c for c in ("img", "image") if table and c in table[0]), None)
    if column is None:
        raise ConversionError(f"{path}: no 'img' or 'image' column.")
    return [Image.open(io.BytesIO(row[column]["bytes"])).convert("RGB") for row in table]


def digits_images(limit: int = 16, size: int = 32) -> tuple[list, list[int]]:
    """The first `limit` images of scikit-learn's bundled 8x8 handwritten digits (real scans, shipped inside the
    scikit-learn wheel: no download) with their labels, upscaled to `size` x `size` RGB like CIFAR-10 images.
    Raises ImportError without scikit-learn."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [Image.fromarray((digits.images[i] * (255 / 16)).astype(np.uint8)).resize((size, size), Image.BILINEAR)
              .convert("RGB") for i in range(limit)]
    return images, [int(label) for label in digits.target[:limit]]


def parity_pixels(processor: VixImageProcessor, images, num_channels: int, size: tuple[int, int], seed: int = 0):
    """pixel_values from real images through the converted folder's own processor; seeded noise otherwise."""
    loaded, description = load_images(images)
    if loaded is not None and num_channels == 3:
        return processor(loaded, return_tensors="pt")["pixel_values"], description
    generator = torch.Generator().manual_seed(seed)
    reason = description if loaded is None else f"the model has {num_channels} channels"
    return torch.randn(2, num_channels, *size, generator=generator), f"2 random-noise inputs ({reason})"


def logit_parity(reference: torch.Tensor, logits: torch.Tensor, reference_name: str, attention_type: str,
                 inputs: str, expected_exact: bool) -> dict:
    """Max abs logit difference and top-1 agreement of `logits` against `reference`."""
    reference, logits = reference.detach().float(), logits.detach().float()
    if reference.shape != logits.shape:
        raise ConversionError(f"Logit shapes differ: source {tuple(reference.shape)}, ViX {tuple(logits.shape)}.")
    return {
        "reference": reference_name,
        "attention_type": attention_type,
        "max_abs_logit_diff": float((reference - logits).abs().max()),
        "reference_logit_scale": float(reference.abs().max()),
        "top1_agreement": float((reference.argmax(-1) == logits.argmax(-1)).float().mean()),
        "inputs": inputs,
        "expected_exact": expected_exact,
    }


def check_tolerance(parity: dict, atol: float | None, source_name: str) -> None:
    if atol is not None and parity["expected_exact"] and not parity["max_abs_logit_diff"] <= atol:
        raise ConversionError(
            f"{source_name}: converted logits differ from the source by {parity['max_abs_logit_diff']:.3e} "
            f"(> atol {atol:.0e}) on {parity['inputs']}; nothing was written. This is a converter bug or a "
            "source option the converter does not read: please report it."
        )


# --------------------------------------------------------------------------------------------------------
# Output folder and model card
# --------------------------------------------------------------------------------------------------------


@dataclass
class ConversionResult:
    model: VixForImageClassification
    processor: VixImageProcessor
    parity: list[dict] = field(default_factory=list)
    output_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    check_pixels: torch.Tensor | None = field(default=None, repr=False)  # the parity inputs, and ViX's logits on them
    check_logits: torch.Tensor | None = field(default=None, repr=False)

    @property
    def config(self) -> VixConfig:
        return self.model.config


def check_output_dir(output_dir, overwrite: bool) -> Path | None:
    """Refuse a non-empty output folder up front (before any work) unless `overwrite`."""
    if output_dir is None:
        return None
    output_dir = Path(output_dir)
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())) and not overwrite:
        raise ConversionError(f"{output_dir} exists and is not empty; choose another folder or pass --overwrite.")
    return output_dir


def make_processor(size: tuple[int, int], image_mean, image_std, **kwargs) -> VixImageProcessor:
    if len(image_mean) != 3 or len(image_std) != 3:  # the processor converts every image to RGB
        raise ConversionError(f"image_mean {list(image_mean)} and image_std {list(image_std)} need 3 values (RGB).")
    return VixImageProcessor(size={"height": int(size[0]), "width": int(size[1])}, image_mean=list(image_mean),
                             image_std=list(image_std), **kwargs)


def conversion_record(result: ConversionResult, source: str, base_model: str | None) -> dict:
    """What the card states about a conversion (conversion.json): kept in the folder, so a rebuilt or published
    card (model_cards) states the same source, parity and notes as the converter's."""
    return {"source": source, "base_model": base_model, "parity": result.parity, "notes": result.notes}


@contextmanager
def staged_output_dir(output_dir: Path):
    """A temporary sibling of `output_dir` to write into; moved into place (replacing `output_dir`) only when the
    block ends without an error, removed otherwise, so a failed write leaves nothing half-done."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.", dir=output_dir.parent))
    try:
        yield staging
        if output_dir.exists():
            shutil.rmtree(output_dir) if output_dir.is_dir() else output_dir.unlink()
        staging.rename(output_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


@torch.no_grad()
def write_folder(result: ConversionResult, output_dir: Path, *, source: str, base_model: str | None,
                 check_pixels: torch.Tensor, check_logits: torch.Tensor | None = None, overwrite: bool = False) -> Path:
    """Save weights, config (with auto_map), modeling files, processor, conversion record and card into
    `output_dir`, written to a temporary sibling first and moved into place only once the saved folder reloads
    with the same logits."""
    output_dir = Path(output_dir)
    check_output_dir(output_dir, overwrite)
    with staged_output_dir(output_dir) as staging:
        result.model.save_pretrained(staging)
        result.processor.save_pretrained(staging)
        record = conversion_record(result, source, base_model)
        (staging / CONVERSION_RECORD).write_text(json.dumps(record, indent=2) + "\n")
        write_model_card(staging, {}, None)  # the one card builder, named as for trained models (publish renames)
        from transformers import AutoModelForImageClassification

        reloaded = AutoModelForImageClassification.from_pretrained(staging).eval()
        if check_logits is None:
            check_logits = result.model(check_pixels).logits
        difference = (reloaded(check_pixels).logits - check_logits).abs().max().item()
        if difference > 1e-6:
            raise ConversionError(f"The saved folder reloads with different logits (max diff {difference:.2e}).")
    result.output_dir = output_dir
    return output_dir


# --------------------------------------------------------------------------------------------------------
# CLI helpers
# --------------------------------------------------------------------------------------------------------


@dataclass
class ConversionArguments:
    """The flags every converter shares (each converter adds its own dataclass in front of this one)."""

    output_dir: str = field(metadata={"help": "Folder to write (must be empty or absent)."})
    images: list[str] | None = field(default=None, metadata={
        "help": "Real images for the parity check: files, folders or a parquet file (Hub image layout). Default: "
                "the local CIFAR-10 test copy when present, else scikit-learn's digits, else random noise."})
    atol: float = field(default=1e-4, metadata={
        "help": "Refuse to write when an exact conversion's logits differ by more."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})


def make_parser(source_arguments, prog: str, description: str) -> HfArgumentParser:
    """The converters' parser: HfArgumentParser over (the converter's own dataclass, ConversionArguments), the
    style of training/train.py and model_cards/publish.py (underscore flags, `--flag value`)."""
    return HfArgumentParser((source_arguments, ConversionArguments), prog=prog, description=description,
                            formatter_class=argparse.RawDescriptionHelpFormatter)


def parse_arguments(parser: HfArgumentParser, argv=None) -> tuple:
    """The dataclasses of `parser`; an unknown flag is a usage error (exit 2), not HfArgumentParser's ValueError."""
    *parsed, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    return tuple(parsed)


def parse_config_overrides(text: str | Mapping | None, config_class=VixConfig) -> dict:
    """`"key=value,key=value"` -> {key: value}, read exactly as `PreTrainedConfig.update_from_string` (training's
    `--config_overrides`) reads it: applied to a default `config_class` (the target backbone's config), so unknown
    keys are refused and each value takes the type of the field's default. A dict is taken as it is."""
    if isinstance(text, Mapping):
        return dict(text)
    if not text:
        return {}
    config = config_class()
    try:
        config.update_from_string(text)
    except (ValueError, TypeError, StrictDataclassError) as error:
        raise ConversionError(f"--config_overrides {text!r}: {error}") from None
    keys = [pair.split("=", 1)[0] for pair in text.split(",")]
    return {key: getattr(config, key) for key in keys}


def print_summary(result: ConversionResult) -> None:
    for entry in result.parity:
        print(f"parity vs {entry['reference']} ({entry['attention_type']}): max abs logit diff "
              f"{entry['max_abs_logit_diff']:.3e}, top-1 agreement {entry['top1_agreement']:.0%} on {entry['inputs']}")
    for note in result.notes:
        print(f"note: {note}")
    if result.output_dir is not None:
        print(f"wrote {result.output_dir}")


def run_cli(main: Callable[[], ConversionResult]) -> int:
    try:
        print_summary(main())
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


__all__ = [
    "ConversionError", "ConversionResult", "Rule", "rename", "split", "drop", "apply_rules", "load_strict",
    "load_state_dict_file", "read_state", "clean_state_dict", "patch_linear_to_conv", "patch_vector_to_unfold_order",
    "resample_position_embeddings", "load_images", "parity_pixels", "logit_parity", "check_tolerance",
    "check_output_dir", "make_processor", "conversion_record", "write_folder", "ConversionArguments",
    "make_parser", "parse_arguments", "parse_config_overrides", "run_cli", "source_label", "digits_images",
]
