"""vit-pytorch's CCT (`vit_pytorch/cct.py`, the official CCT code) and PiT (`vit_pytorch/pit.py`) -> ViX CCT / PiT.

A state dict does not show everything these models were built with (CCT's strides, padding, pooling and kind of
positions; the head counts), so the converter takes the keyword arguments the source was built with
(`source_kwargs`, exactly as passed to `vit_pytorch.cct.CCT(...)` / `vit_pytorch.pit.PiT(...)`), builds the
source from them, loads the checkpoint into it strictly (a wrong argument is a clear error), reads the ViX
config off the built source, converts the weights by a rename table, and checks the logits on real images.

The rest is the one pipeline (`conversion.pipeline`): with `attention_type` other than softmax every weight carries
over into the chosen mixer, checked exactly in softmax first; the kernel's own new tensors get their init (Nystrom's
residual conv starts at zero), and the logit drift from the source is measured and reported.

vit-pytorch's package `__init__` imports torchvision; `cct.py` and `pit.py` need only torch and einops, so they
are loaded by file path (as `from_vit_pytorch` loads `vit.py`).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import re

import torch
from torch import nn

from modeling_vix import VixCctConfig, VixPitConfig

from .common import (
    ConversionError,
    ConversionResult,
    Rule,
    make_processor,
    parse_config_overrides,
    read_state,
    rename,
    source_label,
    split,
)
from .pipeline import Source, convert, with_mixer


def load_vit_pytorch_module(name: str):
    """`vit_pytorch.<name>` loaded from its file without running the package `__init__`; None when absent."""
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        module_spec = importlib.util.spec_from_file_location(f"vit_pytorch_{name}_standalone", f"{folder}/{name}.py")
        if module_spec is not None:
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
            return module
    return None


def build_source(architecture: str, source_kwargs: dict, state: dict) -> nn.Module:
    """The vit-pytorch model built from `source_kwargs`, with `state` loaded strictly, in eval mode."""
    module = load_vit_pytorch_module(architecture)
    if module is None:
        raise ConversionError("vit-pytorch is not installed: the CCT / PiT converter builds the source to read its "
                              "settings and check the logits. `pip install --no-deps vit-pytorch einops`.")
    constructor = module.CCT if architecture == "cct" else module.PiT
    kwargs = dict(source_kwargs)
    if architecture == "pit":  # JSON has no tuples; PiT asserts that depth is one
        kwargs = {key: tuple(value) if isinstance(value, list) else value for key, value in kwargs.items()}
    try:
        model = constructor(**kwargs)
    except (TypeError, AssertionError, ValueError) as error:
        raise ConversionError(f"vit-pytorch {constructor.__name__}(**source_kwargs) failed with {source_kwargs}: "
                              f"{type(error).__name__}: {error}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        first = " ".join(str(error).split())[:400]
        raise ConversionError(f"The checkpoint does not fit vit-pytorch {constructor.__name__}(**{source_kwargs}): "
                              f"{first}. Pass the keyword arguments the source was built with "
                              "(--source_kwargs).") from None
    return model.eval()


# --------------------------------------------------------------------------------------------------------
# CCT
# --------------------------------------------------------------------------------------------------------


def cct_config(source: nn.Module, image_size) -> VixCctConfig:
    tokenizer, classifier = source.tokenizer, source.classifier
    convs = [layer[0] for layer in tokenizer.conv_layers]
    pools = [layer[2] for layer in tokenizer.conv_layers]
    first_block = classifier.blocks[0]
    positions = classifier.positional_emb
    kind = "none" if positions is None else ("learned" if positions.requires_grad else "sine")
    max_pool = isinstance(pools[0], nn.MaxPool2d)
    return VixCctConfig(
        image_size=list(image_size), num_channels=convs[0].in_channels, hidden_size=classifier.embedding_dim,
        num_hidden_layers=len(classifier.blocks), num_attention_heads=first_block.self_attn.heads,
        intermediate_size=first_block.linear1.out_features,
        tokenizer_num_layers=len(convs), tokenizer_hidden_channels=convs[0].out_channels if len(convs) > 1 else 64,
        tokenizer_kernel_size=convs[0].kernel_size[0], tokenizer_stride=[conv.stride[0] for conv in convs],
        tokenizer_padding=convs[0].padding[0], tokenizer_conv_bias=convs[0].bias is not None,
        tokenizer_max_pool=max_pool,
        tokenizer_pooling_kernel_size=pools[0].kernel_size if max_pool else 3,
        tokenizer_pooling_stride=pools[0].stride if max_pool else 1,
        tokenizer_pooling_padding=pools[0].padding if max_pool else 1,
        position_embedding_type=kind, pooling="sequence",
        drop_path_rate=float(classifier.blocks[-1].drop_path.drop_prob),
        hidden_dropout_prob=float(classifier.dropout.p),
        attention_probs_dropout_prob=float(first_block.self_attn.attn_drop.p),
        qkv_bias=False, hidden_act="gelu", layer_norm_eps=1e-5, attention_type="softmax",
        num_labels=classifier.fc.out_features,
    )


def cct_rules(config: VixCctConfig) -> list[Rule]:
    L = r"cct.layers.\1"
    table = [
        Rule(r"tokenizer\.conv_layers\.(\d+)\.0\.(weight|bias)",
             rename(r"cct.embeddings.tokenizer.layers.\1.convolution.\2")),
        Rule(r"classifier\.blocks\.(\d+)\.pre_norm\.(weight|bias)", rename(L + r".layernorm_before.\2")),
        Rule(r"classifier\.blocks\.(\d+)\.self_attn\.qkv\.weight",
             split(L + ".attention.q_proj.weight", L + ".attention.k_proj.weight", L + ".attention.v_proj.weight")),
        Rule(r"classifier\.blocks\.(\d+)\.self_attn\.proj\.(weight|bias)", rename(L + r".attention.o_proj.\2")),
        Rule(r"classifier\.blocks\.(\d+)\.norm1\.(weight|bias)", rename(L + r".layernorm_after.\2")),
        Rule(r"classifier\.blocks\.(\d+)\.linear1\.(weight|bias)", rename(L + r".mlp.fc1.\2")),
        Rule(r"classifier\.blocks\.(\d+)\.linear2\.(weight|bias)", rename(L + r".mlp.fc2.\2")),
        Rule(r"classifier\.norm\.(weight|bias)", rename(r"cct.layernorm.\1")),
        Rule(r"classifier\.attention_pool\.(weight|bias)", rename(r"cct.pooler.attention_pool.\1")),
        Rule(r"classifier\.fc\.(weight|bias)", rename(r"classifier.\1")),
    ]
    if config.position_embedding_type == "learned":
        table.append(Rule(r"classifier\.positional_emb", rename("cct.embeddings.position_embeddings")))
    else:  # the fixed sine table is recomputed by ViX (the parity check covers it)
        table.append(Rule(r"classifier\.positional_emb", lambda match, tensor: {}))
    return table


# --------------------------------------------------------------------------------------------------------
# PiT
# --------------------------------------------------------------------------------------------------------


def pit_config(source: nn.Module, source_kwargs: dict) -> VixPitConfig:
    patch_embedding = source.to_patch_embedding
    unfold, linear = patch_embedding[0], patch_embedding[2]
    transformers = [module for module in source.layers if hasattr(module, "layers")]
    attentions = [stage.layers[0][0] for stage in transformers]
    image_size = source_kwargs["image_size"]
    image_size = [image_size, image_size] if isinstance(image_size, int) else list(image_size)
    return VixPitConfig(
        image_size=image_size, num_channels=linear.in_features // unfold.kernel_size**2, patch_size=unfold.kernel_size,
        patch_stride=unfold.stride, hidden_sizes=[stage.layers[0][1].net[1].in_features for stage in transformers],
        depths=[len(stage.layers) for stage in transformers], num_attention_heads=[a.heads for a in attentions],
        head_dim=attentions[0].to_qkv.out_features // 3 // attentions[0].heads,
        intermediate_sizes=[stage.layers[0][1].net[1].out_features for stage in transformers],
        pooling_pointwise_conv=True, position_embedding_type="learned", qkv_bias=False,
        hidden_dropout_prob=float(attentions[0].dropout.p), attention_probs_dropout_prob=float(attentions[0].dropout.p),
        hidden_act="gelu", layer_norm_eps=1e-5, attention_type="softmax", num_labels=source.mlp_head[1].out_features,
    )


def pit_rules(config: VixPitConfig, state: dict) -> list[Rule]:
    channels, patch, width = config.num_channels, config.patch_size, config.hidden_sizes[0]
    # vit-pytorch's layers alternate Transformer (even index 2s) and Pool (odd index 2s + 1) for stage s.
    def stage_of(index: str) -> str:
        return str(int(index) // 2)

    def layer(template: str):
        def handler(match: re.Match, tensor: torch.Tensor):
            stage, block, rest = stage_of(match.group(1)), match.group(2), match.group(3)
            return {template.format(stage=stage, block=block, rest=rest): tensor}
        return handler

    def pooling(template: str):
        def handler(match: re.Match, tensor: torch.Tensor):
            return {template.format(stage=stage_of(match.group(1)), rest=match.group(2)): tensor}
        return handler

    def qkv(match: re.Match, tensor: torch.Tensor):
        stage, block = stage_of(match.group(1)), match.group(2)
        prefix = f"pit.stages.{stage}.layers.{block}.attention"
        query, key, value = tensor.chunk(3, dim=0)
        return {f"{prefix}.q_proj.weight": query, f"{prefix}.k_proj.weight": key, f"{prefix}.v_proj.weight": value}

    S = "pit.stages.{stage}.layers.{block}"
    positions = state["pos_embedding"]
    return [
        Rule(r"to_patch_embedding\.2\.weight",  # Unfold orders a patch (c, p1, p2): the Conv2d weight layout itself
             rename("pit.embeddings.patch_embeddings.weight", lambda t: t.reshape(width, channels, patch, patch))),
        Rule(r"to_patch_embedding\.2\.bias", rename("pit.embeddings.patch_embeddings.bias")),
        # vit-pytorch adds a position to the cls token too; cls + position is one learned vector, folded here.
        Rule(r"cls_token", rename("pit.embeddings.cls_token", lambda t: t + positions[:, :1])),
        Rule(r"pos_embedding", rename("pit.embeddings.position_embeddings", lambda t: t[:, 1:])),
        Rule(r"layers\.(\d+)\.layers\.(\d+)\.0\.norm\.(weight|bias)", layer(S + ".layernorm_before.{rest}")),
        Rule(r"layers\.(\d+)\.layers\.(\d+)\.0\.to_qkv\.weight", qkv),
        Rule(r"layers\.(\d+)\.layers\.(\d+)\.0\.to_out\.0\.(weight|bias)", layer(S + ".attention.o_proj.{rest}")),
        Rule(r"layers\.(\d+)\.layers\.(\d+)\.1\.net\.0\.(weight|bias)", layer(S + ".layernorm_after.{rest}")),
        Rule(r"layers\.(\d+)\.layers\.(\d+)\.1\.net\.1\.(weight|bias)", layer(S + ".mlp.fc1.{rest}")),
        Rule(r"layers\.(\d+)\.layers\.(\d+)\.1\.net\.4\.(weight|bias)", layer(S + ".mlp.fc2.{rest}")),
        Rule(r"layers\.(\d+)\.downsample\.net\.0\.(weight|bias)",
             pooling("pit.stages.{stage}.pooling.depthwise.{rest}")),
        Rule(r"layers\.(\d+)\.downsample\.net\.1\.(weight|bias)",
             pooling("pit.stages.{stage}.pooling.pointwise.{rest}")),
        Rule(r"layers\.(\d+)\.cls_ff\.(weight|bias)", pooling("pit.stages.{stage}.pooling.cls_proj.{rest}")),
        Rule(r"mlp_head\.0\.(weight|bias)", rename(r"pit.layernorm.\1")),
        Rule(r"mlp_head\.1\.(weight|bias)", rename(r"classifier.\1")),
    ]


# --------------------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------------------


def backbone_source(architecture: str, state: dict, source_kwargs: dict, overrides: dict, image_mean, image_std,
                    source_name: str) -> Source:
    """A vit-pytorch CCT or PiT built from `source_kwargs` with `state`, described for the pipeline."""
    source = build_source(architecture, source_kwargs, state)
    if architecture == "cct":
        size = source_kwargs.get("img_size", 224)
        native = cct_config(source, (size, size) if isinstance(size, int) else tuple(size))
        table = cct_rules
    else:
        native = pit_config(source, source_kwargs)
        table = functools.partial(pit_rules, state=state)
    return Source(
        name=source_name, state=state, configure=lambda attention_type: with_mixer(native, attention_type, overrides),
        rules=table, processor=make_processor(native.image_size_hw, image_mean, image_std),
        reference=f"vit-pytorch {architecture.upper()}", run=lambda pixels: {"logits": source(pixels)}, model=source,
    )


def convert_backbone(architecture: str, state: dict, source_kwargs: dict, *, attention_type: str = "softmax",
                     config_overrides: dict | None = None, images=None, image_mean=(0.5, 0.5, 0.5),
                     image_std=(0.5, 0.5, 0.5), atol: float | None = 1e-4, seed: int = 0,
                     source_name: str = "") -> tuple[ConversionResult, torch.Tensor, torch.Tensor]:
    """A vit-pytorch CCT or PiT state dict -> (result, parity pixels, ViX logits on them); nothing written."""
    name = source_name or f"vit-pytorch {architecture.upper()}"
    result = convert(lambda: backbone_source(architecture, dict(state), source_kwargs, dict(config_overrides or {}),
                                             image_mean, image_std, name),
                     attention_type=attention_type, seed=seed, images=images, atol=atol)
    return result, result.check_pixels, result.check_logits


def parse_source_kwargs(text: str | dict | None) -> dict:
    if isinstance(text, dict) or text is None:
        return dict(text or {})
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConversionError(f"--source_kwargs is not valid JSON ({error}); give e.g. "
                              "'{\"img_size\": 32, \"num_layers\": 7}'.") from None
    if not isinstance(kwargs, dict):
        raise ConversionError(f"--source_kwargs must be a JSON object of keyword arguments; got {text!r}.")
    return kwargs


def convert_vit_pytorch_backbone(architecture: str, checkpoint, output_dir=None, *, source_kwargs=None,
                                 attention_type: str = "softmax", config_overrides=None, images=None,
                                 image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), atol: float | None = 1e-4,
                                 seed: int = 0, overwrite: bool = False) -> ConversionResult:
    """A vit-pytorch CCT / PiT checkpoint (state dict file, or dict) -> a ViX folder, checked against the source."""
    kwargs = parse_source_kwargs(source_kwargs)
    overrides = parse_config_overrides(config_overrides)

    def load() -> Source:
        name = f"vit-pytorch {architecture.upper()} ({source_label(checkpoint)})"
        return backbone_source(architecture, read_state(checkpoint, name), kwargs, overrides, image_mean, image_std,
                               name)

    return convert(load, output_dir, attention_type=attention_type, seed=seed, images=images, atol=atol,
                   overwrite=overwrite)


__all__ = ["backbone_source", "build_source", "cct_config", "convert_backbone", "convert_vit_pytorch_backbone",
           "load_vit_pytorch_module", "pit_config"]
