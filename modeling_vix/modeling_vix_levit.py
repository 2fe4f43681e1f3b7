"""ViX LeViT (Graham et al. 2021): LeViT whose attention scores go through ViX's switchable mixer kernel.
LeViN / LeViP = attention_type nystrom / performer (the latter without LeViT's attention bias).

Faithful to transformers' `models/levit/modeling_levit.py` with softmax attention: a conv stem (Conv + BatchNorm,
the activation between convs), stages of residual attention and MLP blocks on a token grid, a shrink attention
between stages (queries from every other grid position, keys and values from all, no residual), mean pooling and
a BatchNorm + Linear classifier (two of them, averaged, with `use_distillation_head`). Every projection is a
Linear without bias followed by BatchNorm1d. Each attention adds a learned bias per head and relative offset of
query and key positions. LeViT's attention modules own their BatchNorm projections (called as modules) and hand
q, k, v and the bias to the kernel `attention_type` picks: the config switches only how the scores are formed.

Unlike transformers, the gathered bias is not cached per device in eval mode (a Python dict is not
compile-friendly): it is one gather per forward. With activation checkpointing each layer runs again in backward,
so in training BatchNorm's running statistics see each batch twice (as for any BatchNorm model under
`torch.utils.checkpoint`); the gradients are unchanged.

Checkpoint names follow transformers' where the module is the same: `levit.patch_embeddings.layers.N.{convolution,
batch_norm}`, `levit.stages.S.layers.N.attention.{queries_keys_values, projection, attention_biases}`,
`levit.stages.S.layers.N.mlp.{linear_up, linear_down}`, `levit.stages.S.shrink.attention.{keys_values, queries,
projection, attention_biases}`, `levit.stages.S.shrink.mlp.*`, `classifier.{batch_norm, linear}`,
`classifier_distill.*`; each projection is `.linear` + `.batch_norm`. The mixer's own parameters (Performer's
features, Linformer's sequence projections, Nystrom's residual conv) sit under `attention.kernel`.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.processing_utils import Unpack
from transformers.utils import ModelOutput, TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_vix_levit import VixLevitConfig
from .embeddings_vix import check_image_batch
from .kernels_vix import ATTENTION_KERNELS, AttentionKernel, MixerShape, notify_training_forward
from .layers_vix import VixDropPath
from .pretrained_vix import VixBasePreTrainedModel, auto_map_for


def relative_offset_indices(query_grid, key_grid, stride: int) -> tuple[int, torch.Tensor]:
    """LeViT's attention-bias index: (number of distinct offsets, (Nq, Nk) long tensor).

    Query (i, j) sits at (i * stride, j * stride) of the key grid; each (|row offset|, |column offset|) gets an index
    in order of first appearance over queries then keys, both in raster order (transformers' order, so the bias
    tables of a transformers checkpoint load unchanged).
    """
    offsets, indices = {}, []
    query_points = [(row, col) for row in range(query_grid[0]) for col in range(query_grid[1])]
    key_points = [(row, col) for row in range(key_grid[0]) for col in range(key_grid[1])]
    for query_row, query_col in query_points:
        for key_row, key_col in key_points:
            offset = (abs(query_row * stride - key_row), abs(query_col * stride - key_col))
            indices.append(offsets.setdefault(offset, len(offsets)))
    return len(offsets), torch.tensor(indices, dtype=torch.long).view(len(query_points), len(key_points))


class VixLevitConvBN(nn.Module):
    def __init__(self, config: VixLevitConfig, in_channels: int, out_channels: int):
        super().__init__()
        self.convolution = nn.Conv2d(in_channels, out_channels, config.kernel_size, config.stride, config.padding,
                                     bias=False)
        self.batch_norm = nn.BatchNorm2d(out_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.batch_norm(self.convolution(features))


class VixLevitPatchEmbeddings(nn.Module):
    """Pixels (B, C_in, H, W) -> tokens (B, h*w, C) in raster order: stride-2 Conv + BatchNorm layers with the
    activation between them (none after the last)."""

    def __init__(self, config: VixLevitConfig):
        super().__init__()
        self.config = config
        channels = [config.num_channels] + config.stem_channels
        self.layers = nn.ModuleList(
            [VixLevitConvBN(config, channels[i], channels[i + 1]) for i in range(config.num_stem_convs)]
        )
        self.activation = ACT2FN[config.hidden_act]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        check_image_batch(pixel_values, self.config.num_channels)
        grid = self.config.patch_grid(*pixel_values.shape[-2:])
        if grid != self.config.grid_size:
            height, width = self.config.image_size_hw
            raise ValueError(
                f"Input image size ({pixel_values.shape[-2]}*{pixel_values.shape[-1]}) doesn't match model "
                f"({height}*{width}): LeViT's attention biases are tables for the {self.config.grid_size} token grid "
                "of the configured image_size. Resize the images (VixImageProcessor does)."
            )
        features = pixel_values
        for index, layer in enumerate(self.layers):
            features = layer(features if index == 0 else self.activation(features))
        return features.flatten(2).transpose(1, 2)  # (B, h*w, C)


class VixLevitLinearBN(nn.Module):
    """Linear without bias, then BatchNorm1d over the features of every token: (B, N, C_in) -> (B, N, C_out)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.batch_norm = nn.BatchNorm1d(out_features)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = self.linear(hidden_states)
        return self.batch_norm(hidden_states.flatten(0, 1)).view_as(hidden_states)


