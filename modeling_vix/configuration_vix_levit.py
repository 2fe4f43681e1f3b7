"""VixLevitConfig: LeViT (Graham et al. 2021, "LeViT: a Vision Transformer in ConvNet's Clothing") with ViX's
attention switch. LeViN and LeViP of the paper are `attention_type` nystrom / performer.

Field names and defaults follow transformers' `LevitConfig` (LeViT-128S), so a transformers checkpoint converts
by a short rename table. What transformers fixes in code is a field here, at transformers' value:
- the stem depth: log2(patch_size) stride-2 convs (transformers always has 4, i.e. patch 16; patch 4 gives the 2
  convs that suit 32x32 CIFAR images), each Conv + BatchNorm with the activation between them;
- the shrink attention between stages (transformers' `down_ops`): queries from every other token of the grid,
  keys and values from all of them, `key_dim[0]` channels per query/key head and `hidden_sizes[stage] //
  key_dim[0]` heads (as transformers and the LeViT code), `shrink_attention_ratio` (4) and an MLP after it of
  `shrink_mlp_ratio` (2).
"""

from huggingface_hub.dataclasses import strict

from .configuration_vix import HiddenAct, VixMixerConfig, check_image_size, conv_output_size, require_at_least


# The per-stage lists, in the order the config declares them.
STAGE_FIELDS = ("hidden_sizes", "num_attention_heads", "depths", "key_dim", "mlp_ratio", "attention_ratio")



def shrunk_size(size: int) -> int:
    """Grid side after the shrink attention, which keeps every other row and column (stride 2)."""
    return (size - 1) // 2 + 1


