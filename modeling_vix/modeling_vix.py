"""ViX ViT: a pre-norm ViT whose token mixer is chosen by `config.attention_type` (ViT, ViP, ViL, ViN, FNet,
MLP-Mixer), whose patch embedding may be the paper's conv stem ("hybrid"), and whose positions may be RoPE.

Layout and checkpoint names follow transformers' v5 ViT: `vix.embeddings.*`, `vix.layers.N.attention.q_proj`,
`vix.layers.N.mlp.fc1`, `vix.layernorm`, `classifier`.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_vix import VixConfig
from .embeddings_vix import VixEmbeddings
from .kernels_vix import MixerShape, notify_training_forward
from .layers_vix import VixLayer, build_token_mixer, classifier_head
from .pretrained_vix import VixBasePreTrainedModel, auto_map_for


class VixPreTrainedModel(VixBasePreTrainedModel):
    config: VixConfig
    config_class = VixConfig
    base_model_prefix = "vix"
    _no_split_modules = ["VixEmbeddings", "VixLayer"]
    _supports_flex_attn = True

    def _init_weights(self, module):
        super()._init_weights(module)
        std = self.config.initializer_range
        if isinstance(module, VixEmbeddings):
            if module.position_embeddings is not None:
                init.trunc_normal_(module.position_embeddings, std=std)
            for token in (module.cls_token, module.distillation_token):
                if token is not None:
                    init.trunc_normal_(token, std=std)


class VixModel(VixPreTrainedModel):
    def __init__(self, config: VixConfig):
        super().__init__(config)
        self.config = config
        self.embeddings = VixEmbeddings(config)
        shape = MixerShape(config.hidden_size, config.num_attention_heads, config.attention_head_dim, config.num_tokens)
        self.layers = nn.ModuleList(
            [VixLayer(config, config.hidden_size, config.intermediate_size, build_token_mixer(config, shape))
             for _ in range(config.num_hidden_layers)]
        )
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
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
            Resample learned position embeddings to another input size. RoPE and `none` positions need no flag.
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values (use VixImageProcessor to prepare images).")
        notify_training_forward(self)
        pixel_values = pixel_values.to(next(self.embeddings.patch_embeddings.parameters()).dtype)
        hidden_states, rope = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        for layer in self.layers:
            hidden_states = layer(hidden_states, position_embeddings=rope, **kwargs)
        sequence_output = self.layernorm(hidden_states)
        if self.config.pooling == "cls":
            pooled_output = sequence_output[:, 0]
        else:
            pooled_output = sequence_output.mean(dim=1)
        return BaseModelOutputWithPooling(last_hidden_state=sequence_output, pooler_output=pooled_output)


class VixForImageClassification(VixPreTrainedModel):
    def __init__(self, config: VixConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.vix = VixModel(config)
        self.classifier = classifier_head(config.hidden_size, config.num_labels)
        self.distillation_classifier = None
        if config.use_distillation_head:
            self.distillation_classifier = classifier_head(config.hidden_size, config.num_labels)
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
            Class indices in `[0, num_labels)` for the cross-entropy loss (floats for multi-label). They are not
            range-checked here (that would be a host sync every step): the training job checks them once.
        """
        outputs = self.vix(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        if self.distillation_classifier is not None:  # DeiT at inference: the mean of the two heads
            logits = (logits + self.distillation_classifier(outputs.last_hidden_state[:, 1])) / 2
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


VixPreTrainedModel.auto_map = auto_map_for(VixConfig, VixModel, VixForImageClassification)

__all__ = ["VixForImageClassification", "VixModel", "VixPreTrainedModel"]
