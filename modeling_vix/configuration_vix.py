"""Configs of ViX: the token-mixer settings every backbone shares, and VixConfig for the flat ViT.

`VixMixerConfig` holds what the paper varies and every ViX backbone (ViT, CCT, PiT, ...) means the same way:
`attention_type` and the per-mixer settings (`nystrom_*`, `performer_*`, `linformer_*`, ...). Each backbone's
config subclasses it (one `model_type` per backbone, as transformers does for `cvt` and `levit`) and adds its
own shape fields. The checks run in `validate_architecture`, v5's hook, at construction and at save time.

This module imports no modeling code: what each mixer can do is data (`MIXER_CAPABILITIES`), which the mixer
classes in `mixers_vix.py` declare they match (tested).

Defaults of `VixConfig` are the paper's CIFAR-10 model (Jeevan & Sethi 2021): 32x32 input, patch 1 (1024
patches + cls), hidden 128, depth 4, 4 heads of 32, MLP 256; Nystrom 64 landmarks, 6 pseudo-inverse iterations,
33-tap residual conv; Performer int(d ln d) = 110 features, never redrawn; Linformer k = 64 with shared
key/value projection.

Compatibility settings (only for reproducing the authors' `vision-xformer` code exactly; each departs from the
better default for a stated reason): `nystrom_padding="zeros_front"`, `nystrom_pinv_scale="global"`,
`linformer_one_kv_head=True`, `linformer_values_from_keys=True`, `patch_embedding_norm=True`,
`performer_key_stabilizer="global"`.
"""

from dataclasses import dataclass
from typing import Literal

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig


@dataclass(frozen=True)
class MixerCapabilities:
    """What a token mixer can do; configs read this to refuse impossible combinations before a model exists."""

    returns_attention_weights: bool  # has a real (B, H, N, keys) attention map (with attn_implementation="eager")
    supports_rope: bool  # has queries and keys that RoPE can rotate
    fixed_sequence_length: bool  # owns parameters sized by the token count
    # Adds an additive (heads, queries, keys) bias to its attention logits (LeViT's attention bias); exactly for
    # softmax, through the landmarks (Nystrom) or the sequence projection (Linformer); never for FAVOR+.
    supports_attention_bias: bool


def _capabilities(weights, rope, fixed, bias):
    return MixerCapabilities(
        returns_attention_weights=weights, supports_rope=rope, fixed_sequence_length=fixed,
        supports_attention_bias=bias,
    )


MIXER_CAPABILITIES: dict[str, MixerCapabilities] = {
    "softmax": _capabilities(weights=True, rope=True, fixed=False, bias=True),
    "performer": _capabilities(weights=True, rope=True, fixed=False, bias=False),
    "linformer": _capabilities(weights=True, rope=True, fixed=True, bias=True),
    "nystrom": _capabilities(weights=True, rope=True, fixed=False, bias=True),
    "fnet": _capabilities(weights=False, rope=False, fixed=False, bias=False),
    "mixer": _capabilities(weights=False, rope=False, fixed=True, bias=False),
}
ATTENTION_MIXERS = tuple(name for name, can in MIXER_CAPABILITIES.items() if can.supports_rope)

AttentionType = Literal["softmax", "performer", "linformer", "nystrom", "fnet", "mixer"]
# Activations from transformers' ACT2FN that make sense in a vision MLP.
HiddenAct = Literal["gelu", "gelu_new", "gelu_pytorch_tanh", "quick_gelu", "relu", "silu", "swish", "mish", "hardswish"]

# Settings that exist only to reproduce the authors' code exactly, with their recommended defaults.
COMPATIBILITY_DEFAULTS = {
    "nystrom_padding": "none",
    "nystrom_pinv_scale": "per_head",
    "linformer_one_kv_head": False,
    "linformer_values_from_keys": False,
    "patch_embedding_norm": False,
    "performer_key_stabilizer": "per_head",
}