class VixLevitAttentionBase(nn.Module):
    """What both LeViT attentions share: the kernel, the attention-bias table and its index, and the output
    path (activation, then a BatchNorm projection). Returns (output, attention weights or None)."""

    def __init__(self, config: VixLevitConfig, shape: MixerShape, query_grid, key_grid, stride: int):
        super().__init__()
        self.num_heads = shape.num_heads
        self.key_dim = shape.head_dim
        self.kernel = ATTENTION_KERNELS[config.attention_type](config, shape)
        num_offsets, indices = relative_offset_indices(query_grid, key_grid, stride)
        self.bias_shape = (query_grid, key_grid, stride)  # to refill the index after loading
        self.attention_biases = None
        if config.attention_bias:
            self.attention_biases = nn.Parameter(torch.zeros(self.num_heads, num_offsets))
            # Not in checkpoints (as in transformers): derived from the grid, refilled by _init_weights.
            self.register_buffer("attention_bias_idxs", indices, persistent=False)
        self.activation = ACT2FN[config.hidden_act]

    def attention_bias(self) -> torch.Tensor | None:
        """(H, Nq, Nk): each head's bias for the offset of every query-key pair, gathered afresh every call."""
        if self.attention_biases is None:
            return None
        return self.attention_biases[:, self.attention_bias_idxs]

    def attend(self, query, key, value, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """q, k (B, H, N, key_dim), v (B, H, Nk, value_dim) -> output (B, Nq, C_out) and the weights."""
        context, weights = self.kernel(query, key, value, attention_bias=self.attention_bias(), **kwargs)
        context = context.transpose(1, 2).flatten(2)  # (B, Nq, H * value_dim)
        return self.projection(self.activation(context)), weights


class VixLevitAttention(VixLevitAttentionBase):
    """Self-attention of a stage: q, k and v from one fused BatchNorm projection, per head [q | k | v]."""

    def __init__(self, config: VixLevitConfig, stage: int, grid: tuple[int, int]):
        width, heads, key_dim = config.hidden_sizes[stage], config.num_attention_heads[stage], config.key_dim[stage]
        tokens = config.stage_num_tokens[stage]
        shape = MixerShape(width, heads, key_dim, tokens, scaling=key_dim**-0.5)
        super().__init__(config, shape, grid, grid, 1)
        self.value_dim = config.attention_ratio[stage] * key_dim
        self.queries_keys_values = VixLevitLinearBN(width, heads * (2 * key_dim + self.value_dim))
        self.projection = VixLevitLinearBN(heads * self.value_dim, width)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]):
        batch, tokens, _ = hidden_states.shape
        qkv = self.queries_keys_values(hidden_states).view(batch, tokens, self.num_heads, -1)
        query, key, value = qkv.transpose(1, 2).split([self.key_dim, self.key_dim, self.value_dim], dim=-1)
        return self.attend(query, key, value, **kwargs)  # q, k, v: (B, H, N, D)


