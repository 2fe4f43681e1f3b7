"""ViX models: a pre-norm ViT whose token mixer is chosen by `config.attention_type`, and the parts every ViX
backbone shares (the MLP, the pre-norm layer, stochastic depth, the pretrained-model base).

Layout and checkpoint names follow transformers' v5 ViT: `vix.embeddings.*`, `vix.layers.N.attention.q_proj`,
`vix.layers.N.mlp.fc1`, `vix.layernorm`, `classifier`.
"""

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import PreTrainedModel
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_vix import VixConfig
from .embeddings_vix import VixEmbeddings, VixRotaryEmbedding
from .image_processing_vix import VixImageProcessor
from .mixers_vix import MIXERS, MixerShape, VixTokenMixer, notify_training_forward


class VixMLP(nn.Module):
    def __init__(self, config, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation_fn(self.fc1(hidden_states))))


class VixDropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for a whole sample with probability p and scale the
    kept ones by 1 / (1 - p); the identity in eval mode (and when p = 0)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        keep = torch.rand((hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1), device=hidden_states.device)
        return hidden_states * (keep < keep_prob).to(hidden_states.dtype) / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class VixLayer(GradientCheckpointingLayer):
    """x = x + mixer(norm(x)); x = x + mlp(norm(x)). Only the mixer changes between ViX variants.

    The ViT and PiT's stages use it with their own sizes (`shape`, `intermediate_size`); `drop_path_rate` is
    stochastic depth on both residual branches (0 = off). CCT's block differs in one place, which
    `normalize_stream_before_mlp` switches: the residual stream itself is normalised after the mixer,
    x = norm(x + mixer(norm(x))); x = x + mlp(x), as in the official CCT code.
    """

    def __init__(
        self,
        config,
        shape: MixerShape,
        intermediate_size: int,
        drop_path_rate: float = 0.0,
        normalize_stream_before_mlp: bool = False,
    ):
        super().__init__()
        self.normalize_stream_before_mlp = normalize_stream_before_mlp
        self.layernorm_before = nn.LayerNorm(shape.hidden_size, eps=config.layer_norm_eps)
        self.attention = MIXERS[config.attention_type](config, shape)
        self.layernorm_after = nn.LayerNorm(shape.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VixMLP(config, shape.hidden_size, intermediate_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = VixDropPath(drop_path_rate)

    def forward(
        self, hidden_states: torch.Tensor, position_embeddings=None, **kwargs: Unpack[TransformersKwargs]
    ) -> torch.Tensor:
        mixed, _ = self.attention(
            self.layernorm_before(hidden_states), position_embeddings=position_embeddings, **kwargs
        )
        hidden_states = hidden_states + self.drop_path(self.dropout(mixed))
        if self.normalize_stream_before_mlp:
            hidden_states = self.layernorm_after(hidden_states)
            return hidden_states + self.drop_path(self.dropout(self.mlp(hidden_states)))
        return hidden_states + self.drop_path(self.dropout(self.mlp(self.layernorm_after(hidden_states))))


def vit_mixer_shape(config: VixConfig) -> MixerShape:
    return MixerShape(config.hidden_size, config.num_attention_heads, config.attention_head_dim, config.num_tokens)


class VixBasePreTrainedModel(PreTrainedModel):
    """What every ViX backbone's `PreTrainedModel` shares: weight init of the shared parts, the config check at
    build time, and a saved folder that loads with `trust_remote_code=True` through all four Auto classes."""

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_compile_fullgraph = True  # every mixer, tested (a Performer with redraws breaks the graph once per step)
    _can_record_outputs = {"hidden_states": VixLayer, "attentions": VixTokenMixer}
    # Where each Auto class finds this backbone's classes in a saved folder (files copied beside the weights).
    auto_map: dict[str, str] = {}

    def __init__(self, config, *inputs, **kwargs):
        # Fields may have been changed one by one since construction; the config's own checks say what is wrong.
        config.validate_architecture()
        super().__init__(config, *inputs, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As `PreTrainedModel.save_pretrained`, with an `auto_map` for all four Auto classes (transformers
        records only the class being saved) and every modeling file, the image processor's included."""
        self.config.auto_map = {
            **(getattr(self.config, "auto_map", None) or {}),
            **self.auto_map,
            "AutoImageProcessor": "image_processing_vix.VixImageProcessor",
        }
        super().save_pretrained(save_directory, *args, **kwargs)
        custom_object_save(VixImageProcessor(), save_directory)

    def _init_weights(self, module):
        super()._init_weights(module)  # Linear / Conv: normal(initializer_range), LayerNorm: ones / zeros
        if isinstance(module, (VixTokenMixer, VixRotaryEmbedding)):
            module.init_weights()


class VixPreTrainedModel(VixBasePreTrainedModel):
    config: VixConfig
    config_class = VixConfig
    base_model_prefix = "vix"
    _no_split_modules = ["VixEmbeddings", "VixLayer"]
    auto_map = {
        "AutoConfig": "configuration_vix.VixConfig",
        "AutoModel": "modeling_vix.VixModel",
        "AutoModelForImageClassification": "modeling_vix.VixForImageClassification",
    }

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
        shape = vit_mixer_shape(config)
        self.layers = nn.ModuleList(
            [VixLayer(config, shape, config.intermediate_size) for _ in range(config.num_hidden_layers)]
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


def classifier_head(hidden_size: int, num_labels: int) -> nn.Module:
    """A linear head, or the identity when num_labels is 0 (features out, as in transformers)."""
    return nn.Linear(hidden_size, num_labels) if num_labels > 0 else nn.Identity()


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


__all__ = [
    "VixBasePreTrainedModel",
    "VixDropPath",
    "VixForImageClassification",
    "VixLayer",
    "VixMLP",
    "VixModel",
    "VixPreTrainedModel",
    "classifier_head",
]
