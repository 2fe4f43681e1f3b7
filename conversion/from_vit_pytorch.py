"""Convert lucidrains' `vit-pytorch` ViT, CCT or PiT (the code base the paper's models were built on) into ViX.

    python -m conversion.from_vit_pytorch --checkpoint vit.pt --num_attention_heads 8 --output_dir vix-vit
    python -m conversion.from_vit_pytorch --architecture cct --checkpoint cct.pt --output_dir vix-cct \
        --source_kwargs '{"img_size": 32, "embedding_dim": 128, "n_conv_layers": 2, "kernel_size": 3,
                          "num_layers": 4, "num_heads": 4, "mlp_ratio": 2, "num_classes": 10,
                          "positional_embedding": "learnable"}' [--attention_type nystrom]

CCT and PiT (`--architecture cct|pit`): `--source_kwargs` is the JSON of the keyword arguments the source was
built with (`vit_pytorch.cct.CCT(...)`, `vit_pytorch.pit.PiT(...)`); the converter builds the source from them,
loads the checkpoint into it strictly and checks the logits (conversion/vit_pytorch_backbones.py).

Every architecture: `--attention_type performer|linformer|nystrom` carries every weight into another mixer (checked
exactly in softmax first); the mixer's own new tensors get their init (`--seed`, settings in `--config_overrides`),
Nystrom's residual conv starts at zero, and the logit drift from the source is measured and reported.

ViT (the default architecture):

Supported: the layout of vit-pytorch 1.x (`vit_pytorch/vit.py`: LayerNorm inside `Attention` and
`FeedForward`, a final `transformer.norm`, `mlp_head` a single Linear), with or without the LayerNorms
around the patch Linear (`patch_embedding_norm`), with a cls token (`pool="cls"`) or without one (1.26+:
`pool="mean"` has no cls token and averages the patch tokens after the final norm, exactly ViX's
`pooling="mean"`). Refused, with a message: the pre-1.0 `PreNorm` layout, and `pool="mean"` of versions that
keep a cls token and average it in (ViX's mean pooling has no cls token).

The weights show everything but the head count: a state dict needs `--num_attention_heads` (or
`--head_dim`); a model instance gives it. When a ViT has one head as wide as the model (`project_out`
False, no `to_out`), the ViX output projection is set to the identity.

The parity check rebuilds the source with the installed vit-pytorch. Its package `__init__` imports modules
that import torchvision (e.g. `dino`), which would pull a multi-GB CUDA torch here; so `vit_pytorch/vit.py`
(torch and einops only) is loaded by file path without executing the package `__init__`
(`load_vit_pytorch_vit`). CI pins vit-pytorch 1.26.11 installed with `--no-deps`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from torch import nn

from modeling_vix import VixConfig

from .common import (
    ConversionError,
    ConversionResult,
    Rule,
    make_parser,
    make_processor,
    parse_arguments,
    parse_config_overrides,
    patch_linear_to_conv,
    patch_vector_to_unfold_order,
    read_state,
    rename,
    run_cli,
    source_label,
    split,
    square_side,
)
from .pipeline import Source, convert, with_mixer
from .vit_pytorch_backbones import convert_vit_pytorch_backbone, load_vit_pytorch_module


DEFAULT_NORMALIZATION = (0.5, 0.5, 0.5)


def load_vit_pytorch_vit():
    """`vit_pytorch.vit` loaded from its file, without running `vit_pytorch/__init__.py` (which imports
    torchvision through `dino`/`mae`). None when vit-pytorch is not installed."""
    return load_vit_pytorch_module("vit")


def settings_from_model(model: nn.Module) -> dict:
    if type(model).__name__ != "ViT" or not hasattr(model, "transformer"):
        raise ConversionError(f"Unsupported source architecture {type(model).__name__!r}: this converter takes "
                              "vit-pytorch's `ViT` (vit_pytorch/vit.py).")
    attention = model.transformer.layers[0][0]
    if not hasattr(attention, "heads"):
        raise ConversionError("Unsupported vit-pytorch layout (pre-1.0 `PreNorm` wrappers); use vit-pytorch >= 1.0.")
    feed_forward = model.transformer.layers[0][1]
    return {"heads": attention.heads, "pool": model.pool, "dropout": float(feed_forward.net[3].p),
            "emb_dropout": float(model.dropout.p)}


def infer_settings(state: dict, given: dict) -> dict:
    s = dict(given)
    if any(re.fullmatch(r"transformer\.layers\.\d+\.0\.fn\..*", key) for key in state):
        raise ConversionError("Unsupported vit-pytorch layout: pre-1.0 `PreNorm` (`...0.fn.to_qkv`) checkpoints are "
                              "not supported; this converter reads the vit-pytorch 1.x layout.")
    if "transformer.norm.weight" not in state or "transformer.layers.0.0.to_qkv.weight" not in state:
        raise ConversionError("Not a vit-pytorch 1.x ViT state dict: expected `transformer.layers.N.0.to_qkv.weight` "
                              f"and `transformer.norm.weight`; first keys: {list(state)[:6]}.")
    s["patch_norm"] = state["to_patch_embedding.1.weight"].ndim == 1
    linear = "to_patch_embedding.2" if s["patch_norm"] else "to_patch_embedding.1"
    s["linear"] = linear
    dim, patch_dim = state[f"{linear}.weight"].shape
    channels = s.get("channels") or 3
    patch = s.get("patch_size") or square_side(patch_dim // channels, "patch_dim / channels")
    if channels * patch * patch != patch_dim:
        raise ConversionError(f"patch_dim {patch_dim} != channels {channels} x patch {patch}^2.")
    cls_tokens = state["cls_token"].reshape(-1, dim).shape[0]
    num_patches = state["pos_embedding"].reshape(-1, dim).shape[0] - cls_tokens
    image_size = s.get("image_size")
    if image_size is None:
        side = square_side(num_patches, "number of patches") * patch
        image_size = (side, side)
    image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if (image_size[0] // patch) * (image_size[1] // patch) != num_patches:
        raise ConversionError(
            f"image_size {image_size} with patch {patch} does not give the checkpoint's {num_patches} patches."
        )
    pool = s.get("pool") or ("cls" if cls_tokens else "mean")
    if pool == "mean" and cls_tokens:
        raise ConversionError("pool='mean' with a cls token averages the cls token in, which ViX's mean pooling "
                              "(no cls token) cannot reproduce; convert a pool='cls' model, or a vit-pytorch >= 1.26 "
                              "mean model.")
    if pool == "cls" and not cls_tokens:
        raise ConversionError("pool='cls' but the checkpoint has no cls token.")
    inner = state["transformer.layers.0.0.to_qkv.weight"].shape[0] // 3
    heads, head_dim = s.get("heads"), s.get("head_dim")
    if heads is None and head_dim is None:
        raise ConversionError("The weights do not show the head count of a vit-pytorch ViT: pass num_attention_heads "
                              "(--num_attention_heads) or head_dim (--head_dim).")
    heads = heads or inner // head_dim
    if inner % heads or (head_dim is not None and head_dim * heads != inner):
        raise ConversionError(f"heads={heads}, head_dim={head_dim} do not match the attention width {inner}.")
    depth = len({m.group(1) for key in state if (m := re.match(r"transformer\.layers\.(\d+)\.", key))})
    s.update(channels=channels, patch_size=patch, image_size=image_size, dim=dim, depth=depth, heads=heads,
             dim_head=inner // heads, pool=pool, cls_tokens=cls_tokens,
             mlp_dim=state["transformer.layers.0.1.net.1.weight"].shape[0],
             num_classes=state["mlp_head.weight"].shape[0] if "mlp_head.weight" in state else 0)
    if not s["num_classes"]:
        raise ConversionError("This ViT has no classification head (num_classes=0); ViX converts classifiers.")
    return s


def vix_config(s: dict, id2label=None) -> VixConfig:
    options = dict(
        image_size=list(s["image_size"]), patch_size=s["patch_size"], num_channels=s["channels"], hidden_size=s["dim"],
        num_hidden_layers=s["depth"], num_attention_heads=s["heads"], head_dim=s["dim_head"],
        intermediate_size=s["mlp_dim"], hidden_act="gelu", layer_norm_eps=1e-5, qkv_bias=False,
        hidden_dropout_prob=s.get("dropout", 0.0), attention_probs_dropout_prob=s.get("dropout", 0.0),
        num_labels=s["num_classes"], attention_type="softmax", embedding_type="linear",
        position_embedding_type="learned", pooling=s["pool"], patch_embedding_norm=s["patch_norm"],
    )
    if id2label:
        options["id2label"] = id2label
    return VixConfig(**options)


def rules(s: dict) -> list[Rule]:
    c, p, dim = s["channels"], s["patch_size"], s["dim"]
    L = r"vix.layers.\1"
    table = [
        Rule(re.escape(s["linear"]) + r"\.weight",
             rename("vix.embeddings.patch_embeddings.projection.weight", lambda t: patch_linear_to_conv(t, c, p))),
        Rule(re.escape(s["linear"]) + r"\.bias", rename("vix.embeddings.patch_embeddings.projection.bias")),
        Rule(r"pos_embedding", rename("vix.embeddings.position_embeddings", lambda t: t.reshape(1, -1, dim))),
        Rule(r"transformer\.layers\.(\d+)\.0\.norm\.(weight|bias)", rename(L + r".layernorm_before.\2")),
        Rule(r"transformer\.layers\.(\d+)\.0\.to_qkv\.weight",
             split(L + ".attention.q_proj.weight", L + ".attention.k_proj.weight", L + ".attention.v_proj.weight")),
        Rule(r"transformer\.layers\.(\d+)\.0\.to_out\.0\.(weight|bias)", rename(L + r".attention.o_proj.\2")),
        Rule(r"transformer\.layers\.(\d+)\.1\.net\.0\.(weight|bias)", rename(L + r".layernorm_after.\2")),
        Rule(r"transformer\.layers\.(\d+)\.1\.net\.1\.(weight|bias)", rename(L + r".mlp.fc1.\2")),
        Rule(r"transformer\.layers\.(\d+)\.1\.net\.4\.(weight|bias)", rename(L + r".mlp.fc2.\2")),
        Rule(r"transformer\.norm\.(weight|bias)", rename(r"vix.layernorm.\1")),
        Rule(r"mlp_head\.(weight|bias)", rename(r"classifier.\1")),
    ]
    if s["cls_tokens"]:
        table.append(Rule(r"cls_token", rename("vix.embeddings.cls_token", lambda t: t.reshape(1, 1, dim))))
    else:  # vit-pytorch >= 1.26 keeps an empty (0, dim) parameter when pool="mean"
        table.append(Rule(r"cls_token", lambda match, tensor: {} if tensor.numel() == 0 else {"cls_token": tensor}))
    if s["patch_norm"]:
        table += [
            Rule(r"to_patch_embedding\.1\.(weight|bias)",
                 rename(r"vix.embeddings.patch_embeddings.norm_before.\1",
                        lambda t: patch_vector_to_unfold_order(t, c, p))),
            Rule(r"to_patch_embedding\.3\.(weight|bias)", rename(r"vix.embeddings.patch_embeddings.norm_after.\1")),
        ]
    return table


def build_source_model(s: dict, state: dict) -> tuple[nn.Module | None, str]:
    vit_module = load_vit_pytorch_vit()
    if vit_module is None:
        return None, "vit-pytorch is not installed here, so parity with the source was not measured."
    model = vit_module.ViT(image_size=tuple(s["image_size"]), patch_size=s["patch_size"], num_classes=s["num_classes"],
                           dim=s["dim"], depth=s["depth"], heads=s["heads"], mlp_dim=s["mlp_dim"], pool=s["pool"],
                           channels=s["channels"], dim_head=s["dim_head"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        return None, f"The installed vit-pytorch has another layout than the checkpoint ({first}); parity not measured."
    return model.eval(), ""


def vit_source(source, given: dict, id2label, image_mean, image_std, overrides: dict) -> Source:
    """A vit-pytorch ViT (model, state dict or checkpoint path), read and described for the pipeline."""
    source_name = f"vit-pytorch ViT ({source_label(source)})"
    reference, note = (source if isinstance(source, nn.Module) else None), ""
    if reference is not None:
        given = {**given, **settings_from_model(source)}
    state = read_state(source, source_name)
    settings = infer_settings(state, given)
    native = vix_config(settings, id2label)
    if reference is None:
        reference, note = build_source_model(settings, state)
    return Source(
        name=source_name, state=state, configure=lambda attention_type: with_mixer(native, attention_type, overrides),
        rules=lambda config: rules(settings), processor=make_processor(settings["image_size"], image_mean, image_std),
        reference="vit-pytorch ViT", run=None if reference is None else lambda pixels: {"logits": reference(pixels)},
        unavailable=note, model=reference,
    )


def convert_vit_pytorch(
    source,
    output_dir=None,
    *,
    attention_type: str = "softmax",
    config_overrides: dict | str | None = None,
    image_size=None,
    patch_size: int | None = None,
    num_channels: int | None = None,
    num_attention_heads: int | None = None,
    head_dim: int | None = None,
    pool: str | None = None,
    id2label: dict | None = None,
    image_mean=DEFAULT_NORMALIZATION,
    image_std=DEFAULT_NORMALIZATION,
    images=None,
    seed: int = 0,
    atol: float | None = 1e-4,
    overwrite: bool = False,
) -> ConversionResult:
    """A vit-pytorch `ViT` (model, state dict, or checkpoint path) -> ViX with `attention_type`, its softmax logits
    checked against the source's. `config_overrides`: mixer settings, a dict or `"key=value,key=value"`."""
    given = {key: value for key, value in dict(
        image_size=image_size, patch_size=patch_size, channels=num_channels, heads=num_attention_heads,
        head_dim=head_dim, pool=pool).items() if value is not None}
    overrides = parse_config_overrides(config_overrides)
    return convert(lambda: vit_source(source, given, id2label, image_mean, image_std, overrides), output_dir,
                   attention_type=attention_type, seed=seed, images=images, atol=atol, overwrite=overwrite)