class VixLevitShrinkAttention(VixLevitAttentionBase):
    """Between stages: queries from every other row and column of the grid, keys and values from all of it; the
    output has the next stage's width and grid. No residual (the shapes change)."""

    def __init__(self, config: VixLevitConfig, stage: int, grid: tuple[int, int], next_grid: tuple[int, int]):
        width, key_dim, heads = config.hidden_sizes[stage], config.shrink_key_dim, config.shrink_num_heads[stage]
        query_tokens, key_tokens = config.shrink_num_tokens[stage]
        shape = MixerShape(width, heads, key_dim, query_tokens, num_key_tokens=key_tokens, scaling=key_dim**-0.5)
        super().__init__(config, shape, next_grid, grid, 2)
        self.grid = grid
        self.value_dim = config.shrink_attention_ratio * key_dim
        self.keys_values = VixLevitLinearBN(width, heads * (key_dim + self.value_dim))
        self.queries = VixLevitLinearBN(width, heads * key_dim)
        self.projection = VixLevitLinearBN(heads * self.value_dim, config.hidden_sizes[stage + 1])

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]):
        batch, tokens, width = hidden_states.shape
        key_value = self.keys_values(hidden_states).view(batch, tokens, self.num_heads, -1)
        key, value = key_value.transpose(1, 2).split([self.key_dim, self.value_dim], dim=-1)  # (B, H, Nk, D)
        subsampled = hidden_states.unflatten(1, self.grid)[:, ::2, ::2].flatten(1, 2)  # (B, Nq, C)
        query = self.queries(subsampled).unflatten(-1, (self.num_heads, self.key_dim)).transpose(1, 2)  # (B,H,Nq,D)
        return self.attend(query, key, value, **kwargs)


class VixLevitMLP(nn.Module):
    def __init__(self, config: VixLevitConfig, width: int, intermediate_size: int):
        super().__init__()
        self.linear_up = VixLevitLinearBN(width, intermediate_size)
        self.activation = ACT2FN[config.hidden_act]
        self.linear_down = VixLevitLinearBN(intermediate_size, width)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.linear_down(self.activation(self.linear_up(hidden_states)))


class VixLevitLayer(GradientCheckpointingLayer):
    """x = x + attention(x); x = x + mlp(x): LeViT's residual blocks (no norm before them: BatchNorm is inside)."""

    def __init__(self, config: VixLevitConfig, stage: int, grid: tuple[int, int]):
        super().__init__()
        width = config.hidden_sizes[stage]
        self.attention = VixLevitAttention(config, stage, grid)
        intermediate_size = int(width * config.mlp_ratio[stage])
        self.mlp = VixLevitMLP(config, width, intermediate_size) if intermediate_size > 0 else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = VixDropPath(config.drop_path_rate)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        attended, _ = self.attention(hidden_states, **kwargs)
        hidden_states = hidden_states + self.drop_path(self.dropout(attended))
        if self.mlp is not None:
            hidden_states = hidden_states + self.drop_path(self.dropout(self.mlp(hidden_states)))
        return hidden_states


class VixLevitShrinkLayer(GradientCheckpointingLayer):
    """The shrink attention (no residual), then a residual MLP at the next stage's width."""

    def __init__(self, config: VixLevitConfig, stage: int, grid: tuple[int, int], next_grid: tuple[int, int]):
        super().__init__()
        self.attention = VixLevitShrinkAttention(config, stage, grid, next_grid)
        width = config.hidden_sizes[stage + 1]
        ratio = config.shrink_mlp_ratio
        self.mlp = VixLevitMLP(config, width, width * ratio) if ratio > 0 else None
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = VixDropPath(config.drop_path_rate)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        hidden_states, _ = self.attention(hidden_states, **kwargs)
        if self.mlp is not None:
            hidden_states = hidden_states + self.drop_path(self.dropout(self.mlp(hidden_states)))
        return hidden_states


class VixLevitStage(nn.Module):
    """A stage's blocks, then (but after the last stage) the shrink to the next stage: transformers' grouping, so
    `hidden_states` are the same tensors (the embeddings, then each stage's output)."""

    def __init__(self, config: VixLevitConfig, stage: int):
        super().__init__()
        grids = config.stage_grids(*config.image_size_hw)
        self.layers = nn.ModuleList([VixLevitLayer(config, stage, grids[stage]) for _ in range(config.depths[stage])])
        self.shrink = None
        if stage < config.num_stages - 1:
            self.shrink = VixLevitShrinkLayer(config, stage, grids[stage], grids[stage + 1])

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        if self.shrink is not None:
            hidden_states = self.shrink(hidden_states, **kwargs)
        return hidden_states


class VixLevitPreTrainedModel(VixBasePreTrainedModel):
    config: VixLevitConfig
    config_class = VixLevitConfig
    base_model_prefix = "levit"
    _no_split_modules = ["VixLevitPatchEmbeddings", "VixLevitLayer", "VixLevitShrinkLayer"]
    _can_record_outputs = {
        "hidden_states": OutputRecorder(VixLevitStage, index=0, num_hidden_layers_key="num_stages"),
        "attentions": AttentionKernel,
    }
    # LeViT projects q, k, v with one Linear (+ BatchNorm) per attention, and the shrink attention queries and keys /
    # values with two: LoRA adapts those Linears (the names transformers' LeViT uses).
    default_lora_target_modules = ("queries_keys_values.linear", "queries.linear", "keys_values.linear")
    # No flex_attention: transformers' flex path adds a float mask's first head to every head, and LeViT's bias
    # differs per head.
    _supports_flex_attn = False

    def _init_weights(self, module):
        super()._init_weights(module)  # Linear / Conv: normal(initializer_range); BatchNorm: ones / zeros
        if isinstance(module, VixLevitAttentionBase) and module.attention_biases is not None:
            init.zeros_(module.attention_biases)
            _, indices = relative_offset_indices(*module.bias_shape)
            init.copy_(module.attention_bias_idxs, indices.to(module.attention_bias_idxs.device))


