"""Convert the paper authors' `vision-xformer` models (ViN, ViP, ViL, FNet) into ViX.

    python -m conversion.from_vision_xformer --checkpoint vin_cifar10.pt --output_dir vix-vin-cifar10

The source is a model instance or a state dict (`.pt`/`.pth` read with `weights_only=True`, or
`.safetensors`). The architecture and sizes are read from the weights; what the weights cannot tell
(the image size when the patch grid is not square, the head count of a ViL with one key/value head per
query head, the Nystrom landmark count, the pooling) comes from the arguments, with the package's own
defaults (64 landmarks, cls pooling).

The authors' code differs from ViX's defaults in four places; the converted config turns on ViX's
compatibility settings for them, so the logits are the same:
- LayerNorm before and after the linear patch projection: `patch_embedding_norm=True`. Their Linear takes
  patches in (p1 p2 c) order; ViX's Conv2d weight is (C, c, p1, p2), so the weight and the first LayerNorm's
  affine parameters are permuted here.
- Nystrom: zero tokens prepended when the landmark count does not divide the token count
  (`nystrom_padding="zeros_front"`), pseudo-inverse scaled over the whole batch (`nystrom_pinv_scale="global"`).
- Linformer: one key/value head (`linformer_one_kv_head=True`, ViL's default) and V = K with E = F
  (`linformer_values_from_keys=True`, `linformer_share_kv=True`).
- Performer: the random features drawn once at construction are a buffer of the checkpoint and carry over
  (never redrawn, `performer_redraw_interval=0`).
`pool="mean"` is refused: the authors average every token including cls before the final LayerNorm, while
ViX's mean pooling has no cls token; no ViX config reproduces it. `FNet2D` (not the paper's FNet) is refused.

Their `ViP` builds its random features with `torch.qr`, which recent torch removed: conversion reads only
the state dict, so it works all the same; the parity check rebuilds the source with `torch.linalg.qr`
standing in for `torch.qr` while the model is constructed (the features are then overwritten by the
checkpoint's own).
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from modeling_vix import VixConfig

from .common import (
    ConversionError,
    ConversionResult,
    Rule,
    make_parser,
    make_processor,
    parse_arguments,
    patch_linear_to_conv,
    patch_vector_to_unfold_order,
    read_state,
    rename,
    run_cli,
    source_label,
    split,
    square_side,
)
from .pipeline import Source, convert


ATTENTION_TYPES = {"ViN": "nystrom", "ViP": "performer", "ViL": "linformer", "FNet": "fnet"}
UNSUPPORTED = {
    "FNet2D": "FNet2D (2D FFT over the image grid, added to the package in 2022) is not the paper's FNet and has no "
              "ViX mixer; convert the paper's `FNet` instead.",
}
PAPER_NORMALIZATION = (0.5, 0.5, 0.5)  # the authors' CIFAR-10 pipeline: Normalize((0.5,)*3, (0.5,)*3)
# performer-pytorch (inlined in vision-xformer) stabilises exp() of the key features with ONE maximum over the
# whole (batch, heads, tokens, features) tensor, where ViX by default takes one per (sample, head). The two
# cancel in the normalisation except against the +1e-4 added after exp(), so exact parity needs ViX's
# compatibility setting performer_key_stabilizer="global".


# --------------------------------------------------------------------------------------------------------
# What the source is
# --------------------------------------------------------------------------------------------------------


def detect_architecture(state: dict) -> str:
    keys = list(state)

    def has(pattern):
        return any(re.fullmatch(pattern, key) for key in keys)

    if not has(r"to_patch_embedding\.2\.weight") or not has(r"mlp_head\.1\.weight"):
        raise ConversionError(
            "Not a vision-xformer model: expected `to_patch_embedding.{1,2,3}` (LayerNorm, Linear, LayerNorm) and "
            f"`mlp_head.{{0,1}}`; first keys: {keys[:6]}. The hybrid (conv-stem) and RoPE scripts of the paper's "
            "repository are not part of the package and are not supported."
        )
    if has(r"token_mixer\.layers\.\d+\..*"):
        return "FNet"
    if has(r"transformer\.layers\.\d+\.0\.fn\.to_qkv\.weight"):
        return "ViN"
    if has(r"transformer\.layers\.\d+\.0\.fn\.fast_attention\.projection_matrix"):
        return "ViP"
    if has(r"transformer\.layers\.\d+\.0\.fn\.proj_k"):
        return "ViL"
    raise ConversionError(
        "Unsupported vision-xformer architecture: no Nystrom (`to_qkv`), Performer (`fast_attention`), Linformer "
        f"(`proj_k`) or FNet (`token_mixer`) layers found; supported: {', '.join(ATTENTION_TYPES)}."
    )


def settings_from_model(model: nn.Module) -> tuple[str, dict]:
    """Architecture name and the constructor arguments that the weights do not show, read off a live model."""
    name = type(model).__name__
    if name in UNSUPPORTED:
        raise ConversionError(UNSUPPORTED[name])
    if name not in ATTENTION_TYPES:
        raise ConversionError(
            f"Unsupported source architecture {name!r}; this converter takes vision-xformer's "
            f"{', '.join(ATTENTION_TYPES)}."
        )
    settings = {"pool": model.pool}
    lengths = getattr(model.to_patch_embedding[0], "axes_lengths", None) or {}
    lengths = dict(lengths)
    if lengths.get("p1") != lengths.get("p2"):
        raise ConversionError(f"Non-square patches {lengths} are not supported by ViX (patch_size is one int).")
    settings["patch_size"] = lengths.get("p1")
    layers = (model.token_mixer if name == "FNet" else model.transformer).layers
    settings["dropout"] = float(layers[0][1].fn.net[2].p)
    settings["emb_dropout"] = float(model.dropout.p)
    if name != "FNet":
        attention = layers[0][0].fn
        settings["heads"] = attention.heads
        if name == "ViN":
            settings["num_landmarks"] = attention.num_landmarks
            settings["pinv_iterations"] = attention.pinv_iterations
    return name, settings


def _layer_indices(state: dict, prefix: str) -> list[int]:
    return sorted({int(m.group(1)) for key in state if (m := re.match(re.escape(prefix) + r"\.(\d+)\.", key))})


def infer_settings(state: dict, arch: str, given: dict) -> dict:
    """The authors' constructor arguments, read from the weights where they show and from `given` otherwise."""
    s = dict(given)
    patch_dim = state["to_patch_embedding.1.weight"].shape[0]
    dim, linear_in = state["to_patch_embedding.2.weight"].shape
    if linear_in != patch_dim:
        raise ConversionError(f"to_patch_embedding: LayerNorm over {patch_dim} but Linear takes {linear_in}.")
    channels = s.get("channels") or 3
    patch = s.get("patch_size")
    if patch is None:
        if patch_dim % channels or (patch := square_side(patch_dim // channels, "patch_dim / channels")) < 1:
            raise ConversionError(f"patch_dim {patch_dim} is not channels ({channels}) x a square patch.")
    if channels * patch * patch != patch_dim:
        raise ConversionError(f"patch_dim {patch_dim} != channels {channels} x patch {patch}^2.")
    num_patches = state["pos_embedding"].shape[1] - 1
    image_size = s.get("image_size")
    if image_size is None:
        side = square_side(num_patches, "number of patches") * patch
        image_size = (side, side)
    image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    grid = (image_size[0] // patch) * (image_size[1] // patch)
    if grid != num_patches or image_size[0] % patch or image_size[1] % patch:
        raise ConversionError(
            f"image_size {image_size} with patch {patch} does not give the checkpoint's {num_patches} patches."
        )
    prefix = "token_mixer.layers" if arch == "FNet" else "transformer.layers"
    depth = len(_layer_indices(state, prefix))
    s.update(channels=channels, patch_size=patch, image_size=image_size, dim=dim, depth=depth,
             mlp_dim=state[f"{prefix}.0.1.fn.net.0.weight"].shape[0], num_classes=state["mlp_head.1.weight"].shape[0])
    s.setdefault("pool", "cls")
    if s["pool"] != "cls":
        raise ConversionError(
            "pool='mean' cannot be converted exactly: vision-xformer averages all tokens including cls before the "
            "final LayerNorm, while ViX's mean pooling has no cls token. Use a pool='cls' model."
        )
    layer = f"{prefix}.0.0.fn"
    heads = s.get("heads")
    if arch == "ViN":
        conv = state[f"{layer}.res_conv.weight"]
        inner = state[f"{layer}.to_qkv.weight"].shape[0] // 3
        s["residual_conv_kernel"] = conv.shape[2]
        heads = _check_heads(heads, conv.shape[0], "res_conv")
        s["dim_head"] = inner // heads
        s.setdefault("num_landmarks", 64)  # the package's ViN default; not stored in the weights
        s.setdefault("pinv_iterations", 6)
    elif arch == "ViP":
        inner = state[f"{layer}.to_q.weight"].shape[0]
        s["dim_head"] = state[f"{layer}.fast_attention.projection_matrix"].shape[1]
        heads = _check_heads(heads, inner // s["dim_head"], "projection_matrix")
        s["nb_features"] = state[f"{layer}.fast_attention.projection_matrix"].shape[0]
    elif arch == "ViL":
        q_dim, kv_dim = state[f"{layer}.to_q.weight"].shape[0], state[f"{layer}.to_k.weight"].shape[0]
        seq_len, s["k"] = state[f"{layer}.proj_k"].shape
        if seq_len != num_patches + 1:
            raise ConversionError(f"proj_k covers {seq_len} tokens but the model has {num_patches + 1}.")
        s["share_kv"] = f"{layer}.to_v.weight" not in state
        if kv_dim < q_dim:  # one key/value head of dim_head channels
            s["one_kv_head"], s["dim_head"] = True, kv_dim
            heads = _check_heads(heads, q_dim // kv_dim, "to_q / to_k")
        else:
            s["one_kv_head"] = False
            if heads is None:
                raise ConversionError(
                    "This ViL has one key/value head per query head, so the weights do not show the head count: "
                    "pass num_attention_heads (--num_attention_heads)."
                )
            s["dim_head"] = q_dim // heads
    else:
        heads = 1
    s["heads"] = heads
    return s


def _check_heads(given, derived, where):
    if given is not None and given != derived:
        raise ConversionError(f"num_attention_heads={given} contradicts the weights ({where} shows {derived}).")
    return derived


def vix_config(arch: str, s: dict, id2label=None) -> VixConfig:
    options = dict(
        image_size=list(s["image_size"]), patch_size=s["patch_size"], num_channels=s["channels"],
        hidden_size=s["dim"], num_hidden_layers=s["depth"], num_attention_heads=s["heads"],
        intermediate_size=s["mlp_dim"], hidden_act="gelu", layer_norm_eps=1e-5, num_labels=s["num_classes"],
        hidden_dropout_prob=s.get("dropout", 0.0), attention_type=ATTENTION_TYPES[arch], embedding_type="linear",
        position_embedding_type="learned", pooling="cls", patch_embedding_norm=True,
    )
    if arch != "FNet":
        options["head_dim"] = s["dim_head"]
    if arch == "ViN":
        options.update(qkv_bias=False, nystrom_num_landmarks=s["num_landmarks"],
                       nystrom_pinv_iterations=s["pinv_iterations"],
                       nystrom_residual_conv_kernel=s["residual_conv_kernel"], nystrom_padding="zeros_front",
                       nystrom_pinv_scale="global")
    elif arch == "ViP":
        options.update(qkv_bias=True, performer_num_features=s["nb_features"], performer_kernel="softmax",
                       performer_redraw_interval=0)
        options["performer_key_stabilizer"] = "global"
    elif arch == "ViL":
        options.update(qkv_bias=False, linformer_k=s["k"], linformer_one_kv_head=s["one_kv_head"],
                       linformer_share_kv=s["share_kv"], linformer_values_from_keys=s["share_kv"],
                       attention_probs_dropout_prob=s.get("dropout", 0.0))
    if id2label:
        options.update(id2label=id2label)
    return VixConfig(**options)


def rules(arch: str, s: dict) -> list[Rule]:
    c, p = s["channels"], s["patch_size"]
    P = r"token_mixer\.layers\.(\d+)" if arch == "FNet" else r"transformer\.layers\.(\d+)"
    L = r"vix.layers.\1"
    table = [
        Rule(r"to_patch_embedding\.1\.(weight|bias)",
             rename(r"vix.embeddings.patch_embeddings.norm_before.\1",
                    lambda t: patch_vector_to_unfold_order(t, c, p))),
        Rule(r"to_patch_embedding\.2\.weight",
             rename("vix.embeddings.patch_embeddings.projection.weight", lambda t: patch_linear_to_conv(t, c, p))),
        Rule(r"to_patch_embedding\.2\.bias", rename("vix.embeddings.patch_embeddings.projection.bias")),
        Rule(r"to_patch_embedding\.3\.(weight|bias)", rename(r"vix.embeddings.patch_embeddings.norm_after.\1")),
        Rule(r"pos_embedding", rename("vix.embeddings.position_embeddings")),
        Rule(r"cls_token", rename("vix.embeddings.cls_token")),
        Rule(P + r"\.0\.norm\.(weight|bias)", rename(L + r".layernorm_before.\2")),
        Rule(P + r"\.1\.norm\.(weight|bias)", rename(L + r".layernorm_after.\2")),
        Rule(P + r"\.1\.fn\.net\.0\.(weight|bias)", rename(L + r".mlp.fc1.\2")),
        Rule(P + r"\.1\.fn\.net\.3\.(weight|bias)", rename(L + r".mlp.fc2.\2")),
        Rule(r"mlp_head\.0\.(weight|bias)", rename(r"vix.layernorm.\1")),
        Rule(r"mlp_head\.1\.(weight|bias)", rename(r"classifier.\1")),
    ]
    A = L + ".attention"
    if arch == "ViN":
        table += [
            Rule(P + r"\.0\.fn\.to_qkv\.weight",
                 split(A + ".q_proj.weight", A + ".k_proj.weight", A + ".v_proj.weight")),
            Rule(P + r"\.0\.fn\.to_out\.0\.(weight|bias)", rename(A + r".o_proj.\2")),
            Rule(P + r"\.0\.fn\.res_conv\.weight", rename(A + ".kernel.residual_conv.weight")),
        ]
    elif arch == "ViP":
        table += [
            Rule(P + r"\.0\.fn\.to_(q|k|v)\.(weight|bias)", rename(A + r".\2_proj.\3")),
            Rule(P + r"\.0\.fn\.to_out\.(weight|bias)", rename(A + r".o_proj.\2")),
            Rule(P + r"\.0\.fn\.fast_attention\.projection_matrix", rename(A + ".kernel.projection_matrix")),
        ]
    elif arch == "ViL":
        table += [
            Rule(P + r"\.0\.fn\.to_(q|k|v)\.weight", rename(A + r".\2_proj.weight")),
            Rule(P + r"\.0\.fn\.proj_(k|v)", rename(A + r".kernel.seq_proj_\2")),
            Rule(P + r"\.0\.fn\.to_out\.(weight|bias)", rename(A + r".o_proj.\2")),
        ]
    return table


# --------------------------------------------------------------------------------------------------------
# Rebuilding the source for the parity check
# --------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _torch_qr_available():
    """vision-xformer's ViP calls `torch.qr` (removed from recent torch) while it draws its features at
    construction; stand in `torch.linalg.qr` for that moment only. The features are then overwritten."""
    if hasattr(torch, "qr"):
        yield
        return
    torch.qr = lambda input, some=True: torch.linalg.qr(input, mode="reduced" if some else "complete")
    try:
        yield
    finally:
        del torch.qr


def build_source_model(arch: str, s: dict, state: dict) -> nn.Module:
    """The vision-xformer model with these weights (the package must be installed)."""
    import vision_xformer

    common = dict(image_size=tuple(s["image_size"]), patch_size=s["patch_size"], num_classes=s["num_classes"],
                  dim=s["dim"], depth=s["depth"], mlp_dim=s["mlp_dim"], pool=s["pool"], channels=s["channels"])
    with _torch_qr_available():
        if arch == "FNet":
            model = vision_xformer.FNet(**common)
        elif arch == "ViN":
            model = vision_xformer.ViN(**common, heads=s["heads"], dim_head=s["dim_head"],
                                       num_landmarks=s["num_landmarks"])
        elif arch == "ViP":
            model = vision_xformer.ViP(**common, heads=s["heads"], dim_head=s["dim_head"])
        else:
            model = vision_xformer.ViL(**common, heads=s["heads"], dim_head=s["dim_head"], k=s["k"],
                                       one_kv_head=s["one_kv_head"], share_kv=s["share_kv"])
    if arch == "ViN" and s["pinv_iterations"] != 6:
        for layer in model.transformer.layers:
            layer[0].fn.pinv_iterations = s["pinv_iterations"]
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise ConversionError(f"The inferred {arch} settings do not rebuild the source: "
                              f"{' '.join(str(error).split())[:400]}") from None
    return model.eval()


# --------------------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------------------


def vision_xformer_source(source, given: dict, id2label, image_mean, image_std) -> Source:
    """A vision-xformer model (instance, state dict or checkpoint path), read and described for the pipeline."""
    reference = source if isinstance(source, nn.Module) else None
    if reference is not None:
        arch, from_model = settings_from_model(source)
        given = {**given, **from_model}
    state = read_state(source, f"vision-xformer checkpoint ({source_label(source)})")
    if reference is None:
        arch = detect_architecture(state)
    settings = infer_settings(state, arch, given)
    config = vix_config(arch, settings, id2label)
    available = reference is not None or importlib.util.find_spec("vision_xformer") is not None

    def run(pixels):  # rebuilt only now: after the strict load, whose errors name the keys in ViX's terms
        return {"logits": (reference or build_source_model(arch, settings, state))(pixels)}

    def notes(config) -> list[str]:
        notes = [f"Compatibility settings reproduce the authors' {arch}; see the configuration above."]
        if settings.get("emb_dropout"):
            notes.append(f"The source's emb_dropout={settings['emb_dropout']} has no separate ViX field; ViX applies "
                         "hidden_dropout_prob after the embeddings (training only).")
        return notes

    return Source(
        name=f"vision-xformer {arch} ({source_label(source)})", state=state, configure=lambda attention_type: config,
        rules=lambda config: rules(arch, settings), native_attention=config.attention_type,
        processor=make_processor(settings["image_size"], image_mean, image_std), reference=f"vision-xformer {arch}",
        run=run if available else None,
        unavailable="vision-xformer is not installed here, so parity with the source was not measured.",
        notes=notes, model=reference,
    )


def convert_vision_xformer(
    source,
    output_dir=None,
    *,
    image_size=None,
    patch_size: int | None = None,
    num_channels: int | None = None,
    num_attention_heads: int | None = None,
    num_landmarks: int | None = None,
    pool: str | None = None,
    id2label: dict | None = None,
    image_mean=PAPER_NORMALIZATION,
    image_std=PAPER_NORMALIZATION,
    images=None,
    atol: float | None = 1e-4,
    overwrite: bool = False,
) -> ConversionResult:
    """A vision-xformer `ViN` / `ViP` / `ViL` / `FNet` (model, state dict, or checkpoint path) -> ViX.

    Checks the logits against the source model on real images (the source itself, or the package's model
    rebuilt from the weights) and refuses to write when they differ by more than `atol`. Writes
    `output_dir` when given.
    """
    given = {key: value for key, value in dict(
        image_size=image_size, patch_size=patch_size, channels=num_channels, heads=num_attention_heads,
        num_landmarks=num_landmarks, pool=pool).items() if value is not None}
    return convert(lambda: vision_xformer_source(source, given, id2label, image_mean, image_std), output_dir,
                   images=images, atol=atol, overwrite=overwrite)


@dataclass
class VisionXformerArguments:
    """What the weights of a vision-xformer model do not show, with the package's defaults."""

    checkpoint: str = field(metadata={"help": "State dict of a vision-xformer ViN/ViP/ViL/FNet (.pt/.pth/.bin via "
                                              "weights_only, or .safetensors)."})
    image_size: list[int] | None = field(default=None, metadata={
        "help": "Image size (one int, or height width); default: from the square patch grid."})
    patch_size: int | None = field(default=None, metadata={"help": "Default: from patch_dim and --num_channels."})
    num_channels: int | None = field(default=None, metadata={"help": "Default 3."})
    num_attention_heads: int | None = field(default=None, metadata={
        "help": "Needed only for a ViL with one_kv_head=False (the weights do not show it)."})
    num_landmarks: int | None = field(default=None, metadata={"help": "ViN landmarks (default 64, the package's)."})
    pool: Literal["cls", "mean"] | None = field(default=None, metadata={
        "help": "The source's pool (default cls; mean is refused)."})
    image_mean: list[float] = field(default_factory=lambda: list(PAPER_NORMALIZATION))
    image_std: list[float] = field(default_factory=lambda: list(PAPER_NORMALIZATION))


def cli_parser():
    return make_parser(VisionXformerArguments, "python -m conversion.from_vision_xformer", __doc__)


def main(argv=None) -> ConversionResult:
    args, common = parse_arguments(cli_parser(), argv)
    size = None if args.image_size is None else (args.image_size * 2)[:2]
    return convert_vision_xformer(
        args.checkpoint, common.output_dir, image_size=size, patch_size=args.patch_size, num_channels=args.num_channels,
        num_attention_heads=args.num_attention_heads, num_landmarks=args.num_landmarks, pool=args.pool,
        image_mean=args.image_mean, image_std=args.image_std, images=common.images, atol=common.atol,
        overwrite=common.overwrite,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
