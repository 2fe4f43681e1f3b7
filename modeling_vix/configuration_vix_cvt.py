"""VixCvtConfig: the Convolutional vision Transformer (Wu et al. 2021, "CvT: Introducing Convolutions to Vision
Transformers") with ViX's attention switch. CvN and CvP of the ViX paper are `attention_type` nystrom / performer.

Faithful to transformers' `CvtConfig` / `CvtForImageClassification`: the CvT-specific per-stage lists keep their
names (`patch_sizes`, `patch_stride`, `patch_padding`, `mlp_ratio`, `cls_token`, `qkv_projection_method`,
`kernel_qkv`, `padding_kv`, `stride_kv`, `padding_q`, `stride_q`, `drop_path_rate`), the shapes take ViX's shared
names, and the dropouts, qkv bias and LayerNorm epsilon are the single fields every ViX backbone shares:

| CvtConfig | VixCvtConfig |
|---|---|
| embed_dim, depth, num_heads | hidden_sizes, depths, num_attention_heads |
| qkv_bias (per stage) | qkv_bias (one bool; the converter refuses mixed lists) |
| drop_rate (per stage) | hidden_dropout_prob (one value) |
| attention_drop_rate (per stage) | attention_probs_dropout_prob (one value) |
| layer_norm_eps (1e-12, unused by transformers' CvT, whose LayerNorms keep torch's 1e-5) | layer_norm_eps (1e-5) |
| (none: any input size) | image_size (224), which sizes Linformer's key projection and the token counts |
"""

from huggingface_hub.dataclasses import strict

from .configuration_vix import VixMixerConfig, check_image_size, conv_output_size, require_at_least


QKV_PROJECTION_METHODS = ("dw_bn", "avg", "linear")
PER_STAGE_FIELDS = (
    "hidden_sizes", "depths", "num_attention_heads", "patch_sizes", "patch_stride", "patch_padding", "mlp_ratio",
    "drop_path_rate", "cls_token", "qkv_projection_method", "kernel_qkv", "padding_kv", "stride_kv", "padding_q",
    "stride_q",
)



