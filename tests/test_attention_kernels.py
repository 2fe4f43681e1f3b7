"""The attention kernels every backbone hands its heads to: keys and values from other (and fewer) tokens than the
queries, a logit scale of the backbone's choosing, and an additive attention bias, each checked against exact
attention written with torch's own `scaled_dot_product_attention`; and the attention module around them, whose
projections are modules that run (checked against the same attention computed from their weights by hand)."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from modeling_vix.attention_vix import VixAttention
from modeling_vix.configuration_vix import MIXER_CAPABILITIES
from modeling_vix.kernels_vix import ATTENTION_KERNELS, MixerShape


HEADS, HEAD_DIM, QUERIES, KEYS = 2, 8, 12, 5
ATTENTION_MIXERS = ("softmax", "performer", "linformer", "nystrom")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def kernel(attention_type, implementation="sdpa", num_keys=KEYS, scaling=None, **config_overrides):
    config = tiny_config(attention_type=attention_type, **config_overrides)
    config._attn_implementation = implementation
    shape = MixerShape(HEADS * HEAD_DIM, HEADS, HEAD_DIM, QUERIES, num_key_tokens=num_keys, scaling=scaling)
    module = ATTENTION_KERNELS[attention_type](config, shape).eval()
    module.init_weights()
    return module


def qkv_and_bias(num_queries=QUERIES, num_keys=KEYS, value_dim=HEAD_DIM + 4):
    """Queries, keys, values (values wider than the keys, as LeViT's) and a (heads, queries, keys) bias, all far
    from the near-uniform attention of an untrained model."""
    query = 1.5 * torch.randn(2, HEADS, num_queries, HEAD_DIM)
    key = 1.5 * torch.randn(2, HEADS, num_keys, HEAD_DIM)
    value = torch.randn(2, HEADS, num_keys, value_dim)
    bias = 2.0 * torch.randn(HEADS, num_queries, num_keys)
    return query, key, value, bias


def exact(query, key, value, bias, scaling=HEAD_DIM**-0.5):
    return F.scaled_dot_product_attention(query, key, value, attn_mask=bias, scale=scaling)


def assert_close(actual, expected, atol):
    assert actual.shape == expected.shape
    difference = (actual - expected).abs().max().item()
    assert difference <= atol, f"max abs diff {difference:.2e} > {atol:.0e}"


def test_kernels_own_only_their_own_tensors():
    """Projections belong to the attention module; a kernel holds only what is its own."""
    own = {name: sorted(dict(kernel(name, num_keys=QUERIES, nystrom_residual_conv_kernel=5,
                                     linformer_share_kv=False, performer_redraw_interval=2).state_dict()))
           for name in ATTENTION_MIXERS}
    assert own == {"softmax": [], "performer": ["projection_matrix", "steps_since_redraw"],
                   "linformer": ["seq_proj_k", "seq_proj_v"], "nystrom": ["residual_conv.weight"]}
    assert kernel("nystrom", num_keys=QUERIES, nystrom_residual_conv_kernel=5).residual_conv is not None
    # The residual conv adds one value per query token: it exists only where keys are the same tokens.
    assert kernel("nystrom", num_keys=KEYS, nystrom_residual_conv_kernel=5).residual_conv is None


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@torch.no_grad()
def test_softmax_kernel_with_bias_fewer_keys_and_wider_values_is_exact(implementation):
    query, key, value, bias = qkv_and_bias()
    context, weights = kernel("softmax", implementation)(query, key, value, attention_bias=bias)
    assert_close(context, exact(query, key, value, bias), 1e-5)
    if implementation == "eager":
        reference = torch.softmax(query @ key.transpose(-1, -2) * HEAD_DIM**-0.5 + bias, -1)
        assert_close(weights, reference, 1e-6)


@torch.no_grad()
def test_scaling_sets_the_logit_scale():
    query, key, value, _ = qkv_and_bias()
    context, _ = kernel("softmax", scaling=0.05)(query, key, value)
    assert_close(context, exact(query, key, value, None, scaling=0.05), 1e-5)
    assert (context - exact(query, key, value, None)).abs().max() > 1e-2


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@torch.no_grad()
def test_nystrom_bias_through_landmarks_is_exact_with_one_token_per_landmark(implementation):
    """With as many landmarks as tokens the landmarks are the tokens, their bias is the token bias, and Nystrom
    is softmax up to the pseudo-inverse iteration: the landmark-mean rule adds the bias exactly there."""
    query, key, value, bias = qkv_and_bias(num_queries=KEYS)
    nystrom = kernel("nystrom", implementation, nystrom_num_landmarks=KEYS, nystrom_pinv_iterations=30,
                     nystrom_residual_conv_kernel=0)
    context, _ = nystrom(query, key, value, attention_bias=bias)
    expected = exact(query, key, value, bias)
    assert_close(context, expected, 2e-4)
    without_bias, _ = nystrom(query, key, value)
    assert (without_bias - expected).abs().max() > 1e-1  # the bias matters at this size


@torch.no_grad()
def test_nystrom_with_fewer_keys_than_queries_uses_common_landmarks():
    query, key, value, bias = qkv_and_bias()
    nystrom = kernel("nystrom", nystrom_num_landmarks=64, nystrom_pinv_iterations=30)
    context, _ = nystrom(query, key, value, attention_bias=bias)
    assert context.shape == (2, HEADS, QUERIES, HEAD_DIM + 4)
    assert torch.isfinite(context).all()
    # Landmarks = min(64, queries, keys) = all 5 keys: the key side is exact, so is the whole product.
    assert_close(context, exact(query, key, value, bias), 2e-4)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@torch.no_grad()
def test_linformer_projects_the_bias_with_its_keys(implementation):
    """With the identity as sequence projection (k = keys) Linformer is softmax, and its projected bias is the
    bias itself; with another projection the bias follows the keys' projection."""
    query, key, value, bias = qkv_and_bias()
    linformer = kernel("linformer", implementation, linformer_k=KEYS)
    linformer.seq_proj_k.copy_(torch.eye(KEYS))
    context, _ = linformer(query, key, value, attention_bias=bias)
    assert_close(context, exact(query, key, value, bias), 1e-5)

    projection = torch.randn(KEYS, 3)
    linformer = kernel("linformer", implementation, linformer_k=3)
    linformer.seq_proj_k.copy_(projection)
    context, _ = linformer(query, key, value, attention_bias=bias)
    projected = [torch.einsum("bhnd,nk->bhkd", tensor, projection) for tensor in (key, value)]
    assert_close(context, exact(query, *projected, bias @ projection), 1e-5)


def test_linformer_refuses_another_key_count():
    query, key, value, _ = qkv_and_bias()
    with pytest.raises(ValueError, match=f"exactly {KEYS} tokens"):
        kernel("linformer", num_keys=KEYS)(query, key[:, :, :4], value[:, :, :4])


def test_performer_refuses_a_bias_as_its_capabilities_say():
    assert not MIXER_CAPABILITIES["performer"].supports_attention_bias
    query, key, value, bias = qkv_and_bias()
    with pytest.raises(ValueError, match="cannot add an attention bias"):
        kernel("performer")(query, key, value, attention_bias=bias)
    assert kernel("performer")(query, key, value)[0].shape == (2, HEADS, QUERIES, HEAD_DIM + 4)


def attention_module(name, **overrides):
    config = tiny_config(attention_type=name, qkv_bias=True, **overrides)
    config._attn_implementation = "sdpa"
    module = VixAttention(config, MixerShape(HEADS * HEAD_DIM, HEADS, HEAD_DIM, QUERIES, num_key_tokens=KEYS)).eval()
    module.kernel.init_weights()
    return module


def heads(projected):  # (B, N, H * D) -> (B, H, N, D)
    return projected.unflatten(-1, (HEADS, HEAD_DIM)).transpose(1, 2)


# Settings under which each kernel is exact attention with 5 keys: Nystrom with a landmark per key, Linformer with
# the identity as its sequence projection.
EXACT_SETTINGS = {"softmax": {}, "nystrom": {"nystrom_num_landmarks": KEYS, "nystrom_pinv_iterations": 30},
                  "linformer": {"linformer_k": KEYS}}


@pytest.mark.parametrize("name", list(EXACT_SETTINGS))
@torch.no_grad()
def test_attention_module_projects_queries_keys_and_values_from_their_own_tokens(name):
    """attend_tokens(x, k, v) = o_proj(attention(x W_q, k W_k, v W_v)), computed here from the weights by hand."""
    module = attention_module(name, **EXACT_SETTINGS[name])
    if name == "linformer":
        module.kernel.seq_proj_k.copy_(torch.eye(KEYS))
    width = HEADS * HEAD_DIM
    tokens, key_states, value_states = (torch.randn(2, count, width) for count in (QUERIES, KEYS, KEYS))

    def by_hand(states, projection):
        return heads(states @ projection.weight.T + projection.bias)

    context = exact(by_hand(tokens, module.q_proj), by_hand(key_states, module.k_proj),
                    by_hand(value_states, module.v_proj), None)
    expected = context.transpose(1, 2).flatten(2) @ module.o_proj.weight.T + module.o_proj.bias
    output, _ = module.attend_tokens(tokens, key_states, value_states)
    assert_close(output, expected, 2e-4)
    swapped, _ = module.attend_tokens(tokens, value_states, key_states)  # keys and values are not interchangeable
    assert (swapped - expected).abs().max() > 1e-2


@pytest.mark.parametrize("name", ATTENTION_MIXERS)
@torch.no_grad()
def test_every_projection_runs_as_a_module(name):
    """Hooks (and with them peft's LoRA layers, quantized Linears, tensor-parallel plans) see every projection."""
    module = attention_module(name, linformer_k=KEYS, nystrom_num_landmarks=4)
    calls = []
    for projection in ("q_proj", "k_proj", "v_proj", "o_proj"):
        getattr(module, projection).register_forward_hook(lambda *_, projection=projection: calls.append(projection))
    tokens, key_states = torch.randn(2, QUERIES, HEADS * HEAD_DIM), torch.randn(2, KEYS, HEADS * HEAD_DIM)
    module.attend_tokens(tokens, key_states, key_states)
    assert sorted(calls) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    # A projection replaced by another module is the one that runs (what peft and quantizers do).
    module.q_proj = torch.nn.Sequential(module.q_proj, torch.nn.Identity())
    module.q_proj[1].register_forward_hook(lambda *_: calls.append("replaced"))
    module.attend_tokens(tokens, key_states, key_states)
    assert calls.count("replaced") == 1
