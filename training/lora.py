"""Parameter-efficient fine-tuning with peft's LoRA: the adapter on the attention projections, the classification
head trained in full (it is new when the labels change), everything else frozen.

peft is an optional dependency (`pip install -e ".[peft]"`): it is imported only when LoRA is asked for.
"""

from dataclasses import dataclass, field

from torch import nn


@dataclass
class LoraArguments:
    lora_r: int = field(default=0, metadata={"help": "LoRA rank; 0 = full fine-tuning (no adapter)"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (the update is alpha / r)"})
    lora_dropout: float = 0.0
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "module name suffixes to adapt; default: the model's own list (q_proj and v_proj; LeViT: its "
                "queries_keys_values / queries / keys_values Linears)"})


def head_module_names(model: nn.Module) -> list[str]:
    """The classification heads (trained in full beside the adapter): `classifier` and LeViT's `classifier_distill`."""
    return [name for name in ("classifier", "classifier_distill", "distillation_classifier")
            if isinstance(getattr(model, name, None), nn.Module)]


def check_lora_arguments(arguments: LoraArguments) -> None:
    """Values that cannot train, as a ValueError that says what to use."""
    if arguments.lora_r < 0:
        raise ValueError(f"--lora_r is the adapter's rank: 0 (no adapter) or positive; got {arguments.lora_r}.")
    if arguments.lora_r and arguments.lora_alpha <= 0:
        raise ValueError(f"--lora_alpha must be positive; got {arguments.lora_alpha}.")
    if not 0 <= arguments.lora_dropout < 1:
        raise ValueError(f"--lora_dropout must lie in [0, 1); got {arguments.lora_dropout}.")


def add_lora_adapter(model: nn.Module, arguments: LoraArguments):
    """The model wrapped by peft with a LoRA adapter (and its heads trainable), or the model itself when lora_r is 0."""
    check_lora_arguments(arguments)
    if not arguments.lora_r:
        return model
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as error:
        raise ValueError("LoRA needs peft: pip install -e \".[peft]\" (or pip install peft).") from error
    targets = arguments.lora_target_modules or list(model.default_lora_target_modules)
    config = LoraConfig(r=arguments.lora_r, lora_alpha=arguments.lora_alpha, lora_dropout=arguments.lora_dropout,
                        target_modules=targets, modules_to_save=head_module_names(model))
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # peft's message names the modules it did not find
        raise ValueError(f"--lora_target_modules {targets}: {str(error).splitlines()[0]}") from error


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