@strict
class VixLevitConfig(VixMixerConfig):
    r"""
    Configuration of a ViX LeViT. Beyond the mixer settings of `VixMixerConfig` (whose `attention_type` must be an
    attention mixer: softmax, nystrom, linformer, or performer with `attention_bias=False`):

    image_size (`int` or `[height, width]`, 224), num_channels (`int`, 3).
    patch_size (`int`, 16): the stem's total stride, a power of `stride`; the stem has log_stride(patch_size)
        convs (4 at 16, 2 at 4) with `hidden_sizes[0] // 2**k` channels (k = convs left after it).
    kernel_size (`int`, 3), stride (`int`, 2), padding (`int`, 1): each stem conv.
    hidden_sizes (`list[int]`, [128, 256, 384]), num_attention_heads (`list[int]`, [4, 8, 12]),
    depths (`list[int]`, [4, 4, 4]), key_dim (`list[int]`, [16, 16, 16]): per stage; `key_dim` is the channels of
        each query and key head.
    attention_ratio (`list[int]`, [2, 2, 2]): value channels per head, as a multiple of `key_dim`.
    mlp_ratio (`list[float]`, [2, 2, 2]): MLP width, int(ratio * the stage's width); 0: no MLP.
    shrink_attention_ratio (`int`, 4), shrink_mlp_ratio (`int`, 2): the same for the shrink attention between
        stages and its MLP (0: no MLP).
    attention_bias (`bool`, True): LeViT's learned attention bias, one value per head and relative offset of the
        query and key positions, added to the logits. Performer (FAVOR+) never forms the logits: set it False.
    use_distillation_head (`bool`, False): a second classifier (transformers' `classifier_distill`, trained by a
        teacher in LeViT); the logits are the mean of both heads, as `LevitForImageClassificationWithTeacher` at
        inference. Off by default: without a teacher the second head learns the same as the first. The
        transformers converter sets it for `WithTeacher` checkpoints (facebook/levit-*), so they convert exactly.
    drop_path_rate (`float`, 0.0): stochastic depth, the same rate on every residual branch (as transformers).
    hidden_act (`str`, `"hardswish"`): the activation of the stem, the MLPs and before each attention's output.
    hidden_dropout_prob (`float`, 0.0): dropout on each residual branch's output (none in LeViT).

    LeViT has no LayerNorm (BatchNorm everywhere), and its projections are Linear + BatchNorm, whose shift is their
    bias: `layer_norm_eps` and `rope_theta` are unused and `qkv_bias` must stay False.
    """

    model_type = "vix_levit"

    image_size: int | list[int] | tuple[int, int] = 224
    num_channels: int = 3
    patch_size: int = 16
    kernel_size: int = 3
    stride: int = 2
    padding: int = 1
    hidden_sizes: list[int] | tuple[int, ...] = (128, 256, 384)
    num_attention_heads: list[int] | tuple[int, ...] = (4, 8, 12)
    depths: list[int] | tuple[int, ...] = (4, 4, 4)
    key_dim: list[int] | tuple[int, ...] = (16, 16, 16)
    mlp_ratio: list[int | float] | tuple[int | float, ...] = (2, 2, 2)
    attention_ratio: list[int] | tuple[int, ...] = (2, 2, 2)
    shrink_attention_ratio: int = 4
    shrink_mlp_ratio: int = 2
    attention_bias: bool = True
    use_distillation_head: bool = False
    drop_path_rate: float | int = 0.0
    hidden_act: HiddenAct = "hardswish"

    list_fields = ("image_size", *STAGE_FIELDS)

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def num_stem_convs(self) -> int:
        """log_stride(patch_size), or 0 when patch_size is not a power of the stride (refused by the checks)."""
        count, size = 0, 1
        while self.stride > 1 and size < self.patch_size:
            size, count = size * self.stride, count + 1
        return count if size == self.patch_size else 0

    @property
    def stem_channels(self) -> list[int]:
        """Output channels of each stem conv: ..., width // 4, width // 2, width."""
        count = self.num_stem_convs
        return [self.hidden_sizes[0] // 2 ** (count - 1 - index) for index in range(count)]

    def patch_grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid the stem makes of a height x width image."""
        for _ in range(self.num_stem_convs):
            height, width = (conv_output_size(size, self.kernel_size, self.stride, self.padding)
                             for size in (height, width))
        return height, width

    def stage_grids(self, height: int, width: int) -> list[tuple[int, int]]:
        """The token grid of each stage for a height x width image (each shrink attention halves it)."""
        grids = [self.patch_grid(height, width)]
        for _ in range(self.num_stages - 1):
            grids.append(tuple(shrunk_size(size) for size in grids[-1]))
        return grids

    @property
    def grid_size(self) -> tuple[int, int]:
        """The first stage's token grid at the configured image size."""
        return self.stage_grids(*self.image_size_hw)[0]

    @property
    def stage_num_tokens(self) -> list[int]:
        """Tokens each stage's attentions see (queries = keys) at the configured image size."""
        return [height * width for height, width in self.stage_grids(*self.image_size_hw)]

    @property
    def num_tokens(self) -> int:
        return self.stage_num_tokens[0]

    @property
    def shrink_num_tokens(self) -> list[tuple[int, int]]:
        """(query tokens, key tokens) of the shrink attention after each stage but the last: queries on the next
        stage's grid, keys and values on this stage's."""
        tokens = self.stage_num_tokens
        return list(zip(tokens[1:], tokens[:-1], strict=True))

    @property
    def shrink_key_dim(self) -> int:
        return self.key_dim[0]

    @property
    def shrink_num_heads(self) -> list[int]:
        return [width // self.key_dim[0] for width in self.hidden_sizes[:-1]]

    def validate_architecture(self):
        super().validate_architecture()
        self.require_attention_with_queries_and_keys(
            "LeViT", "its attention adds a bias to the logits and its shrink attention subsamples the queries"
        )
        if self.attention_bias and not self.mixer_capabilities.supports_attention_bias:
            raise ValueError(
                f"attention_type={self.attention_type!r} cannot add LeViT's attention bias (it never forms the "
                "attention logits): set attention_bias=False, or use softmax, nystrom or linformer."
            )
        if self.qkv_bias:
            raise ValueError("LeViT's projections are Linear + BatchNorm, whose shift is their bias: leave "
                             "qkv_bias=False.")
        check_image_size(self.image_size)
        require_at_least(self, 1, "num_channels", "patch_size", "kernel_size", "shrink_attention_ratio")
        require_at_least(self, 0, "padding", "shrink_mlp_ratio")
        require_at_least(self, 2, "stride")
        lengths = {name: len(getattr(self, name)) for name in STAGE_FIELDS}
        if len(set(lengths.values())) != 1 or not self.depths:
            raise ValueError(f"The per-stage lists must have one entry per stage (at least one); got {lengths}.")
        for name in STAGE_FIELDS:
            minimum = 0 if name == "mlp_ratio" else 1
            if any(value < minimum for value in getattr(self, name)):
                raise ValueError(f"{name} must hold integers >= {minimum}; got {getattr(self, name)}.")
        if self.num_stem_convs == 0:
            raise ValueError(
                f"patch_size must be a power of the stem's stride ({self.stride}) of at least {self.stride}, e.g. "
                f"{', '.join(str(self.stride**k) for k in range(1, 5))}: the stem is log_{self.stride}(patch_size) "
                f"stride-{self.stride} convs; got patch_size={self.patch_size}."
            )
        if min(self.stem_channels) < 1:
            raise ValueError(
                f"hidden_sizes[0] ({self.hidden_sizes[0]}) must be at least {2 ** (self.num_stem_convs - 1)}: the "
                f"stem's first conv has hidden_sizes[0] // {2 ** (self.num_stem_convs - 1)} channels."
            )
        if min(self.grid_size) < 1:
            raise ValueError(f"image_size {self.image_size} leaves no tokens after the {self.num_stem_convs} stem "
                             f"convs; use a larger image_size or a smaller patch_size.")
        if min(self.shrink_num_heads, default=1) < 1:
            raise ValueError(
                f"The shrink attention after each stage has hidden_sizes[stage] // key_dim[0] heads: every "
                f"hidden size but the last must be at least key_dim[0] ({self.key_dim[0]}); got {self.hidden_sizes}."
            )
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must lie in [0, 1); got {self.drop_path_rate}.")


__all__ = ["VixLevitConfig"]
