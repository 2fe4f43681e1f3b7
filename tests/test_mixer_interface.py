"""The shared mixer interface that CvT and LeViT build on: keys and values from other (and fewer) tokens than the
queries, kernel-only mixers, a logit scale of the backbone's choosing, and an additive attention bias, each
checked against exact attention written with torch's own `scaled_dot_product_attention`."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from modeling_vix.configuration_vix import MIXER_CAPABILITIES
from modeling_vix.mixers_vix import MIXERS, MixerShape


HEADS, HEAD_DIM, QUERIES, KEYS = 2, 8, 12, 5
ATTENTION_MIXERS = ("softmax", "performer", "linformer", "nystrom")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def kernel(attention_type, implementation="sdpa", num_keys=KEYS, scaling=None, **config_overrides):
    config = tiny_config(attention_type=attention_type, **config_overrides)
    config._attn_implementation = implementation
    shape = MixerShape(HEADS * HEAD_DIM, HEADS, HEAD_DIM, QUERIES, num_key_tokens=num_keys, scaling=scaling,
                       with_projections=False)
    mixer = MIXERS[attention_type](config, shape).eval()
    mixer.init_weights()
    return mixer


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


def test_kernel_only_mixers_have_no_projections():
    for name in ATTENTION_MIXERS:
        mixer = kernel(name, nystrom_residual_conv_kernel=5)
        assert (mixer.q_proj, mixer.k_proj, mixer.v_proj, mixer.o_proj) == (None, None, None, None)
    assert not list(kernel("softmax").parameters())
    assert kernel("nystrom", num_keys=QUERIES, nystrom_residual_conv_kernel=5).residual_conv is not None
    # The residual conv adds one value per query token: it exists only where keys are the same tokens.
    assert kernel("nystrom", num_keys=KEYS, nystrom_residual_conv_kernel=5).residual_conv is None


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@torch.no_grad()
def test_softmax_kernel_with_bias_fewer_keys_and_wider_values_is_exact(implementation):
    query, key, value, bias = qkv_and_bias()
    context, weights = kernel("softmax", implementation).attend(query, key, value, attention_bias=bias)
    assert_close(context, exact(query, key, value, bias), 1e-5)
    if implementation == "eager":
        reference = torch.softmax(query @ key.transpose(-1, -2) * HEAD_DIM**-0.5 + bias, -1)
        assert_close(weights, reference, 1e-6)


@torch.no_grad()
def test_scaling_sets_the_logit_scale():
    query, key, value, _ = qkv_and_bias()
    context, _ = kernel("softmax", scaling=0.05).attend(query, key, value)
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
    context, _ = nystrom.attend(query, key, value, attention_bias=bias)
    expected = exact(query, key, value, bias)
    assert_close(context, expected, 2e-4)
    without_bias, _ = nystrom.attend(query, key, value)
    assert (without_bias - expected).abs().max() > 1e-1  # the bias matters at this size


@torch.no_grad()
def test_nystrom_with_fewer_keys_than_queries_uses_common_landmarks():
    query, key, value, bias = qkv_and_bias()
    nystrom = kernel("nystrom", nystrom_num_landmarks=64, nystrom_pinv_iterations=30)
    context, _ = nystrom.attend(query, key, value, attention_bias=bias)
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
    context, _ = linformer.attend(query, key, value, attention_bias=bias)
    assert_close(context, exact(query, key, value, bias), 1e-5)

    projection = torch.randn(KEYS, 3)
    linformer = kernel("linformer", implementation, linformer_k=3)
    linformer.seq_proj_k.copy_(projection)
    context, _ = linformer.attend(query, key, value, attention_bias=bias)
    projected = [torch.einsum("bhnd,nk->bhkd", tensor, projection) for tensor in (key, value)]
    assert_close(context, exact(query, *projected, bias @ projection), 1e-5)


def test_linformer_refuses_another_key_count():
    query, key, value, _ = qkv_and_bias()
    with pytest.raises(ValueError, match=f"exactly {KEYS} tokens"):
        kernel("linformer", num_keys=KEYS).attend(query, key[:, :, :4], value[:, :, :4])


def test_performer_refuses_a_bias_as_its_capabilities_say():
    assert not MIXER_CAPABILITIES["performer"].supports_attention_bias
    query, key, value, bias = qkv_and_bias()
    with pytest.raises(ValueError, match="cannot add an attention bias"):
        kernel("performer").attend(query, key, value, attention_bias=bias)
    assert kernel("performer").attend(query, key, value)[0].shape == (2, HEADS, QUERIES, HEAD_DIM + 4)


@pytest.mark.parametrize("name", ATTENTION_MIXERS)
@torch.no_grad()
def test_separate_key_and_value_states_use_their_own_projections(name):
    """mixer(x, key_states=k, value_states=v) is attend(q_proj(x), k_proj(k), v_proj(v)) followed by o_proj."""
    config = tiny_config(attention_type=name, linformer_k=KEYS, nystrom_num_landmarks=4)
    config._attn_implementation = "sdpa"
    width = HEADS * HEAD_DIM
    mixer = MIXERS[name](config, MixerShape(width, HEADS, HEAD_DIM, QUERIES, num_key_tokens=KEYS)).eval()
    mixer.init_weights()
    tokens, key_states, value_states = torch.randn(2, QUERIES, width), torch.randn(2, KEYS, width), torch.randn(
        2, KEYS, width)
    output, _ = mixer(tokens, key_states=key_states, value_states=value_states)

    def heads(projected):  # (B, N, H * D) -> (B, H, N, D)
        return projected.unflatten(-1, (HEADS, HEAD_DIM)).transpose(1, 2)

    context, _ = mixer.attend(heads(mixer.q_proj(tokens)), heads(mixer.k_proj(key_states)),
                              heads(mixer.v_proj(value_states)))
    assert_close(output, mixer.o_proj(context.transpose(1, 2).flatten(2)), 1e-6)
    if name == "softmax":
        expected = exact(heads(mixer.q_proj(tokens)), heads(mixer.k_proj(key_states)),
                         heads(mixer.v_proj(value_states)), None)
        assert_close(output, mixer.o_proj(expected.transpose(1, 2).flatten(2)), 1e-5)