def ceil_pool_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of torch's pooling with ceil_mode=True: a last, partial window is kept only if it starts
    inside the input or its left padding."""
    output = -(-(size + 2 * padding - kernel) // stride) + 1
    if (output - 1) * stride >= size + padding:
        output -= 1
    return output


@strict
class VixCvtConfig(VixMixerConfig):
    r"""
    Configuration of a ViX CvT. Defaults are transformers' `CvtConfig` defaults (CvT-13 at 224x224). Beyond the mixer
    settings of `VixMixerConfig`, per stage (one entry each):

    image_size (`int` or `[height, width]`, 224), num_channels (`int`, 3):
        The configured input. CvT has no position embeddings, so other sizes run too, except with Linformer, whose
        key projection is sized by the key tokens at this size.
    patch_sizes ([7, 3, 3]), patch_stride ([4, 2, 2]), patch_padding ([2, 1, 1]):
        Each stage's convolutional token embedding (a Conv2d, then LayerNorm over channels), applied to the image
        (stage 0) or to the previous stage's token grid (without its cls token).
    hidden_sizes ([64, 192, 384]), depths ([1, 2, 10]), num_attention_heads ([1, 3, 6]):
        Width, layers and heads (CvtConfig's embed_dim, depth, num_heads). Attention logits are scaled by
        width ** -0.5 (the whole width, not the head dim), as CvT does.
    mlp_ratio ([4.0, 4.0, 4.0]): MLP width = int(width * mlp_ratio).
    drop_path_rate ([0.0, 0.0, 0.1]): stochastic depth per stage, rising linearly from 0 at a stage's first
        layer to this value at its last (the original CvT's schedule).
    cls_token ([False, False, True]): a learned cls token in front of the stage's tokens. It skips the
        convolutional projections (it is put back in front of queries, keys and values) and is dropped at the end
        of its stage; the classifier reads the last stage's cls token, or the mean of its tokens without one.
    qkv_projection_method (["dw_bn", "dw_bn", "dw_bn"]): how queries, keys and values are taken from the token
        grid before their linear projections: `dw_bn` (depthwise Conv2d without bias + BatchNorm2d), `avg`
        (AvgPool2d with ceil_mode for keys and values, the grid itself for queries) or `linear` (the grid itself).
    kernel_qkv ([3, 3, 3]), padding_q ([1, 1, 1]), stride_q ([1, 1, 1]), padding_kv ([1, 1, 1]),
    stride_kv ([2, 2, 2]): the projections' kernel, and the padding and stride of the query projection and of
        the key / value projections. The queries keep the grid (the residual adds them back); keys and values
        are strided, so each stage attends from h*w queries to fewer keys.
    qkv_bias (`bool`, True): bias of the query / key / value Linear projections (CvtConfig's per-stage list).

    The mixers see `stage_num_tokens` queries and `stage_num_key_tokens` keys (cls token included). Nystrom's
    depthwise residual conv on the values adds one value per query token, so it exists only in stages whose
    queries and keys are equally many (e.g. stride_kv=1): the shapes decide, not a flag.
    """

    model_type = "vix_cvt"

    image_size: int | list[int] | tuple[int, int] = 224
    num_channels: int = 3
    patch_sizes: list[int] | tuple[int, ...] = (7, 3, 3)
    patch_stride: list[int] | tuple[int, ...] = (4, 2, 2)
    patch_padding: list[int] | tuple[int, ...] = (2, 1, 1)
    hidden_sizes: list[int] | tuple[int, ...] = (64, 192, 384)
    depths: list[int] | tuple[int, ...] = (1, 2, 10)
    num_attention_heads: list[int] | tuple[int, ...] = (1, 3, 6)
    mlp_ratio: list[float] | tuple[float, ...] = (4.0, 4.0, 4.0)
    drop_path_rate: list[float] | tuple[float, ...] = (0.0, 0.0, 0.1)
    cls_token: list[bool] | tuple[bool, ...] = (False, False, True)
    # Strings checked in validate_architecture: a list of Literals would not parse as a training flag.
    qkv_projection_method: list[str] | tuple[str, ...] = ("dw_bn", "dw_bn", "dw_bn")
    kernel_qkv: list[int] | tuple[int, ...] = (3, 3, 3)
    padding_kv: list[int] | tuple[int, ...] = (1, 1, 1)
    stride_kv: list[int] | tuple[int, ...] = (2, 2, 2)
    padding_q: list[int] | tuple[int, ...] = (1, 1, 1)
    stride_q: list[int] | tuple[int, ...] = (1, 1, 1)
    qkv_bias: bool = True

    list_fields = ("image_size", *PER_STAGE_FIELDS)

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    def stage_intermediate_size(self, stage: int) -> int:
        return int(self.hidden_sizes[stage] * self.mlp_ratio[stage])

    def stage_grids(self, height: int, width: int) -> list[tuple[int, int]]:
        """The token grid of each stage (its conv embedding's output) for an input of height x width."""
        grids, grid = [], (height, width)
        for kernel, stride, padding in zip(self.patch_sizes, self.patch_stride, self.patch_padding, strict=True):
            grid = tuple(conv_output_size(size, kernel, stride, padding) for size in grid)
            grids.append(grid)
        return grids

    def projection_grid(self, stage: int, grid: tuple[int, int], role: str) -> tuple[int, int]:
        """The grid after the stage's query (`role="query"`) or key / value projection (`"key"`)."""
        method = self.qkv_projection_method[stage]
        kernel = self.kernel_qkv[stage]
        if role == "query":
            if method != "dw_bn":  # avg and linear take the queries as they are
                return tuple(grid)
            return tuple(conv_output_size(s, kernel, self.stride_q[stage], self.padding_q[stage]) for s in grid)
        stride, padding = self.stride_kv[stage], self.padding_kv[stage]
        if method == "dw_bn":
            return tuple(conv_output_size(s, kernel, stride, padding) for s in grid)
        if method == "avg":
            return tuple(ceil_pool_output_size(s, kernel, stride, padding) for s in grid)
        return tuple(grid)

    @property
    def stage_num_tokens(self) -> list[int]:
        """Query tokens of each stage's mixers at the configured image size (the grid, plus the cls token)."""
        return [h * w + int(cls) for (h, w), cls in zip(self.stage_grids(*self.image_size_hw), self.cls_token,
                                                        strict=True)]

    @property
    def stage_num_key_tokens(self) -> list[int]:
        """Key / value tokens of each stage's mixers at the configured image size (strided grid, plus cls)."""
        counts = []
        for stage, grid in enumerate(self.stage_grids(*self.image_size_hw)):
            h, w = self.projection_grid(stage, grid, "key")
            counts.append(h * w + int(self.cls_token[stage]))
        return counts

    @property
    def grid_size(self) -> tuple[int, int]:
        """The first (largest) stage's token grid at the configured image size."""
        return self.stage_grids(*self.image_size_hw)[0]

    @property
    def num_tokens(self) -> int:
        """Query tokens of the first (largest) stage at the configured image size, cls included."""
        return self.stage_num_tokens[0]

    def validate_architecture(self):
        """Raise ValueError for an impossible value or combination, saying what to do instead."""
        super().validate_architecture()
        self.require_attention_with_queries_and_keys(
            "CvT", "its queries, keys and values come from convolutional projections"
        )
        check_image_size(self.image_size)
        require_at_least(self, 1, "num_channels")
        lengths = {name: len(getattr(self, name)) for name in PER_STAGE_FIELDS}
        if len(set(lengths.values())) != 1 or not self.depths:
            raise ValueError(
                f"The per-stage lists must have one entry per stage (at least one); got lengths {lengths}."
            )
        for name in ("hidden_sizes", "depths", "num_attention_heads", "patch_sizes", "patch_stride", "kernel_qkv",
                     "stride_kv", "stride_q"):
            if min(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive integers; got {getattr(self, name)}.")
        for name in ("patch_padding", "padding_kv", "padding_q"):
            if min(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be integers >= 0; got {getattr(self, name)}.")
        for stage, (width, heads) in enumerate(zip(self.hidden_sizes, self.num_attention_heads, strict=True)):
            if width % heads:
                raise ValueError(f"Stage {stage}: hidden size {width} must be a multiple of its {heads} heads.")
            if self.stage_intermediate_size(stage) < 1:
                raise ValueError(f"Stage {stage}: mlp_ratio {self.mlp_ratio[stage]} leaves no MLP width; it must be "
                                 f"at least 1 / {width}.")
            if not 0 <= self.drop_path_rate[stage] < 1:
                raise ValueError(f"drop_path_rate must lie in [0, 1) in every stage; got {self.drop_path_rate}.")
        for stage, method in enumerate(self.qkv_projection_method):
            if method not in QKV_PROJECTION_METHODS:
                raise ValueError(f"qkv_projection_method must be one of {', '.join(QKV_PROJECTION_METHODS)} in every "
                                 f"stage; got {method!r} in stage {stage}.")
            kernel = self.kernel_qkv[stage]
            if method == "dw_bn" and (self.stride_q[stage] != 1 or 2 * self.padding_q[stage] != kernel - 1):
                raise ValueError(
                    f"Stage {stage}: the query projection must keep the token grid (the residual adds its output "
                    f"back): use stride_q=1 and padding_q=(kernel_qkv - 1) / 2 = {(kernel - 1) / 2:g}; got "
                    f"stride_q={self.stride_q[stage]}, padding_q={self.padding_q[stage]}, kernel_qkv={kernel}."
                )
            if method == "dw_bn" and kernel % 2 == 0:
                raise ValueError(f"Stage {stage}: kernel_qkv must be odd for the query projection to keep the grid; "
                                 f"got {kernel}.")
            if method == "avg" and 2 * self.padding_kv[stage] > kernel:
                raise ValueError(f"Stage {stage}: average pooling takes padding_kv of at most half its kernel "
                                 f"({kernel // 2}); got {self.padding_kv[stage]}.")
        height, width = self.image_size_hw
        for stage, grid in enumerate(self.stage_grids(height, width)):
            keys = self.projection_grid(stage, grid, "key") if min(grid) >= 1 else grid
            if min(grid) < 1 or min(keys) < 1:
                raise ValueError(
                    f"image_size {height}x{width} leaves stage {stage} without tokens (token grid {grid}, key grid "
                    f"{keys}); use a larger image_size, or smaller patch_stride / stride_kv."
                )


__all__ = ["VixCvtConfig"]
