"""peft's LoRA on every backbone x attention kernel, as a user applies it: the adapter changes the logits, trains
while the base weights stay as they were, and `merge_and_unload()` gives the adapted logits; the model's own
`default_lora_target_modules` names what to adapt (LeViT's projections have transformers' LeViT names)."""

import pytest
import torch

from conftest import perturbed_model, tiny_backbones
from modeling_vix.kernels_vix import ATTENTION_KERNELS
from training.lora import LoraArguments, add_lora_adapter, count_parameters


peft = pytest.importorskip("peft")

BACKBONES = list(tiny_backbones())
CASES = [(backbone, attention) for backbone in BACKBONES for attention in ATTENTION_KERNELS]


def build(backbone, attention):
    # (a larger perturbation leaves the LeViN's landmark kernels so ill-conditioned that fp32 pseudo-inverse gradients
    # stop being descent directions)
    return perturbed_model(backbone, attention, scale=0.1).double()


def pixels(batch=4):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


@pytest.mark.parametrize("backbone,attention", CASES)
def test_lora_adapts_learns_and_merges(backbone, attention):
    model = build(backbone, attention)
    inputs, labels = pixels(), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        base_logits = model(inputs).logits
    base_state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    config = peft.LoraConfig(r=4, target_modules=list(model.default_lora_target_modules), init_lora_weights=False)
    adapted = peft.get_peft_model(model, config)
    lora_layers = [m for m in adapted.modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    calls = []
    for layer in lora_layers:
        layer.register_forward_hook(lambda *_: calls.append(1))

    with torch.no_grad():
        adapted_logits = adapted(inputs).logits
    assert lora_layers and len(calls) == len(lora_layers)  # every adapted projection ran, once
    assert (adapted_logits - base_logits).abs().max() > 1e-6, "the adapter does not change the logits"

    trainable = [p for p in adapted.parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name, p in adapted.named_parameters() if p.requires_grad)
    optimizer = torch.optim.Adam(trainable, lr=1e-3)
    with torch.no_grad():
        loss_before = adapted(inputs, labels=labels).loss.item()  # eval mode: no dropout, fixed statistics
    for _ in range(5):  # in eval mode: fixed BatchNorm statistics (LeViT's), so only the adapter changes the loss
        adapted(inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    with torch.no_grad():
        trained = adapted(inputs, labels=labels)
    trained_logits = trained.logits
    assert trained.loss.item() < loss_before, f"LoRA training did not lower the loss: {loss_before} -> {trained.loss}"
    base_model = adapted.get_base_model()
    frozen = {name.replace(".base_layer", ""): tensor for name, tensor in base_model.state_dict().items()
              if "lora_" not in name}
    for name, tensor in base_state.items():  # every weight and buffer
        assert torch.equal(frozen[name], tensor), f"{name} changed"

    merged = adapted.merge_and_unload()
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in merged.modules())
    with torch.no_grad():
        torch.testing.assert_close(merged(inputs).logits, trained_logits, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_training_job_adapter_trains_only_the_adapter_and_the_head(backbone):
    model = build(backbone, "nystrom")
    total = sum(p.numel() for p in model.parameters())
    adapted = add_lora_adapter(model, LoraArguments(lora_r=2))
    trainable, all_parameters = count_parameters(adapted)
    names = [name for name, p in adapted.named_parameters() if p.requires_grad]
    assert names and all("lora_" in name or "classifier" in name for name in names)
    assert any("classifier" in name for name in names)  # the head is trained in full (new labels)
    assert trainable < 0.5 * total and all_parameters > total
    assert add_lora_adapter(model, LoraArguments(lora_r=0)) is model


def test_training_job_adapter_refuses_bad_settings():
    model = build("vit", "softmax")
    with pytest.raises(ValueError, match="--lora_r is the adapter's rank"):
        add_lora_adapter(model, LoraArguments(lora_r=-1))
    with pytest.raises(ValueError, match=r"--lora_target_modules \['query'\]"):
        add_lora_adapter(model, LoraArguments(lora_r=2, lora_target_modules=["query"]))
