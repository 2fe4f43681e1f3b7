"""ViX CCT: the Compact Convolutional Transformer (Hassani et al. 2021, "Escaping the Big Data Paradigm with
Compact Transformers") whose attention is ViX's switchable mixer. CCN / CCP = attention_type nystrom / performer.

Faithful to the official CCT code as packaged in vit-pytorch (`vit_pytorch/cct.py`): a conv tokenizer
(Conv -> ReLU -> MaxPool per layer, no conv bias), learned / sine / no positions, CCT's encoder block (the shared
`VixLayer` with `normalize_stream_before_mlp`), stochastic depth rising linearly over the layers, a final
LayerNorm and sequence pooling. With softmax attention and converted weights it gives vit-pytorch's logits.

Checkpoint names: `cct.tokenizer.layers.N.convolution`, `cct.embeddings.position_embeddings`,
`cct.layers.N.{layernorm_before, attention.q_proj, layernorm_after, mlp.fc1}`, `cct.layernorm`,
`cct.pooler.attention_pool`, `classifier`.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_vix_cct import VixCctConfig
from .embeddings_vix import VixRotaryEmbedding, check_image_batch, resample_position_grid, sinusoidal_positions
from .kernels_vix import MixerShape, notify_training_forward
from .layers_vix import VixLayer, build_token_mixer, classifier_head, grid_to_tokens
from .pretrained_vix import VixBasePreTrainedModel, auto_map_for


class VixCctTokenizerLayer(nn.Module):
    def __init__(self, config: VixCctConfig, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.convolution = nn.Conv2d(
            in_channels, out_channels, config.tokenizer_kernel_size, stride=stride, padding=config.tokenizer_padding,
            bias=config.tokenizer_conv_bias,
        )
        self.normalization = nn.BatchNorm2d(out_channels) if config.tokenizer_batch_norm else nn.Identity()
        self.activation = nn.ReLU()
        self.pooling = nn.Identity()
        if config.tokenizer_max_pool:
            self.pooling = nn.MaxPool2d(
                config.tokenizer_pooling_kernel_size, config.tokenizer_pooling_stride, config.tokenizer_pooling_padding
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.pooling(self.activation(self.normalization(self.convolution(features))))


class VixCctTokenizer(nn.Module):
    """Pixels (B, C_in, H, W) -> feature map (B, hidden, h, w): CCT's convolutional tokenizer."""

    def __init__(self, config: VixCctConfig):
        super().__init__()
        channels = [config.num_channels]
        channels += [config.tokenizer_hidden_channels] * (config.tokenizer_num_layers - 1) + [config.hidden_size]
        self.layers = nn.ModuleList(
            [VixCctTokenizerLayer(config, c_in, c_out, stride)
             for c_in, c_out, stride in zip(channels, channels[1:], config.tokenizer_strides, strict=False)]
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = pixel_values
        for layer in self.layers:
            features = layer(features)
        return features


class VixCctEmbeddings(nn.Module):
    """Pixels -> tokens (B, h*w, C) with positions added (learned, sine) or returned as RoPE tables."""

    def __init__(self, config: VixCctConfig):
        super().__init__()
        self.config = config
        self.tokenizer = VixCctTokenizer(config)
        self.grid_size = config.grid_size
        kind = config.position_embedding_type
        self.position_embeddings = None
        if kind == "learned":
            self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_tokens, config.hidden_size))
        # A function of the config, so not saved; refilled by `_init_weights` after a meta-device load.
        sine = sinusoidal_positions(config.num_tokens, config.hidden_size) if kind == "sine" else None
        self.register_buffer("sine_positions", sine, persistent=False)
        self.rotary_embeddings = None
        if kind.startswith("rope"):
            self.rotary_embeddings = VixRotaryEmbedding(kind, config.attention_head_dim, 0, config.rope_theta)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def positions_for(self, grid: tuple[int, int], interpolate_pos_encoding: bool) -> torch.Tensor | None:
        if self.sine_positions is not None:
            if grid == tuple(self.grid_size):
                return self.sine_positions
            return sinusoidal_positions(grid[0] * grid[1], self.config.hidden_size).to(self.sine_positions)
        if self.position_embeddings is None or grid == tuple(self.grid_size):
            return self.position_embeddings
        if not interpolate_pos_encoding:
            height, width = self.config.image_size_hw
            raise ValueError(
                f"The tokenizer made a {grid[0]}x{grid[1]} token grid, but the learned positions are for "
                f"{self.grid_size[0]}x{self.grid_size[1]} (images of {height}x{width}). Resize the images, or pass "
                "interpolate_pos_encoding=True to resample the positions."
            )
        return resample_position_grid(self.position_embeddings, 0, self.grid_size, grid)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False):
        """-> tokens (B, N, C) and the RoPE tables (cos, sin) or None."""
        check_image_batch(pixel_values, self.config.num_channels)
        features = self.tokenizer(pixel_values)  # (B, C, h, w)
        grid = tuple(features.shape[-2:])
        embeddings = grid_to_tokens(features)  # (B, h*w, C), raster order
        positions = self.positions_for(grid, interpolate_pos_encoding)
        if positions is not None:
            embeddings = embeddings + positions
        rope = None if self.rotary_embeddings is None else self.rotary_embeddings(*grid)
        return self.dropout(embeddings), rope


