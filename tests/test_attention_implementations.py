"""`attn_implementation` is declared only where it is honest: eager and sdpa give the same logits on every backbone
and kernel, flex_attention too where a backbone declares it (and LeViT, whose per-head bias transformers' flex path
would apply as head 0's to every head, refuses it); `output_hidden_states` has transformers' form everywhere."""

import pytest
import torch

from conftest import perturbed_model, tiny_backbones
from modeling_vix.kernels_vix import ATTENTION_KERNELS


BACKBONES = list(tiny_backbones())


def build(backbone, attention="softmax"):
    return perturbed_model(backbone, attention)


def pixels(batch=2):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def assert_same_logits(actual, expected):
    """Equal up to fp32 rounding, which these deliberately perturbed models amplify to ~1e-4 of the logits' scale
    (the kernels keep their fp32 parts in any dtype); a wrong path (a bias on the wrong head) differs by O(scale)."""
    scale = expected.abs().max().item()
    assert scale > 0.1
    difference = (actual - expected).abs().max().item()
    assert difference <= 1e-3 * scale, f"max logit difference {difference:.2e} (logits up to {scale:.2f})"


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("attention", list(ATTENTION_KERNELS))
@torch.no_grad()
def test_eager_and_sdpa_give_the_same_logits(backbone, attention):
    model = build(backbone, attention)
    model.set_attn_implementation("eager")
    eager = model(pixels(), output_attentions=True)
    model.set_attn_implementation("sdpa")
    sdpa = model(pixels()).logits
    assert_same_logits(sdpa, eager.logits)
    kernels = [m for m in model.modules() if isinstance(m, ATTENTION_KERNELS[attention])]
    assert len(eager.attentions) == len(kernels) > 0  # eager returns every kernel's map


@pytest.mark.parametrize("backbone", BACKBONES)
@torch.no_grad()
def test_flex_attention_where_declared_gives_the_eager_logits(backbone):
    model = build(backbone)
    model.set_attn_implementation("eager")
    eager = model(pixels()).logits
    if not model._supports_flex_attn:
        assert backbone == "levit"  # the one backbone with a per-head attention bias
        with pytest.raises(ValueError, match="flex_attention"):
            model.set_attn_implementation("flex_attention")
        return
    model.set_attn_implementation("flex_attention")
    assert model.config._attn_implementation == "flex_attention"
    assert_same_logits(model(pixels()).logits, eager)


@pytest.mark.parametrize("backbone", BACKBONES)
@torch.no_grad()
def test_output_hidden_states_are_the_embeddings_then_each_layer(backbone):
    """transformers' form: the embedding output, then one tensor per layer (per stage for LeViT, as transformers'
    LeViT); the last is what the final norm turns into `last_hidden_state`."""
    model = build(backbone)
    base = getattr(model, model.base_model_prefix)
    config = model.config
    outputs = base(pixels(), output_hidden_states=True)
    hidden_states = outputs.hidden_states
    if backbone == "levit":
        assert len(hidden_states) == config.num_stages + 1
        torch.testing.assert_close(hidden_states[0], base.patch_embeddings(pixels()))
        torch.testing.assert_close(hidden_states[-1], outputs.last_hidden_state)
        return
    num_layers = config.num_hidden_layers if backbone in ("vit", "cct") else sum(config.depths)
    assert len(hidden_states) == num_layers + 1
    torch.testing.assert_close(base.layernorm(hidden_states[-1]), outputs.last_hidden_state)
    assert all(state.ndim == 3 and state.shape[0] == 2 for state in hidden_states)
    assert not torch.equal(hidden_states[0], hidden_states[1])  # each entry is a different layer's output