@dataclass
class VitPytorchArguments:
    """What a vit-pytorch state dict does not show (the head count, a CCT's or PiT's build arguments)."""

    checkpoint: str = field(metadata={"help": "State dict of a vit-pytorch ViT, CCT or PiT (.pt/.pth via "
                                              "weights_only, or .safetensors)."})
    architecture: Literal["vit", "cct", "pit"] = field(default="vit", metadata={
        "help": "vit (vit_pytorch/vit.py), cct (vit_pytorch/cct.py) or pit (vit_pytorch/pit.py)."})
    source_kwargs: str | None = field(default=None, metadata={
        "help": "CCT / PiT: JSON of the keyword arguments the source was built with, e.g. '{\"img_size\": 32}'."})
    attention_type: str = field(default="softmax", metadata={
        "help": "softmax (exact), or performer|linformer|nystrom (every projection carries over)."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "Mixer settings for --attention_type, 'key=value,key=value' (as training's --config_overrides)."})
    seed: int = field(default=0, metadata={"help": "Seed for the new mixer's own tensors."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "The source's heads (or give --head_dim)."})
    head_dim: int | None = field(default=None, metadata={"help": "The source's dim_head (vit-pytorch default 64)."})
    image_size: list[int] | None = field(default=None, metadata={
        "help": "One int, or height width. Default: from the square patch grid."})
    patch_size: int | None = None
    num_channels: int | None = field(default=None, metadata={"help": "Default 3."})
    pool: Literal["cls", "mean"] | None = field(default=None, metadata={
        "help": "Default: cls when a cls token is stored."})
    image_mean: list[float] = field(default_factory=lambda: list(DEFAULT_NORMALIZATION))
    image_std: list[float] = field(default_factory=lambda: list(DEFAULT_NORMALIZATION))


