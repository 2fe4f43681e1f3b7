"""ViX PiT: the Pooling-based Vision Transformer (Heo et al. 2021) whose attention is ViX's switchable mixer.
PiN / PiP = attention_type nystrom / performer.

Stages of the shared pre-norm `VixLayer` (each stage with its own width, heads and token count), and between
stages a pooling layer: the token grid goes through a depthwise conv with stride 2 that also widens the channels,
the cls token through its own Linear. Faithful to vit-pytorch's `vit_pytorch/pit.py` with its compatibility
settings (see `VixPitConfig`); vit-pytorch's position of the cls token is folded into the cls token itself on
conversion (the two are only ever added).

Checkpoint names: `pit.embeddings.{patch_embeddings, cls_token, position_embeddings}`,
`pit.stages.S.layers.N.*` (as the ViT's layers), `pit.stages.S.pooling.{depthwise, pointwise, cls_proj}`,
`pit.layernorm`, `classifier`.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_vix_pit import VixPitConfig
from .embeddings_vix import check_image_batch, resample_position_grid
from .kernels_vix import MixerShape, notify_training_forward
from .layers_vix import VixLayer, build_token_mixer, classifier_head, grid_to_tokens, tokens_to_grid
from .pretrained_vix import VixBasePreTrainedModel, auto_map_for


class VixPitEmbeddings(nn.Module):
    """Pixels (B, C_in, H, W) -> cls + patch tokens (B, 1 + h*w, C) and the patch grid (h, w)."""

    def __init__(self, config: VixPitConfig):
        super().__init__()
        self.config = config
        width = config.hidden_sizes[0]
        self.patch_embeddings = nn.Conv2d(config.num_channels, width, config.patch_size, stride=config.patch_stride)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.grid_size = config.patch_grid(*config.image_size_hw)
        self.position_embeddings = None
        if config.position_embedding_type == "learned":
            self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid_size[0] * self.grid_size[1], width))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False):
        check_image_batch(pixel_values, self.config.num_channels)
        if min(pixel_values.shape[-2:]) < self.config.patch_size:
            raise ValueError(
                f"Images of {tuple(pixel_values.shape[-2:])} are smaller than the patch size {self.config.patch_size}; "
                f"resize them, e.g. to the model's {self.config.image_size_hw}."
            )
        features = self.patch_embeddings(pixel_values)  # (B, C, h, w)
        grid = tuple(features.shape[-2:])
        tokens = grid_to_tokens(features)  # (B, h*w, C), raster order
        if self.position_embeddings is not None:
            positions = self.position_embeddings
            if grid != tuple(self.grid_size):
                if not interpolate_pos_encoding:
                    height, width = self.config.image_size_hw
                    raise ValueError(
                        f"Input image size ({pixel_values.shape[-2]}*{pixel_values.shape[-1]}) doesn't match model "
                        f"({height}*{width}). Resize the images, or pass interpolate_pos_encoding=True to resample the "
                        "learned position embeddings."
                    )
                positions = resample_position_grid(positions, 0, self.grid_size, grid)
            tokens = tokens + positions
        cls_token = self.cls_token.expand(tokens.shape[0], -1, -1)
        return self.dropout(torch.cat((cls_token, tokens), dim=1)), grid


class VixPitPooling(nn.Module):
    """Between stages: the patch tokens, as a grid, through a depthwise conv (kernel 3, stride 2) that widens
    them; the cls token through a Linear. (B, 1 + h*w, C) -> (B, 1 + h'*w', C')."""

    def __init__(self, config: VixPitConfig, in_width: int, out_width: int):
        super().__init__()
        self.depthwise = nn.Conv2d(in_width, out_width, 3, stride=2, padding=1, groups=in_width)
        self.pointwise = nn.Conv2d(out_width, out_width, 1) if config.pooling_pointwise_conv else None
        self.cls_proj = nn.Linear(in_width, out_width)

    def forward(self, hidden_states: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        cls_token, tokens = hidden_states[:, :1], hidden_states[:, 1:]
        features = tokens_to_grid(tokens, grid)  # (B, C, h, w)
        features = self.depthwise(features)
        if self.pointwise is not None:
            features = self.pointwise(features)
        tokens = grid_to_tokens(features)  # (B, h'*w', C')
        return torch.cat((self.cls_proj(cls_token), tokens), dim=1), tuple(features.shape[-2:])


class VixPitStage(nn.Module):
    def __init__(self, config: VixPitConfig, stage: int, drop_path_rates: list[float]):
        super().__init__()
        width = config.hidden_sizes[stage]
        shape = MixerShape(width, config.num_attention_heads[stage], config.stage_head_dims[stage],
                           config.stage_num_tokens[stage])
        intermediate = config.stage_intermediate_sizes[stage]
        self.layers = nn.ModuleList(
            [VixLayer(config, width, intermediate, build_token_mixer(config, shape), rate) for rate in drop_path_rates]
        )
        self.pooling = None
        if stage < config.num_stages - 1:
            self.pooling = VixPitPooling(config, width, config.hidden_sizes[stage + 1])

    def forward(self, hidden_states, grid, **kwargs):
        for layer in self.layers:
            hidden_states = layer(hidden_states, **kwargs)
        if self.pooling is not None:
            hidden_states, grid = self.pooling(hidden_states, grid)
        return hidden_states, grid


class VixPitPreTrainedModel(VixBasePreTrainedModel):
    config: VixPitConfig
    config_class = VixPitConfig
    base_model_prefix = "pit"
    _no_split_modules = ["VixPitEmbeddings", "VixLayer", "VixPitPooling"]
    _supports_flex_attn = True

    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, VixPitEmbeddings):
            init.trunc_normal_(module.cls_token, std=self.config.initializer_range)
            if module.position_embeddings is not None:
                init.trunc_normal_(module.position_embeddings, std=self.config.initializer_range)


class VixPitModel(VixPitPreTrainedModel):
    def __init__(self, config: VixPitConfig):
        super().__init__(config)
        self.config = config
        self.embeddings = VixPitEmbeddings(config)
        rates = torch.linspace(0, config.drop_path_rate, sum(config.depths)).tolist()
        starts = [sum(config.depths[:stage]) for stage in range(config.num_stages)]
        self.stages = nn.ModuleList(
            [VixPitStage(config, stage, rates[start : start + depth])
             for stage, (start, depth) in enumerate(zip(starts, config.depths, strict=True))]
        )
        self.layernorm = nn.LayerNorm(config.hidden_sizes[-1], eps=config.layer_norm_eps)
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
            Resample learned position embeddings to another input size.
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values (use VixImageProcessor to prepare images).")
        notify_training_forward(self)
        pixel_values = pixel_values.to(self.embeddings.patch_embeddings.weight.dtype)
        hidden_states, grid = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        for stage in self.stages:
            hidden_states, grid = stage(hidden_states, grid, **kwargs)
        sequence_output = self.layernorm(hidden_states)
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=sequence_output[:, 0])


class VixPitForImageClassification(VixPitPreTrainedModel):
    def __init__(self, config: VixPitConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.pit = VixPitModel(config)
        self.classifier = classifier_head(config.hidden_sizes[-1], config.num_labels)
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
        outputs = self.pit(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        loss = None if labels is None else self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


VixPitPreTrainedModel.auto_map = auto_map_for(VixPitConfig, VixPitModel, VixPitForImageClassification)

__all__ = ["VixPitForImageClassification", "VixPitModel", "VixPitPreTrainedModel"]
