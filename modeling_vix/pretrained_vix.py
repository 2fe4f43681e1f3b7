"""What every ViX backbone's `PreTrainedModel` shares: weight init of the shared parts, the config check at build time,
the attention implementations it declares, the outputs transformers records, loading checkpoints saved under
earlier key names, and a saved folder that loads with `trust_remote_code=True` through all four Auto classes.
"""

from transformers.dynamic_module_utils import custom_object_save
from transformers.modeling_utils import PreTrainedModel

from .embeddings_vix import VixRotaryEmbedding
from .image_processing_vix import VixImageProcessor
from .kernels_vix import AttentionKernel
from .layers_vix import VixLayer


# Checkpoints saved before the attention modules owned their projections keep loading: the kernels' own tensors
# moved from `attention.X` (ViT, CCT, PiT) and `attention.mixer.X` (CvT) to `attention.kernel.X`, and CvT's
# projections from `attention.mixer.q_proj` to `attention.q_proj`. Regex -> replacement, as `key_mapping` takes.
LEGACY_KEY_MAPPING = {
    r"attention\.mixer\.(q_proj|k_proj|v_proj|o_proj)\.": r"attention.\1.",
    r"attention\.mixer\.(residual_conv|projection_matrix|steps_since_redraw|seq_proj_k|seq_proj_v)": (
        r"attention.kernel.\1"
    ),
    r"attention\.(residual_conv|projection_matrix|steps_since_redraw|seq_proj_k|seq_proj_v)": r"attention.kernel.\1",
}


def auto_map_for(config_class, base_model_class, classification_class) -> dict[str, str]:
    """`auto_map` entries (file.Class, as the Hub's remote-code loader reads them) from the classes themselves."""

    def reference(cls) -> str:
        return f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"

    return {
        "AutoConfig": reference(config_class),
        "AutoModel": reference(base_model_class),
        "AutoModelForImageClassification": reference(classification_class),
    }


class VixBasePreTrainedModel(PreTrainedModel):
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    # Exact softmax goes through transformers' attention interface (kernels_vix.SoftmaxKernel); eager and sdpa give
    # the same logits on every backbone (tested). flex_attention is declared per backbone where that is tested too.
    _supports_sdpa = True
    _supports_flex_attn = False
    _can_compile_fullgraph = True  # every kernel, tested (a Performer with redraws breaks the graph once per step)
    # Attention weights are the kernels' second output, on every backbone.
    _can_record_outputs = {"hidden_states": VixLayer, "attentions": AttentionKernel}
    # Where each Auto class finds this backbone's classes in a saved folder (set by each modeling file).
    auto_map: dict[str, str] = {}
    # What a LoRA adapter targets by default (peft's `target_modules`, suffixes of module names): the query and value
    # projections, as peft does for transformers' ViT. LeViT names its own.
    default_lora_target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    def __init__(self, config, *inputs, **kwargs):
        # Fields may have been changed one by one since construction; the config's own checks say what is wrong.
        config.validate_architecture()
        super().__init__(config, *inputs, **kwargs)

    @classmethod
    def _can_set_attn_implementation(cls) -> bool:
        """`set_attn_implementation` works on every backbone. (transformers guesses from the modeling file's source,
        looking for an attention-interface call next to an `*Attention` class; ViX's call is in kernels_vix.py.)"""
        return True

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """As `PreTrainedModel.from_pretrained`; checkpoints saved under earlier key names load too (and are saved
        again under today's names)."""
        kwargs["key_mapping"] = {**LEGACY_KEY_MAPPING, **(kwargs.get("key_mapping") or {})}
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        if getattr(model, "_weight_conversions", None):
            # transformers reverts the renames it used when saving; ours are upgrades, never to be reverted.
            model._weight_conversions = [
                conversion for conversion in model._weight_conversions
                if not set(conversion.source_patterns) <= set(LEGACY_KEY_MAPPING)
            ]
        return loaded

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
        if isinstance(module, (AttentionKernel, VixRotaryEmbedding)):
            module.init_weights()


__all__ = ["LEGACY_KEY_MAPPING", "VixBasePreTrainedModel", "auto_map_for"]
