"""VixPitConfig: the Pooling-based Vision Transformer (Heo et al. 2021, "Rethinking Spatial Dimensions of Vision
Transformers") with ViX's attention switch. PiN and PiP of the paper are `attention_type` nystrom / performer.

Stages are per-stage tuples, as transformers' `CvtConfig` does (`hidden_sizes`, `depths`, `num_attention_heads`).
The defaults follow the PiT paper. Two settings exist to reproduce vit-pytorch's `PiT` exactly (its converter
sets them): `pooling_pointwise_conv=True` (vit-pytorch adds a 1x1 conv after the depthwise pooling conv) and
`intermediate_sizes` equal in every stage (vit-pytorch keeps one `mlp_dim`; the paper's MLP is 4x each stage's
width). vit-pytorch also has no query/key/value bias (`qkv_bias=False`; the paper's blocks have one).
"""

from typing import Literal

from huggingface_hub.dataclasses import strict

from .configuration_vix import VixMixerConfig, check_image_size, require_at_least, require_positive_sizes


def pooled_size(size: int) -> int:
    """Grid side after PiT's pooling conv (kernel 3, stride 2, padding 1)."""
    return (size - 1) // 2 + 1


@strict
class VixPitConfig(VixMixerConfig):
    r"""
    Configuration of a ViX PiT. Beyond the mixer settings of `VixMixerConfig`:

    image_size (`int` or `[height, width]`, 32), num_channels (`int`, 3).
    patch_size (`int`, 4), patch_stride (`int`, 2): the patch embedding, a conv with this kernel and stride
        (overlapping patches when the stride is smaller, as in PiT): 15x15 tokens + cls at 32x32.
    hidden_sizes (`list[int]`, [64, 128, 256]), depths (`list[int]`, [2, 2, 2]),
    num_attention_heads (`list[int]`, [2, 4, 8]): per stage. Between stages a pooling layer halves the token grid
        (a depthwise conv with stride 2, kernel 3) and widens the tokens to the next stage's size (a multiple of
        the current one); the cls token goes through its own Linear.
    head_dim (`int`, *optional*): channels per head in every stage; default each stage's hidden size / heads.
    intermediate_sizes (`list[int]`, *optional*): MLP width per stage; default 4x each stage's hidden size.
    pooling_pointwise_conv (`bool`, False; compatibility): vit-pytorch's 1x1 conv after the depthwise one.
    position_embedding_type (`str`, `"learned"`): `learned` (on the first stage's patch grid) or `none`.
    drop_path_rate (`float`, 0.0): stochastic depth, rising linearly over all layers to this value.
    qkv_bias (`bool`, True): as in the PiT paper's blocks.
    """

    model_type = "vix_pit"

    image_size: int | list[int] | tuple[int, int] = 32
    num_channels: int = 3
    patch_size: int = 4
    patch_stride: int = 2
    hidden_sizes: list[int] | tuple[int, ...] = (64, 128, 256)
    depths: list[int] | tuple[int, ...] = (2, 2, 2)
    num_attention_heads: list[int] | tuple[int, ...] = (2, 4, 8)
    head_dim: int | None = None
    intermediate_sizes: list[int] | tuple[int, ...] | None = None
    pooling_pointwise_conv: bool = False
    position_embedding_type: Literal["learned", "none"] = "learned"
    drop_path_rate: float | int = 0.0
    qkv_bias: bool = True

    list_fields = ("image_size", "hidden_sizes", "depths", "num_attention_heads", "intermediate_sizes")

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_head_dims(self) -> list[int]:
        return [self.head_dim or width // heads
                for width, heads in zip(self.hidden_sizes, self.num_attention_heads, strict=True)]

    @property
    def stage_intermediate_sizes(self) -> list[int]:
        return self.intermediate_sizes or [4 * width for width in self.hidden_sizes]

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        return tuple((size - self.patch_size) // self.patch_stride + 1 for size in (height, width))

    def stage_grids(self, height: int, width: int) -> list[tuple[int, int]]:
        """The token grid of each stage for an input of height x width."""
        grids = [self.patch_grid(height, width)]
        for _ in range(self.num_stages - 1):
            grids.append(tuple(pooled_size(size) for size in grids[-1]))
        return grids

    @property
    def stage_num_tokens(self) -> list[int]:
        """Tokens each stage's mixers see at the configured image size: the grid plus the cls token."""
        return [h * w + 1 for h, w in self.stage_grids(*self.image_size_hw)]

    @property
    def grid_size(self) -> tuple[int, int]:
        """The first (largest) stage's token grid at the configured image size."""
        return self.stage_grids(*self.image_size_hw)[0]

    @property
    def num_tokens(self) -> int:
        """Tokens of the first (largest) stage at the configured image size, cls included."""
        return self.stage_num_tokens[0]

    def validate_architecture(self):
        super().validate_architecture()
        check_image_size(self.image_size)
        require_at_least(self, 1, "num_channels", "patch_size", "patch_stride", "head_dim")
        for name in ("hidden_sizes", "depths", "num_attention_heads"):
            require_positive_sizes(name, getattr(self, name))
        if self.intermediate_sizes is not None:
            require_positive_sizes("intermediate_sizes", self.intermediate_sizes)
        lengths = {name: len(getattr(self, name) or self.depths)
                   for name in ("hidden_sizes", "depths", "num_attention_heads", "intermediate_sizes")}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"The per-stage lists must have one entry per stage; got lengths {lengths}.")
        if min(self.image_size_hw) < self.patch_size:
            raise ValueError(f"image_size {self.image_size} is smaller than patch_size {self.patch_size}.")
        for stage, (width, heads) in enumerate(zip(self.hidden_sizes, self.num_attention_heads, strict=True)):
            if self.head_dim is None and width % heads:
                raise ValueError(
                    f"Stage {stage}: hidden size {width} must be a multiple of its {heads} heads, or set head_dim."
                )
        for stage, (width, next_width) in enumerate(zip(self.hidden_sizes, self.hidden_sizes[1:], strict=False)):
            if next_width % width:
                raise ValueError(
                    f"The pooling after stage {stage} is a depthwise conv from {width} to {next_width} channels, so "
                    f"{next_width} must be a multiple of {width} (PiT doubles the width at each pooling)."
                )
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must lie in [0, 1); got {self.drop_path_rate}.")


__all__ = ["VixPitConfig"]
