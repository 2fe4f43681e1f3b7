"""ViX: vision transformers with switchable efficient attention, as a transformers model family.

Importing the package registers it with the Auto classes, and makes `save_pretrained` write an `auto_map`
for AutoConfig, AutoModel, AutoModelForImageClassification and AutoImageProcessor, with the modeling
files beside the weights, so a saved folder also loads with `trust_remote_code=True` where this package
is not installed.
"""

from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
)

from .configuration_vix import VixConfig
from .image_processing_vix import VixImageProcessor
from .modeling_vix import VixForImageClassification, VixModel, VixPreTrainedModel


AutoConfig.register(VixConfig.model_type, VixConfig, exist_ok=True)
AutoModel.register(VixConfig, VixModel, exist_ok=True)
AutoModelForImageClassification.register(VixConfig, VixForImageClassification, exist_ok=True)
AutoImageProcessor.register(VixConfig, image_processor_classes={"pil": VixImageProcessor}, exist_ok=True)

VixConfig.register_for_auto_class()
VixModel.register_for_auto_class("AutoModel")
VixForImageClassification.register_for_auto_class("AutoModelForImageClassification")
VixImageProcessor.register_for_auto_class("AutoImageProcessor")

__all__ = ["VixConfig", "VixForImageClassification", "VixImageProcessor", "VixModel", "VixPreTrainedModel"]