class VixCctSequencePooling(nn.Module):
    """CCT's sequence pooling: softmax over tokens of a learned score, then the weighted mean (B, N, C) -> (B, C)."""

    def __init__(self, config: VixCctConfig):
        super().__init__()
        self.attention_pool = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weights = self.attention_pool(hidden_states).softmax(dim=1)  # (B, N, 1)
        return (weights * hidden_states).sum(dim=1)


class VixCctPreTrainedModel(VixBasePreTrainedModel):
    config: VixCctConfig
    config_class = VixCctConfig
    base_model_prefix = "cct"
    _no_split_modules = ["VixCctEmbeddings", "VixLayer"]
    _supports_flex_attn = True

    def _init_weights(self, module):
        """CCT's init: trunc-normal Linear weights, Kaiming-normal tokenizer convs, learned positions std 0.2."""
        super()._init_weights(module)
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight)
        elif isinstance(module, VixCctEmbeddings):
            if module.position_embeddings is not None:
                init.trunc_normal_(module.position_embeddings, std=0.2)
            if module.sine_positions is not None:
                init.copy_(module.sine_positions, sinusoidal_positions(*module.sine_positions.shape[1:]))


class VixCctModel(VixCctPreTrainedModel):
    def __init__(self, config: VixCctConfig):
        super().__init__(config)
        self.config = config
        self.embeddings = VixCctEmbeddings(config)
        shape = MixerShape(config.hidden_size, config.num_attention_heads, config.attention_head_dim, config.num_tokens)
        drop_path_rates = torch.linspace(0, config.drop_path_rate, config.num_hidden_layers).tolist()
        self.layers = nn.ModuleList(
            [VixLayer(config, config.hidden_size, config.intermediate_size, build_token_mixer(config, shape), rate,
                      normalize_stream_before_mlp=True)
             for rate in drop_path_rates]
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pooler = VixCctSequencePooling(config) if config.pooling == "sequence" else None
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`):
            Images as prepared by `VixImageProcessor`.
        interpolate_pos_encoding (`bool`, *optional*):
            Resample learned positions to another input size.
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values (use VixImageProcessor to prepare images).")
        notify_training_forward(self)
        pixel_values = pixel_values.to(self.embeddings.tokenizer.layers[0].convolution.weight.dtype)
        hidden_states, rope = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_embeddings=rope, **kwargs)
        sequence_output = self.layernorm(hidden_states)
        pooled_output = sequence_output.mean(dim=1) if self.pooler is None else self.pooler(sequence_output)
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output)


class VixCctForImageClassification(VixCctPreTrainedModel):
    def __init__(self, config: VixCctConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.cct = VixCctModel(config)
        self.classifier = classifier_head(config.hidden_size, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> ImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch,)`, *optional*):
            Class indices in `[0, num_labels)` for the cross-entropy loss.
        """
        outputs = self.cct(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        loss = None if labels is None else self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


VixCctPreTrainedModel.auto_map = auto_map_for(VixCctConfig, VixCctModel, VixCctForImageClassification)

__all__ = ["VixCctForImageClassification", "VixCctModel", "VixCctPreTrainedModel"]