def cli_parser():
    return make_parser(VitPytorchArguments, "python -m conversion.from_vit_pytorch", __doc__)


def main(argv=None) -> ConversionResult:
    args, common = parse_arguments(cli_parser(), argv)
    if args.architecture != "vit":
        return convert_vit_pytorch_backbone(
            args.architecture, args.checkpoint, common.output_dir, source_kwargs=args.source_kwargs,
            attention_type=args.attention_type, config_overrides=args.config_overrides, images=common.images,
            image_mean=args.image_mean, image_std=args.image_std, atol=common.atol, seed=args.seed,
            overwrite=common.overwrite,
        )
    if args.source_kwargs:
        raise ConversionError("--source_kwargs applies to --architecture cct|pit; a vit-pytorch ViT's settings come "
                              "from its weights and --num_attention_heads / --head_dim.")
    size = None if args.image_size is None else (args.image_size * 2)[:2]
    return convert_vit_pytorch(
        args.checkpoint, common.output_dir, attention_type=args.attention_type, config_overrides=args.config_overrides,
        image_size=size, patch_size=args.patch_size, num_channels=args.num_channels,
        num_attention_heads=args.num_attention_heads, head_dim=args.head_dim, pool=args.pool,
        image_mean=args.image_mean, image_std=args.image_std, images=common.images, seed=args.seed, atol=common.atol,
        overwrite=common.overwrite,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