def require_at_least(config, minimum, *names) -> None:
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ValueError(f"{name} must be at least {minimum}; got {value}.")


def image_hw(image_size) -> tuple[int, int]:
    """`image_size` (an int or [height, width]) as (height, width)."""
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def check_image_size(image_size) -> None:
    if isinstance(image_size, list) and len(image_size) != 2:
        raise ValueError(f"image_size must be an int or [height, width]; got {image_size}.")
    if min(image_hw(image_size)) < 1:
        raise ValueError(f"image_size must be positive; got {image_size}.")


def conv_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of a convolution or pooling along one axis (floor mode)."""
    return (size + 2 * padding - kernel) // stride + 1


def require_positive_sizes(name: str, values) -> None:
    if not values or any(value < 1 for value in values):
        raise ValueError(f"{name} must be a non-empty list of positive integers; got {list(values)}.")


@strict
class VixMixerConfig(PreTrainedConfig):
    r"""
    The token-mixer settings shared by every ViX backbone (not a model of its own).

    attention_type (`str`, defaults to `"softmax"`):
        Token mixer: `softmax` (ViT), `performer` (ViP), `linformer` (ViL), `nystrom` (ViN), `fnet`, `mixer`.
    hidden_act (`str`, `"gelu"`), layer_norm_eps (`float`, 1e-5), initializer_range (`float`, 0.02),
    hidden_dropout_prob (`float`, 0.0), attention_probs_dropout_prob (`float`, 0.0), qkv_bias (`bool`, False):
        As in transformers' ViT.
    rope_theta (`float`, defaults to 10000.0): RoPE base, where a backbone takes rotary positions.
    nystrom_num_landmarks (`int`, 64), nystrom_pinv_iterations (`int`, 6),
    nystrom_residual_conv_kernel (`int`, 33; 0 disables the depthwise conv on V):
        Nystromformer settings.
    nystrom_padding (`str`, `"none"`):
        `none`: when the landmark count does not divide the token count, landmarks average runs of unequal
        length, with no padding. `zeros_front` (compatibility): prepend zero tokens as the official code does;
        they enter the landmarks and the softmaxes.
    nystrom_pinv_scale (`str`, `"per_head"`):
        Scale of the pseudo-inverse's initial guess, per matrix (`per_head`), or over the whole batch
        (`global`, compatibility: then a sample's output depends on its batch).
    performer_num_features (`int`, *optional*): random features; default int(d ln d) for head dim d (110 at 32).
    performer_kernel (`str`, `"softmax"`): `softmax` (FAVOR+ positive features) or `relu`.
    performer_redraw_interval (`int`, 0): redraw the features every that many training calls (0 = never).
    performer_key_stabilizer (`str`, `"per_head"`):
        The constant subtracted from the key-feature logits before exp(): one per sample and head, or one over
        the whole batch (`global`, compatibility with the performer-pytorch 1.0 copy in the authors' ViP; it
        cancels in the normalisation except through FAVOR+'s +1e-4, so a sample then depends on its batch).
    linformer_k (`int`, 64): projected sequence length.
    linformer_share_kv (`bool`, True): one sequence projection for keys and values (E = F).
    linformer_one_kv_head (`bool`, False; compatibility): one key/value head shared by all heads.
    linformer_values_from_keys (`bool`, False; compatibility): V = K (no `v_proj`), as in the `linformer` package.
    mixer_token_expansion (`float`, 1.0): hidden size of the token-mixing MLP, relative to the token count.
    """

    attention_type: AttentionType = "softmax"
    hidden_act: HiddenAct = "gelu"
    hidden_dropout_prob: float | int = 0.0
    attention_probs_dropout_prob: float | int = 0.0
    layer_norm_eps: float | int = 1e-5
    qkv_bias: bool = False
    initializer_range: float | int = 0.02
    rope_theta: float | int = 10000.0

    nystrom_num_landmarks: int = 64
    nystrom_pinv_iterations: int = 6
    nystrom_residual_conv_kernel: int = 33
    nystrom_padding: Literal["none", "zeros_front"] = "none"
    nystrom_pinv_scale: Literal["per_head", "global"] = "per_head"

    performer_num_features: int | None = None
    performer_kernel: Literal["softmax", "relu"] = "softmax"
    performer_redraw_interval: int = 0
    performer_key_stabilizer: Literal["per_head", "global"] = "per_head"

    linformer_k: int = 64
    linformer_share_kv: bool = True
    linformer_one_kv_head: bool = False
    linformer_values_from_keys: bool = False

    mixer_token_expansion: float | int = 1.0

    # Fields a backbone takes as a sequence (its defaults are tuples): kept as lists, as config.json gives them
    # back, so that a config equals its reload. An int (e.g. image_size 32) or None stays as it is.
    list_fields = ("image_size",)

    def __post_init__(self, **kwargs):
        for name in self.list_fields:
            if isinstance(getattr(self, name), (list, tuple)):
                setattr(self, name, list(getattr(self, name)))
        # The base config turns num_labels into an id2label of range(num_labels), which is empty for -1: check first.
        if isinstance(kwargs.get("num_labels"), int) and kwargs["num_labels"] < 0:
            raise ValueError(
                f"num_labels must be at least 0 (0 = no classifier, features out); got {kwargs['num_labels']}."
            )
        super().__post_init__(**kwargs)
        # Construction raises the checks' own ValueError; strict's `validate()` (run next, and at save time)
        # would wrap it in its StrictDataclassClassValidationError, which is not a ValueError.
        self.validate_architecture()

    @property
    def image_size_hw(self) -> tuple[int, int]:
        """`image_size` (every backbone has one) as (height, width)."""
        return image_hw(self.image_size)

    @property
    def mixer_capabilities(self) -> MixerCapabilities:
        return MIXER_CAPABILITIES[self.attention_type]

    def validate_architecture(self):
        """Values the mixers can't use, as a ValueError that says what is allowed."""
        super().validate_architecture()
        require_at_least(self, 1, "nystrom_num_landmarks", "nystrom_pinv_iterations", "linformer_k",
                         "performer_num_features")
        if not 0 <= self.hidden_dropout_prob < 1 or not 0 <= self.attention_probs_dropout_prob < 1:
            raise ValueError("Dropout probabilities must lie in [0, 1).")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"layer_norm_eps must be positive (it keeps LayerNorm finite); got {self.layer_norm_eps}.")
        if not self.initializer_range >= 0:
            raise ValueError(f"initializer_range is a standard deviation, so at least 0; got {self.initializer_range}.")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta is the RoPE frequency base and must be positive; got {self.rope_theta}.")
        if self.num_labels < 0:
            raise ValueError(f"num_labels must be at least 0 (0 = no classifier, features out); got {self.num_labels}.")
        if self.nystrom_residual_conv_kernel < 0 or (
            self.nystrom_residual_conv_kernel and self.nystrom_residual_conv_kernel % 2 == 0
        ):
            raise ValueError(
                f"nystrom_residual_conv_kernel must be odd (to keep the token count) or 0 to disable it; "
                f"got {self.nystrom_residual_conv_kernel}."
            )
        if self.performer_redraw_interval < 0:
            raise ValueError("performer_redraw_interval must be >= 0 (0 = never redraw).")
        if self.mixer_token_expansion <= 0:
            raise ValueError(f"mixer_token_expansion must be positive; got {self.mixer_token_expansion}.")

    def require_attention_with_queries_and_keys(self, backbone: str, why: str) -> None:
        """For backbones whose attention is more than token mixing (CvT's conv projections, LeViT's attention bias
        and shrink attention): only the attention mixers, and none of the ViT-only compatibility settings."""
        if self.attention_type not in ATTENTION_MIXERS:
            raise ValueError(
                f"{backbone} needs an attention mixer ({', '.join(ATTENTION_MIXERS)}): {why}; "
                f"attention_type={self.attention_type!r} has no queries, keys or values."
            )
        changed = [name for name in ("nystrom_padding", "linformer_one_kv_head", "linformer_values_from_keys")
                   if getattr(self, name) != COMPATIBILITY_DEFAULTS[name]]
        if changed:
            raise ValueError(
                f"{', '.join(changed)} reproduce the authors' ViT code only; {backbone} keeps their defaults "
                f"({', '.join(f'{name}={COMPATIBILITY_DEFAULTS[name]!r}' for name in changed)})."
            )

    def check_rope(self, position_embedding_type: str, head_dims) -> None:
        """RoPE needs queries and keys, and pairs (1D) or quadruples (2D) of channels in every head."""
        if not position_embedding_type.startswith("rope"):
            return
        if not self.mixer_capabilities.supports_rope:
            raise ValueError(
                f"attention_type={self.attention_type!r} has no queries or keys, so RoPE cannot be applied; use "
                f"position_embedding_type='learned' or 'none', or an attention mixer ({', '.join(ATTENTION_MIXERS)})."
            )
        multiple, what = (2, "even") if position_embedding_type == "rope_1d" else (4, "a multiple of 4")
        for head_dim in head_dims:
            if head_dim % multiple:
                pairs = "pairs of channels" if multiple == 2 else "channel pairs along rows and columns"
                raise ValueError(
                    f"{position_embedding_type} rotates {pairs}: the head dim ({head_dim}) must be {what}."
                )


@strict
class VixConfig(VixMixerConfig):
    r"""
    Configuration of a ViX model: a ViT whose token mixer, patch embedding and positions are chosen by config
    strings. Field names follow HF's ViTConfig where the idea is the same. Beyond them and the mixer settings
    of `VixMixerConfig`:

    embedding_type (`str`, defaults to `"linear"`):
        `linear` patch projection, or `conv`: the paper's 3-conv "hybrid" stem.
    position_embedding_type (`str`, defaults to `"learned"`):
        `learned` (added), `rope_1d` (the paper's RoPE over raster order), `rope_2d` (axial), or `none`.
    pooling (`str`, defaults to `"cls"`):
        `cls` classifies from a cls token; `mean` has no cls token and averages the patch tokens.
    use_distillation_token (`bool`, defaults to False):
        DeiT's distillation token after the cls token (needs pooling="cls"). Set by the DeiT converter.
    use_distillation_head (`bool`, defaults to False):
        With the distillation token: classify with the mean of a cls head and a head on the distillation token,
        as DeiT-with-teacher does at inference.
    head_dim (`int`, *optional*):
        Channels per attention head; defaults to `hidden_size // num_attention_heads`.
    conv_stem_channels (`list[int]`, defaults to `[32, 64]`):
        Channels of the conv stem before its last conv (which outputs `hidden_size`).
    conv_stem_activation (`str`, defaults to `"none"`):
        Activation after each conv of the stem but the last: `none` (the paper's stem, which is then linear as a
        whole), `relu` or `gelu`.
    conv_stem_downsampling (`str`, defaults to `"last_conv"`):
        `last_conv`: the last conv has stride `patch_size` (the paper's stem at patch 1). `max_pool`: every conv
        has stride 1 and is followed by a 3x3 stride-2 max pool, as in CCT's conv tokenizer; then `patch_size`
        must be 2 ** (number of stem convs), e.g. 4 with `conv_stem_channels=[32]`.
    patch_embedding_norm (`bool`, defaults to False; compatibility):
        LayerNorm before and after the linear patch projection, as in the authors' `vision-xformer` package.

    Example:

    ```python
    >>> from modeling_vix import VixConfig, VixForImageClassification
    >>> config = VixConfig(attention_type="nystrom", embedding_type="conv", position_embedding_type="rope_1d")
    >>> model = VixForImageClassification(config)
    ```
    """

    model_type = "vix"

    image_size: int | list[int] | tuple[int, int] = 32
    patch_size: int = 1
    num_channels: int = 3
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 256
    head_dim: int | None = None

    embedding_type: Literal["linear", "conv"] = "linear"
    position_embedding_type: Literal["learned", "rope_1d", "rope_2d", "none"] = "learned"
    pooling: Literal["cls", "mean"] = "cls"
    use_distillation_token: bool = False
    use_distillation_head: bool = False

    conv_stem_channels: list[int] | tuple[int, ...] = (32, 64)
    conv_stem_activation: Literal["none", "relu", "gelu"] = "none"
    conv_stem_downsampling: Literal["last_conv", "max_pool"] = "last_conv"
    patch_embedding_norm: bool = False

    list_fields = ("image_size", "conv_stem_channels")

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def grid_size(self) -> tuple[int, int]:
        height, width = self.image_size_hw
        return height // self.patch_size, width // self.patch_size

    @property
    def num_prefix_tokens(self) -> int:
        return int(self.pooling == "cls") + int(self.use_distillation_token)

    @property
    def num_tokens(self) -> int:
        """Tokens the mixers see at the configured image size: patches plus prefix tokens (cls, distillation)."""
        height, width = self.grid_size
        return height * width + self.num_prefix_tokens

    def validate_architecture(self):
        """Raise ValueError for an impossible value or combination, saying what to do instead."""
        super().validate_architecture()
        check_image_size(self.image_size)
        require_at_least(self, 1, "patch_size", "num_channels", "hidden_size", "num_hidden_layers",
                         "num_attention_heads", "intermediate_size", "head_dim")
        height, width = self.image_size_hw
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image_size {height}x{width} is not divisible by patch_size {self.patch_size}; "
                "choose a patch size that divides both sides."
            )
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads}), or set head_dim explicitly."
            )
        if self.use_distillation_token and self.pooling != "cls":
            raise ValueError(
                "use_distillation_token (DeiT) needs pooling='cls': the distillation token sits after cls."
            )
        if self.use_distillation_head and not self.use_distillation_token:
            raise ValueError(
                "use_distillation_head classifies from the distillation token: set use_distillation_token=True."
            )
        if self.patch_embedding_norm and self.embedding_type != "linear":
            raise ValueError("patch_embedding_norm applies to the linear patch embedding; use embedding_type='linear'.")
        if any(channels < 1 for channels in self.conv_stem_channels):
            raise ValueError(f"conv_stem_channels must be positive; got {self.conv_stem_channels}.")
        if self.embedding_type != "conv" and (
            self.conv_stem_activation != "none" or self.conv_stem_downsampling != "last_conv"
        ):
            raise ValueError(
                "conv_stem_activation and conv_stem_downsampling shape the conv stem; set embedding_type='conv' or "
                "leave them at their defaults ('none', 'last_conv')."
            )
        num_stem_convs = len(self.conv_stem_channels) + 1
        if self.conv_stem_downsampling == "max_pool" and self.patch_size != 2**num_stem_convs:
            raise ValueError(
                f"conv_stem_downsampling='max_pool' halves the grid after each of the {num_stem_convs} stem convs, so "
                f"patch_size must be {2**num_stem_convs}; got {self.patch_size}. Change patch_size or the number of "
                "conv_stem_channels."
            )
        if self.nystrom_padding == "zeros_front" and self.qkv_bias:
            raise ValueError(
                "nystrom_padding='zeros_front' reproduces the official ViN, whose q/k/v projections have no bias (its "
                "zero tokens project to zero); set qkv_bias=False or nystrom_padding='none'."
            )
        self.check_rope(self.position_embedding_type, [self.attention_head_dim])


__all__ = ["MIXER_CAPABILITIES", "MixerCapabilities", "VixConfig", "VixMixerConfig"]
