"""ViX models: a pre-norm ViT whose token mixer is chosen by `config.attention_type`.

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
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults
from transformers.utils.output_capturing import capture_outputs

from .configuration_vix import VixConfig
from .embeddings_vix import VixEmbeddings
from .image_processing_vix import VixImageProcessor
from .mixers_vix import MIXERS, LinformerAttention, PerformerAttention, VixTokenMixer


class VixMLP(nn.Module):
    def __init__(self, config: VixConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation_fn(self.fc1(hidden_states))))


class VixLayer(GradientCheckpointingLayer):
    """x = x + mixer(norm(x)); x = x + mlp(norm(x)). Only the mixer changes between ViX variants."""

    def __init__(self, config: VixConfig):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = MIXERS[config.attention_type](config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = VixMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor, rope=None, grid=None, output_attentions=False, **kwargs):
        mixed, _ = self.attention(
            self.layernorm_before(hidden_states), rope=rope, grid=grid, output_attentions=output_attentions, **kwargs
        )
        hidden_states = hidden_states + self.dropout(mixed)
        return hidden_states + self.dropout(self.mlp(self.layernorm_after(hidden_states)))


# Where each Auto class finds its ViX class in a saved folder (files copied beside the weights).
AUTO_MAP = {
    "AutoConfig": "configuration_vix.VixConfig",
    "AutoModel": "modeling_vix.VixModel",
    "AutoModelForImageClassification": "modeling_vix.VixForImageClassification",
    "AutoImageProcessor": "image_processing_vix.VixImageProcessor",
}


class VixPreTrainedModel(PreTrainedModel):
    config: VixConfig
    config_class = VixConfig
    base_model_prefix = "vix"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["VixEmbeddings", "VixLayer"]
    _supports_sdpa = True
    _supports_flex_attn = True
    _can_record_outputs = {"hidden_states": VixLayer, "attentions": VixTokenMixer}

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As `PreTrainedModel.save_pretrained`, with an `auto_map` for all four Auto classes (transformers
        records only the class being saved) and every modeling file, the image processor's included."""
        self.config.auto_map = {**(getattr(self.config, "auto_map", None) or {}), **AUTO_MAP}
        super().save_pretrained(save_directory, *args, **kwargs)
        custom_object_save(VixImageProcessor(), save_directory)

    def _init_weights(self, module):
        super()._init_weights(module)  # Linear / Conv: normal(initializer_range), LayerNorm: ones / zeros
        std = self.config.initializer_range
        if isinstance(module, VixEmbeddings):
            if module.position_embeddings is not None:
                init.trunc_normal_(module.position_embeddings, std=std)
            for token in (module.cls_token, module.distillation_token):
                if token is not None:
                    init.trunc_normal_(token, std=std)
        elif isinstance(module, LinformerAttention):
            # The Linformer paper's init of E / F: uniform(+-1/sqrt(k)), so k projected tokens keep unit scale.
            bound = module.seq_proj_k.shape[-1] ** -0.5
            for projection in (module.seq_proj_k, module.seq_proj_v):
                if projection is not None:
                    init.uniform_(projection, -bound, bound)
        elif isinstance(module, PerformerAttention):
            if not getattr(module.projection_matrix, "_is_hf_initialized", False):
                module.redraw_projection()


class VixModel(VixPreTrainedModel):
    def __init__(self, config: VixConfig):
        config.check_combinations()
        super().__init__(config)
        self.config = config
        self.embeddings = VixEmbeddings(config)
        self.layers = nn.ModuleList([VixLayer(config) for _ in range(config.num_hidden_layers)])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.post_init()

    @merge_with_config_defaults
    @capture_outputs(tie_last_hidden_states=False)
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch, channels, height, width)`):
            Images as prepared by `VixImageProcessor`.
        interpolate_pos_encoding (`bool`, *optional*):
            Resample learned position embeddings to another input size. RoPE and `none` positions need no flag.
        """
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values (use VixImageProcessor to prepare images).")
        output_attentions = bool(kwargs.pop("output_attentions", self.config.output_attentions))
        mixer = type(self.layers[0].attention) if len(self.layers) else None
        if output_attentions and mixer is not None and not mixer.returns_attention_weights:
            raise ValueError(
                f"attention_type={self.config.attention_type!r} mixes tokens without attention weights, so there are no "
                "attention maps to return. Call without output_attentions (output_hidden_states works for every mixer)."
            )
        if self.training:
            for layer in self.layers:
                if isinstance(layer.attention, PerformerAttention):
                    layer.attention.count_training_step()
        pixel_values = pixel_values.to(next(self.embeddings.patch_embeddings.parameters()).dtype)
        hidden_states, rope, grid = self.embeddings(pixel_values, interpolate_pos_encoding=bool(interpolate_pos_encoding))
        for layer in self.layers:
            hidden_states = layer(hidden_states, rope=rope, grid=grid, output_attentions=output_attentions, **kwargs)
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
        self.classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
        self.distillation_classifier = None
        if config.use_distillation_head:
            self.distillation_classifier = (
                nn.Linear(config.hidden_size, config.num_labels) if config.num_labels > 0 else nn.Identity()
            )
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs,
    ) -> ImageClassifierOutput:
        r"""
        labels (`torch.LongTensor` of shape `(batch,)`, *optional*):
            Class indices in `[0, num_labels)` for the cross-entropy loss (floats for multi-label).
        """
        outputs = self.vix(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        if self.distillation_classifier is not None:  # DeiT at inference: the mean of the two heads
            logits = (logits + self.distillation_classifier(outputs.last_hidden_state[:, 1])) / 2
        loss = None
        if labels is not None:
            check_labels(labels, self.config.num_labels)
            loss = self.loss_function(labels, logits, self.config, **kwargs)
        return ImageClassifierOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, attentions=outputs.attentions
        )


IGNORE_INDEX = -100  # cross-entropy's "no label here", as everywhere in transformers


def check_labels(labels: torch.Tensor, num_labels: int) -> None:
    """Out-of-range class indices would crash deep inside cross-entropy (or silently on some devices)."""
    if labels.dtype in (torch.long, torch.int) and labels.numel() and num_labels > 1:
        kept = labels[labels != IGNORE_INDEX]
        if kept.numel() == 0:
            return
        low, high = int(kept.min()), int(kept.max())
        if low < 0 or high >= num_labels:
            raise ValueError(
                f"labels must be class indices in [0, {num_labels}) (config.num_labels) or {IGNORE_INDEX} to "
                f"ignore a sample; got values in [{low}, {high}]. Set num_labels / id2label to match the dataset."
            )


__all__ = ["VixPreTrainedModel", "VixModel", "VixForImageClassification"]
