"""ViX: vision transformers with switchable efficient attention, as a transformers model family.

One config class and `model_type` per backbone, as transformers does: `vix` (the ViT), `vix_cct` (CCT) and
`vix_pit` (PiT), `vix_cvt` (CvT), `vix_levit` (LeViT), all sharing the mixer settings of `VixMixerConfig`.
Importing the package registers them with the Auto classes, and makes `save_pretrained` write an `auto_map` for
AutoConfig, AutoModel, AutoModelForImageClassification and AutoImageProcessor, with the modeling files beside the
weights, so a saved folder also loads with `trust_remote_code=True` where this package is not installed.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)
from transformers.models.auto.video_processing_auto import VIDEO_PROCESSOR_MAPPING

from .configuration_vix import MIXER_CAPABILITIES, VixConfig, VixMixerConfig
from .configuration_vix_cct import VixCctConfig
from .configuration_vix_cvt import VixCvtConfig
from .configuration_vix_levit import VixLevitConfig
from .configuration_vix_pit import VixPitConfig
from .image_processing_vix import VixImageProcessor
from .modeling_vix import VixForImageClassification, VixModel, VixPreTrainedModel
from .modeling_vix_cct import VixCctForImageClassification, VixCctModel
from .modeling_vix_cvt import VixCvtForImageClassification, VixCvtModel
from .modeling_vix_levit import VixLevitForImageClassification, VixLevitModel
from .modeling_vix_pit import VixPitForImageClassification, VixPitModel


# model_type -> (config, base model, classification model), one entry per backbone.
BACKBONES = {
    "vix": (VixConfig, VixModel, VixForImageClassification),
    "vix_cct": (VixCctConfig, VixCctModel, VixCctForImageClassification),
    "vix_pit": (VixPitConfig, VixPitModel, VixPitForImageClassification),
    "vix_cvt": (VixCvtConfig, VixCvtModel, VixCvtForImageClassification),
    "vix_levit": (VixLevitConfig, VixLevitModel, VixLevitForImageClassification),
}
BACKBONE_CONFIGS = {model_type: classes[0] for model_type, classes in BACKBONES.items()}

for config_class, base_model_class, classification_class in BACKBONES.values():
    AutoConfig.register(config_class.model_type, config_class, exist_ok=True)
    AutoModel.register(config_class, base_model_class, exist_ok=True)
    AutoModelForImageClassification.register(config_class, classification_class, exist_ok=True)
    AutoImageProcessor.register(config_class, image_processor_classes={"pil": VixImageProcessor}, exist_ok=True)
    # No video processor: said here, so that pipeline()'s AutoVideoProcessor probe, which derives
    # "VixVideoProcessor" from the image processor's auto_map, finds local code and asks no remote-code question.
    VIDEO_PROCESSOR_MAPPING.register(config_class, {}, exist_ok=True)
    config_class.register_for_auto_class()
    base_model_class.register_for_auto_class("AutoModel")
    classification_class.register_for_auto_class("AutoModelForImageClassification")
VixImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = [
    "BACKBONES",
    "BACKBONE_CONFIGS",
    "MIXER_CAPABILITIES",
    "VixCctConfig",
    "VixCctForImageClassification",
    "VixCctModel",
    "VixConfig",
    "VixCvtConfig",
    "VixCvtForImageClassification",
    "VixCvtModel",
    "VixForImageClassification",
    "VixImageProcessor",
    "VixLevitConfig",
    "VixLevitForImageClassification",
    "VixLevitModel",
    "VixMixerConfig",
    "VixModel",
    "VixPitConfig",
    "VixPitForImageClassification",
    "VixPitModel",
    "VixPreTrainedModel",
]
