"""Embeddings of ViX: pixels -> tokens (linear patches or the paper's conv stem), cls token, positions.

Positions are either added to the tokens here (`learned`) or returned as RoPE tables `(cos, sin)` that
the mixers apply to queries and keys (`rope_1d`, `rope_2d`).
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import initialization as init


def check_image_batch(pixel_values: torch.Tensor, num_channels: int) -> None:
    """A clear error for what every backbone refuses: not (B, C, H, W), an empty batch, the wrong channel count."""
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values must have shape (batch, channels, height, width); got shape {tuple(pixel_values.shape)}. "
            "Use VixImageProcessor to turn images into pixel_values."
        )
    batch, channels = pixel_values.shape[:2]
    if batch == 0:
        raise ValueError("pixel_values is an empty batch (0 images); pass at least one image.")
    if channels != num_channels:
        raise ValueError(
            f"pixel_values have {channels} channels but the model expects {num_channels} "
            "(config.num_channels). Convert images to RGB (VixImageProcessor does) or set num_channels."
        )


class VixPatchEmbeddings(nn.Module):
    """`linear`: non-overlapping p x p patches, each projected linearly (a strided conv, as in HF ViT).

    With `patch_embedding_norm` (compatibility with the authors' `vision-xformer` package) a LayerNorm over
    each patch's pixels comes before the projection and one over the hidden size after it.
    """

    def __init__(self, config):
        super().__init__()
        p = config.patch_size
        self.patch_size = p
        self.projection = nn.Conv2d(config.num_channels, config.hidden_size, kernel_size=p, stride=p)
        self.norm_before = self.norm_after = None
        if config.patch_embedding_norm:
            self.norm_before = nn.LayerNorm(config.num_channels * p * p, eps=config.layer_norm_eps)
            self.norm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if self.norm_before is None:
            return self.projection(pixel_values)  # (B, C, h, w)
        height, width = (size // self.patch_size for size in pixel_values.shape[-2:])
        patches = F.unfold(pixel_values, self.patch_size, stride=self.patch_size)  # (B, C_in*p*p, h*w), (c, p1, p2)
        weight = self.projection.weight.flatten(1)  # (C, C_in*p*p), same (c, p1, p2) order
        tokens = self.norm_after(F.linear(self.norm_before(patches.transpose(1, 2)), weight, self.projection.bias))
        return tokens.transpose(1, 2).unflatten(-1, (height, width))  # (B, C, h, w)


class VixConvStemEmbeddings(nn.Module):
    """`conv`: the paper's hybrid stem, 3x3 convs 3 -> 32 -> 64 -> hidden, no activation in between.

    With `conv_stem_downsampling="last_conv"` all convs have stride 1 except the last, which has stride
    `patch_size` (kernel max(3, p)), so that patch_size = 1 is exactly the paper's stem and larger patch sizes
    give fewer tokens. With `"max_pool"` each conv is followed by a 3x3 stride-2 max pool (CCT's tokenizer).
    `conv_stem_activation` puts an activation after every conv but the last, which projects to the tokens.
    """

    def __init__(self, config):
        super().__init__()
        p = config.patch_size
        channels = [config.num_channels, *config.conv_stem_channels, config.hidden_size]
        pooled = config.conv_stem_downsampling == "max_pool"
        layers = []
        for index, (c_in, c_out) in enumerate(zip(channels, channels[1:], strict=False)):
            is_last = index == len(channels) - 2
            if is_last and not pooled:
                kernel = max(3, p)
                layers.append(nn.Conv2d(c_in, c_out, kernel, stride=p, padding=math.ceil((kernel - p) / 2)))
            else:
                layers.append(nn.Conv2d(c_in, c_out, 3, padding=1))
            if not is_last and config.conv_stem_activation != "none":
                layers.append(nn.ReLU() if config.conv_stem_activation == "relu" else nn.GELU())
            if pooled:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
        self.convs = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.convs(pixel_values)  # (B, C, h, w)


def rope_frequencies(num_pairs: int, base: float = 10000.0) -> torch.Tensor:
    """theta_i = base^(-i / num_pairs), i = 0 .. num_pairs - 1 (RoFormer's base^(-2i/d) with d = 2 num_pairs)."""
    return base ** (-torch.arange(num_pairs, dtype=torch.float32) / num_pairs)


class VixRotaryEmbedding(nn.Module):
    """RoPE tables `(cos, sin)`, each (N, D), for a patch grid, computed on the model's device (as DINOv3 does).

    `rope_1d` is the paper's RoPE: one position per token in raster order, prefix tokens (cls) first, from
    position 0. `rope_2d` is axial: the first half of the channel pairs rotate with the patch row, the second half
    with the column, and prefix tokens are not rotated. Each angle is repeated for its interleaved pair (2i, 2i+1).
    Nothing is sized by the config's image size, so any grid works.
    """

    def __init__(self, kind: str, head_dim: int, num_prefix_tokens: int, base: float):
        super().__init__()
        self.kind = kind
        self.head_dim = head_dim
        self.num_prefix_tokens = num_prefix_tokens
        self.base = base
        # Not saved: it is a function of the config. Refilled by `init_weights` after a meta-device load.
        self.register_buffer("inv_freq", self.compute_inv_freq(), persistent=False)

    def compute_inv_freq(self) -> torch.Tensor:
        num_pairs = self.head_dim // 2 if self.kind == "rope_1d" else self.head_dim // 4
        return rope_frequencies(num_pairs, self.base)

    def init_weights(self) -> None:
        init.copy_(self.inv_freq, self.compute_inv_freq())

    def forward(self, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.inv_freq.device
        if self.kind == "rope_1d":
            positions = torch.arange(height * width + self.num_prefix_tokens, device=device, dtype=torch.float32)
            angles = positions[:, None] * self.inv_freq  # (N, D/2)
        else:
            rows = torch.arange(height, device=device, dtype=torch.float32).repeat_interleave(width)  # raster order
            cols = torch.arange(width, device=device, dtype=torch.float32).repeat(height)
            angles = torch.cat((rows[:, None] * self.inv_freq, cols[:, None] * self.inv_freq), dim=-1)  # (h*w, D/2)
            angles = F.pad(angles, (0, 0, self.num_prefix_tokens, 0))  # prefix tokens: angle 0, no rotation
        angles = angles.repeat_interleave(2, dim=-1)  # (N, D)
        return angles.cos(), angles.sin()


def sinusoidal_positions(num_tokens: int, dim: int) -> torch.Tensor:
    """Fixed 1D positions (1, N, C) as in CCT's "sine" option: channel i of token p is sin (i even) or cos (i odd)
    of p / 10000^(2 floor(i/2) / C)."""
    positions = torch.arange(num_tokens, dtype=torch.float32)[:, None]
    exponents = 2 * (torch.arange(dim) // 2).to(torch.float32) / dim
    angles = positions / 10000**exponents  # (N, C)
    table = torch.where(torch.arange(dim) % 2 == 0, angles.sin(), angles.cos())
    return table[None]


def resample_position_grid(
    positions: torch.Tensor, num_prefix_tokens: int, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """(1, prefix + h*w, C) -> (1, prefix + H*W, C): the patch grid resampled bicubically (align_corners=False,
    as HF ViT's `interpolate_pos_encoding`); prefix tokens (cls, distillation) keep their positions."""
    prefix, grid = positions[:, :num_prefix_tokens], positions[:, num_prefix_tokens:]
    grid = grid.reshape(1, *old_grid, -1).permute(0, 3, 1, 2)  # (1, C, h, w)
    grid = nn.functional.interpolate(grid, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return torch.cat((prefix, grid.permute(0, 2, 3, 1).flatten(1, 2)), dim=1)


class VixEmbeddings(nn.Module):
    """Pixels (B, C_in, H, W) -> tokens (B, N, C) with cls token and learned positions where configured,
    plus the RoPE tables (or None) and the patch grid (h, w)."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.num_channels = config.num_channels
        self.patch_size = config.patch_size
        self.image_size = config.image_size_hw
        if config.embedding_type == "conv":
            self.patch_embeddings = VixConvStemEmbeddings(config)
        else:
            self.patch_embeddings = VixPatchEmbeddings(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size)) if config.pooling == "cls" else None
        # DeiT's second prefix token (after cls), distilled from a teacher; converted DeiT checkpoints carry it.
        self.distillation_token = None
        if config.use_distillation_token:
            self.distillation_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.num_prefix_tokens = int(self.cls_token is not None) + int(self.distillation_token is not None)
        self.position_embeddings = None
        if config.position_embedding_type == "learned":
            self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_tokens, config.hidden_size))
        self.rotary_embeddings = None
        if config.position_embedding_type in ("rope_1d", "rope_2d"):
            self.rotary_embeddings = VixRotaryEmbedding(
                config.position_embedding_type, config.attention_head_dim, self.num_prefix_tokens, config.rope_theta
            )
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def check_pixel_values(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool) -> None:
        check_image_batch(pixel_values, self.num_channels)
        _, _, height, width = pixel_values.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"Image size {height}x{width} is not divisible by the patch size {self.patch_size}. "
                f"Resize images to a multiple of {self.patch_size}, e.g. the model's "
                f"{self.image_size[0]}x{self.image_size[1]}."
            )
        same_size = (height, width) == tuple(self.image_size)
        if self.position_embeddings is not None and not same_size and not interpolate_pos_encoding:
            raise ValueError(
                f"Input image size ({height}*{width}) doesn't match model ({self.image_size[0]}*{self.image_size[1]}). "
                "Resize the images, or pass interpolate_pos_encoding=True to resample the learned position embeddings."
            )

    def interpolate_pos_encoding(self, height: int, width: int) -> torch.Tensor:
        """Learned positions for a (height, width) patch grid: the trained grid resampled bicubically, as HF ViT."""
        trained_h, trained_w = (size // self.patch_size for size in self.image_size)
        if (height, width) == (trained_h, trained_w) and not torch.jit.is_tracing():
            return self.position_embeddings
        return resample_position_grid(
            self.position_embeddings, self.num_prefix_tokens, (trained_h, trained_w), (height, width)
        )

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False):
        """-> tokens (B, N, C) and the RoPE tables (cos, sin) or None."""
        self.check_pixel_values(pixel_values, interpolate_pos_encoding)
        features = self.patch_embeddings(pixel_values)  # (B, C, h, w)
        grid = tuple(features.shape[-2:])
        embeddings = features.flatten(2).transpose(1, 2)  # (B, h*w, C), raster order
        prefix = [token.expand(embeddings.shape[0], -1, -1) for token in (self.cls_token, self.distillation_token)
                  if token is not None]
        embeddings = torch.cat((*prefix, embeddings), dim=1)  # (B, prefix + h*w, C)
        if self.position_embeddings is not None:
            embeddings = embeddings + self.interpolate_pos_encoding(*grid)
        rope = None if self.rotary_embeddings is None else self.rotary_embeddings(*grid)
        return self.dropout(embeddings), rope


__all__ = ["VixEmbeddings", "VixRotaryEmbedding", "check_image_batch", "resample_position_grid", "sinusoidal_positions"]
