"""VixCctConfig: the Compact Convolutional Transformer (Hassani et al. 2021) with ViX's attention switch.

CCN and CCP of the paper are this model with `attention_type="nystrom"` / `"performer"`. Field names follow
`VixConfig` (and transformers' ViT) where the idea is the same; the tokenizer fields mirror the arguments of the
official CCT code as packaged in vit-pytorch (`vit_pytorch.cct.CCT`), so a converted checkpoint is a rename.
"""

from typing import Literal

from huggingface_hub.dataclasses import strict

from .configuration_vix import VixMixerConfig, check_image_size, conv_output_size, require_at_least


@strict
class VixCctConfig(VixMixerConfig):
    r"""
    Configuration of a ViX CCT. Beyond the mixer settings of `VixMixerConfig`:

    image_size (`int` or `[height, width]`, 32), num_channels (`int`, 3):
        Input size; learned positions are sized by the token grid at this size.
    hidden_size (`int`, 128), num_hidden_layers (`int`, 4), num_attention_heads (`int`, 4),
    intermediate_size (`int`, 512): the transformer (CCT's embedding_dim, num_layers, num_heads,
        embedding_dim * mlp_ratio). Defaults are the paper's CCN/CCP (MLP ratio 4: its `mlp_radio` typo).
    tokenizer_num_layers (`int`, 3), tokenizer_hidden_channels (`int`, 64), tokenizer_kernel_size (`int`, 3),
    tokenizer_stride (`int` or one per layer, [2, 1, 1]), tokenizer_padding (`int`, 1), tokenizer_conv_bias
    (`bool`, False), tokenizer_max_pool (`bool`, True), tokenizer_pooling_kernel_size (`int`, 3),
    tokenizer_pooling_stride (`int`, 1), tokenizer_pooling_padding (`int`, 1):
        The conv tokenizer: each layer is Conv -> ReLU -> MaxPool; the last outputs `hidden_size` channels, the
        others `tokenizer_hidden_channels`. The defaults are the paper's CCN tokenizer (strides 2, 1, 1; pool
        stride 1): 256 tokens at 32x32.
    tokenizer_batch_norm (`bool`, False): BatchNorm after each tokenizer conv (Conv -> BN -> ReLU -> MaxPool), as
        ResNet-style stems do; not in CCT. It makes short CPU-budget runs learn faster (the DESIGN sketch's
        hybrid reached 71.6% in 3 epochs with it).
    position_embedding_type (`str`, `"learned"`):
        `learned` (added, CCT's "learnable"), `sine` (CCT's fixed sinusoidal table), `none`, or ViX's rotary
        `rope_1d` / `rope_2d` on queries and keys (attention mixers only).
    pooling (`str`, `"sequence"`): CCT's sequence pooling (a softmax over a Linear(hidden -> 1) score of each
        token weights the tokens), or `mean`.
    drop_path_rate (`float`, 0.1): stochastic depth, rising linearly from 0 at the first layer to this value.
    attention_probs_dropout_prob (`float`, 0.1): as CCT's `attention_dropout`.
    """

    model_type = "vix_cct"

    image_size: int | list[int] | tuple[int, int] = 32
    num_channels: int = 3
    hidden_size: int = 128
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 512

    tokenizer_num_layers: int = 3
    tokenizer_hidden_channels: int = 64
    tokenizer_kernel_size: int = 3
    tokenizer_stride: int | list[int] | tuple[int, ...] = (2, 1, 1)
    tokenizer_padding: int = 1
    tokenizer_conv_bias: bool = False
    tokenizer_batch_norm: bool = False
    tokenizer_max_pool: bool = True
    tokenizer_pooling_kernel_size: int = 3
    tokenizer_pooling_stride: int = 1
    tokenizer_pooling_padding: int = 1

    position_embedding_type: Literal["learned", "sine", "none", "rope_1d", "rope_2d"] = "learned"
    pooling: Literal["sequence", "mean"] = "sequence"
    drop_path_rate: float | int = 0.1
    attention_probs_dropout_prob: float | int = 0.1

    list_fields = ("image_size", "tokenizer_stride")

    @property
    def tokenizer_strides(self) -> list[int]:
        stride = self.tokenizer_stride
        return [stride] * self.tokenizer_num_layers if isinstance(stride, int) else list(stride)

    @property
    def attention_head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """The tokenizer's output grid for an input of height x width (conv then pool arithmetic, per layer)."""
        for stride in self.tokenizer_strides:
            height, width = (conv_output_size(size, self.tokenizer_kernel_size, stride, self.tokenizer_padding)
                             for size in (height, width))
            if self.tokenizer_max_pool:
                height, width = (
                    conv_output_size(size, self.tokenizer_pooling_kernel_size, self.tokenizer_pooling_stride,
                                     self.tokenizer_pooling_padding)
                    for size in (height, width)
                )
        return height, width

    @property
    def grid_size(self) -> tuple[int, int]:
        return self.token_grid(*self.image_size_hw)

    @property
    def num_tokens(self) -> int:
        height, width = self.grid_size
        return height * width

    def validate_architecture(self):
        super().validate_architecture()
        check_image_size(self.image_size)
        require_at_least(self, 1, "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
                         "intermediate_size", "tokenizer_num_layers", "tokenizer_hidden_channels",
                         "tokenizer_kernel_size", "tokenizer_pooling_kernel_size", "tokenizer_pooling_stride")
        require_at_least(self, 0, "tokenizer_padding", "tokenizer_pooling_padding")
        if len(self.tokenizer_strides) != self.tokenizer_num_layers or min(self.tokenizer_strides) < 1:
            raise ValueError(
                f"tokenizer_stride must be a positive int or one per tokenizer layer ({self.tokenizer_num_layers}); "
                f"got {self.tokenizer_stride}."
            )
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must be a multiple of num_attention_heads "
                f"({self.num_attention_heads})."
            )
        if min(self.grid_size) < 1:
            raise ValueError(
                f"The tokenizer turns a {self.image_size_hw[0]}x{self.image_size_hw[1]} image into no tokens "
                f"(grid {self.grid_size}); use a larger image_size or fewer / less strided tokenizer layers."
            )
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must lie in [0, 1); got {self.drop_path_rate}.")
        self.check_rope(self.position_embedding_type, [self.attention_head_dim])


__all__ = ["VixCctConfig"]