class VixLevitModel(VixLevitPreTrainedModel):
    def __init__(self, config: VixLevitConfig):
        super().__init__(config)
        self.config = config
        self.patch_embeddings = VixLevitPatchEmbeddings(config)
        self.stages = nn.ModuleList([VixLevitStage(config, stage) for stage in range(config.num_stages)])
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values: torch.Tensor | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`):
            Images at the configured `image_size`, as prepared by `VixImageProcessor`.
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values (use VixImageProcessor to prepare images).")
        notify_training_forward(self)
        pixel_values = pixel_values.to(self.patch_embeddings.layers[0].convolution.weight.dtype)
        hidden_states = self.patch_embeddings(pixel_values)
        for stage in self.stages:
            hidden_states = stage(hidden_states, **kwargs)
        # Global average pooling over the last grid: (B, N, C) -> (B, C).
        return BaseModelOutputWithPooling(last_hidden_state=hidden_states, pooler_output=hidden_states.mean(dim=1))


class VixLevitClassificationHead(nn.Module):
    """BatchNorm1d then Linear on the pooled features (transformers' LevitClassificationLayer)."""

    def __init__(self, width: int, num_labels: int):
        super().__init__()
        self.batch_norm = nn.BatchNorm1d(width)
        self.linear = nn.Linear(width, num_labels)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.batch_norm(pooled))


def levit_classifier(width: int, num_labels: int) -> nn.Module:
    """The head, or the identity when num_labels is 0 (features out, as in transformers)."""
    return VixLevitClassificationHead(width, num_labels) if num_labels > 0 else nn.Identity()


@dataclass
class VixLevitImageClassifierOutput(ModelOutput):
    r"""
    loss (`torch.FloatTensor` of shape `()`, *optional*): cross-entropy of `logits` when labels are given.
    logits (`torch.FloatTensor` of shape `(batch, num_labels)`): the mean of both heads with
        `use_distillation_head`, else the one head's.
    cls_logits, distillation_logits (`torch.FloatTensor` of shape `(batch, num_labels)`, *optional*): the two
        heads apart, with `use_distillation_head` (transformers' `LevitForImageClassificationWithTeacherOutput`).
    hidden_states (`tuple(torch.FloatTensor)`, *optional*): the embeddings, then each stage's output.
    attentions (`tuple(torch.FloatTensor)`, *optional*): each attention's (B, H, Nq, Nk) weights, where built.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cls_logits: torch.Tensor | None = None
    distillation_logits: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None


class VixLevitForImageClassification(VixLevitPreTrainedModel):
    def __init__(self, config: VixLevitConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.levit = VixLevitModel(config)
        self.classifier = levit_classifier(config.hidden_sizes[-1], config.num_labels)
        self.classifier_distill = None
        if config.use_distillation_head:
            self.classifier_distill = levit_classifier(config.hidden_sizes[-1], config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> VixLevitImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch,)`, *optional*):
            Class indices in `[0, num_labels)` for the cross-entropy loss of `logits` (with the distillation head:
            of the mean of both heads, since ViX trains without a teacher).
        """
        outputs = self.levit(pixel_values, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        cls_logits = distillation_logits = None
        if self.classifier_distill is not None:  # LeViT at inference: the mean of the two heads
            cls_logits, distillation_logits = logits, self.classifier_distill(outputs.pooler_output)
            logits = (cls_logits + distillation_logits) / 2
        loss = None if labels is None else self.loss_function(labels, logits, self.config, **kwargs)
        return VixLevitImageClassifierOutput(
            loss=loss, logits=logits, cls_logits=cls_logits, distillation_logits=distillation_logits,
            hidden_states=outputs.hidden_states, attentions=outputs.attentions,
        )


VixLevitPreTrainedModel.auto_map = auto_map_for(
    VixLevitConfig, VixLevitModel, VixLevitForImageClassification
)

__all__ = ["VixLevitForImageClassification", "VixLevitModel", "VixLevitPreTrainedModel"]
