"""ViX CvT: the Convolutional vision Transformer (Wu et al. 2021) whose attention is ViX's switchable mixer.
CvN / CvP = attention_type nystrom / performer (linformer and softmax too; FNet and MLP-Mixer have no queries or
keys for the convolutional projections, and the config refuses them).

Faithful to transformers' `CvtForImageClassification` (eval mode, converted weights: the same logits). Each stage:
a convolutional token embedding (Conv2d, LayerNorm over channels, dropout), an optional cls token, then pre-norm
layers (the shared `VixLayer`) whose attention (`VixCvtAttention`) takes the token grid through convolutional
projections (depthwise conv + BatchNorm, average pooling, or nothing) to query, key and value tokens, puts the cls
token back in front of each, then projects them (q_proj / k_proj / v_proj, CvT's projection_query / key / value)
and hands the heads to the kernel `attention_type` picks; o_proj is CvT's attention.output.dense. Keys and values
are strided, so the kernel attends from the stage's tokens to fewer keys. After the last stage: a LayerNorm, then
the cls token or the mean of the tokens, then the head.

Differences from transformers' CvT, in training only: stochastic depth rises linearly over each stage's layers
(transformers gives every layer of stage s the s-th rate of that schedule, and fails to build when a stage has
fewer than s + 1 layers) and drops the residual branches only, as the original CvT does (transformers' drop on the
MLP branch also drops the residual stream); VixMLP has a dropout between its two Linears, as the original CvT.
With gradient checkpointing, a layer's recompute in backward updates the BatchNorm running statistics a second time
with the same batch (gradients are unchanged; the running averages move faster), as for any checkpointed BatchNorm.

Checkpoint names: `cvt.stages.S.embeddings.{projection, normalization, cls_token}`,
`cvt.stages.S.layers.N.{layernorm_before, layernorm_after, mlp.fc1, mlp.fc2}`,
`cvt.stages.S.layers.N.attention.convolution_projection_{query,key,value}.{convolution, normalization}`,
`cvt.stages.S.layers.N.attention.{q_proj, k_proj, v_proj, o_proj}`, `...attention.kernel.*` (the kernel's own
tensors, e.g. Linformer's sequence projections), `cvt.layernorm`, `classifier`.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .attention_vix import VixAttention
from .configuration_vix_cvt import VixCvtConfig
from .embeddings_vix import check_image_batch
from .kernels_vix import MixerShape, notify_training_forward
from .layers_vix import VixLayer, classifier_head, grid_to_tokens, tokens_to_grid
from .pretrained_vix import VixBasePreTrainedModel, auto_map_for


class VixCvtEmbeddings(nn.Module):
    """A stage's convolutional token embedding: (B, C_in, H, W) -> tokens (B, [cls +] h*w, C) and the grid (h, w)."""

    def __init__(self, config: VixCvtConfig, stage: int):
        super().__init__()
        in_channels = config.num_channels if stage == 0 else config.hidden_sizes[stage - 1]
        width = config.hidden_sizes[stage]
        self.projection = nn.Conv2d(
            in_channels, width, config.patch_sizes[stage], stride=config.patch_stride[stage],
            padding=config.patch_padding[stage],
        )
        self.normalization = nn.LayerNorm(width, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if config.cls_token[stage] else None

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        features = self.projection(features)  # (B, C, h, w)
        grid = tuple(features.shape[-2:])
        tokens = self.dropout(self.normalization(grid_to_tokens(features)))  # (B, h*w, C)
        if self.cls_token is not None:  # after the dropout, as in CvT
            tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        return tokens, grid


class VixCvtProjection(nn.Module):
    """Token grid (B, C, h, w) -> tokens (B, h'*w', C) for queries, keys or values: `dw_bn` a depthwise conv
    without bias and a BatchNorm, `avg` an average pool (ceil mode, as CvT), `linear` the grid as it is."""

    def __init__(self, method: str, width: int, kernel: int, padding: int, stride: int):
        super().__init__()
        self.convolution = self.normalization = self.pooling = None
        if method == "dw_bn":
            self.convolution = nn.Conv2d(width, width, kernel, stride=stride, padding=padding, groups=width, bias=False)
            self.normalization = nn.BatchNorm2d(width)
        elif method == "avg":
            self.pooling = nn.AvgPool2d(kernel, stride=stride, padding=padding, ceil_mode=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.convolution is not None:
            features = self.normalization(self.convolution(features))
        elif self.pooling is not None:
            features = self.pooling(features)
        return grid_to_tokens(features)


def cvt_attention_shape(config: VixCvtConfig, stage: int) -> MixerShape:
    width = config.hidden_sizes[stage]
    heads = config.num_attention_heads[stage]
    return MixerShape(
        width, heads, width // heads, config.stage_num_tokens[stage],
        num_key_tokens=config.stage_num_key_tokens[stage], scaling=width**-0.5,  # CvT scales by the whole width
    )


class VixCvtAttention(VixAttention):
    """CvT's convolutional attention: the tokens (B, [cls +] h*w, C) of a `grid` go through the query and key /
    value convolutional projections, the cls token is put back in front of each, and the shared attention projects
    them and attends from the queries (B, Nq, C) to the keys and values (B, Nk, C)."""

    def __init__(self, config: VixCvtConfig, stage: int):
        super().__init__(config, cvt_attention_shape(config, stage))
        self.num_prefix_tokens = int(config.cls_token[stage])
        method, width = config.qkv_projection_method[stage], config.hidden_sizes[stage]
        kernel = config.kernel_qkv[stage]
        query_method = "linear" if method == "avg" else method  # CvT averages keys and values only
        self.convolution_projection_query = VixCvtProjection(
            query_method, width, kernel, config.padding_q[stage], config.stride_q[stage]
        )
        self.convolution_projection_key = VixCvtProjection(
            method, width, kernel, config.padding_kv[stage], config.stride_kv[stage]
        )
        self.convolution_projection_value = VixCvtProjection(
            method, width, kernel, config.padding_kv[stage], config.stride_kv[stage]
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings=None,
        grid: tuple[int, int] | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # `position_embeddings` is always None: CvT has no positions.
        prefix = hidden_states[:, : self.num_prefix_tokens]  # the cls token skips the convolutions
        features = tokens_to_grid(hidden_states[:, self.num_prefix_tokens :], grid)  # (B, C, h, w)
        query_states = torch.cat((prefix, self.convolution_projection_query(features)), dim=1)  # (B, Nq, C)
        key_states = torch.cat((prefix, self.convolution_projection_key(features)), dim=1)  # (B, Nk, C)
        value_states = torch.cat((prefix, self.convolution_projection_value(features)), dim=1)
        return self.attend_tokens(query_states, key_states, value_states, **kwargs)


def cvt_layer(config: VixCvtConfig, stage: int, drop_path_rate: float) -> VixLayer:
    """The shared pre-norm layer with CvT's attention; the token grid reaches it as the keyword `grid`."""
    attention = VixCvtAttention(config, stage)
    width, intermediate_size = config.hidden_sizes[stage], config.stage_intermediate_size(stage)
    return VixLayer(config, width, intermediate_size, attention, drop_path_rate)


class VixCvtStage(nn.Module):
    def __init__(self, config: VixCvtConfig, stage: int):
        super().__init__()
        self.embeddings = VixCvtEmbeddings(config, stage)
        # Stochastic depth rising linearly over the stage's layers (the original CvT's per-stage schedule).
        rates = torch.linspace(0, config.drop_path_rate[stage], config.depths[stage]).tolist()
        self.layers = nn.ModuleList([cvt_layer(config, stage, rate) for rate in rates])

    def forward(self, features: torch.Tensor, **kwargs) -> tuple[torch.Tensor, tuple[int, int]]:
        hidden_states, grid = self.embeddings(features)
        for layer in self.layers:
            hidden_states = layer(hidden_states, grid=grid, **kwargs)
        return hidden_states, grid


class VixCvtPreTrainedModel(VixBasePreTrainedModel):
    config: VixCvtConfig
    config_class = VixCvtConfig
    base_model_prefix = "cvt"
    _no_split_modules = ["VixCvtEmbeddings", "VixLayer"]
    _supports_flex_attn = True

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        # transformers' CvT: truncated normal for every Linear and conv (the mixers' own too), zero biases.
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, VixCvtEmbeddings) and module.cls_token is not None:
            init.trunc_normal_(module.cls_token, std=std)


class VixCvtModel(VixCvtPreTrainedModel):
    def __init__(self, config: VixCvtConfig):
        super().__init__(config)
        self.config = config
        self.stages = nn.ModuleList([VixCvtStage(config, stage) for stage in range(config.num_stages)])
        self.layernorm = nn.LayerNorm(config.hidden_sizes[-1], eps=config.layer_norm_eps)
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self, pixel_values: torch.Tensor | None = None, **kwargs: Unpack[TransformersKwargs]
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`):
            Images as prepared by `VixImageProcessor`. Any size that leaves every stage a token runs (CvT has no
            position embeddings), except with Linformer, which needs the configured `image_size`.

        Returns `last_hidden_state`: the last stage's tokens (cls first when it has one) after the final LayerNorm,
        and `pooler_output`: its cls token, or the mean of its tokens.
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values (use VixImageProcessor to prepare images).")
        check_image_batch(pixel_values, self.config.num_channels)
        notify_training_forward(self)
        features = pixel_values.to(self.stages[0].embeddings.projection.weight.dtype)
        hidden_states = None
        for index, stage in enumerate(self.stages):
            hidden_states, grid = stage(features, **kwargs)
            if index < len(self.stages) - 1:  # the next stage embeds the grid; this stage's cls token ends here
                features = tokens_to_grid(hidden_states[:, int(self.config.cls_token[index]) :], grid)
        sequence_output = self.layernorm(hidden_states)
        pooled_output = sequence_output[:, 0] if self.config.cls_token[-1] else sequence_output.mean(dim=1)
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output)


class VixCvtForImageClassification(VixCvtPreTrainedModel):
    def __init__(self, config: VixCvtConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.cvt = VixCvtModel(config)
        self.classifier = classifier_head(config.hidden_sizes[-1], config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch,)`, *optional*):
            Class indices in `[0, num_labels)` for the cross-entropy loss.
        """
        outputs = self.cvt(pixel_values, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        loss = None if labels is None else self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


VixCvtPreTrainedModel.auto_map = auto_map_for(VixCvtConfig, VixCvtModel, VixCvtForImageClassification)

__all__ = ["VixCvtForImageClassification", "VixCvtModel", "VixCvtPreTrainedModel"]
