"""The optimized formulations give the same results (values and gradients) as the plain ones they replace."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from modeling_vix.attention_vix import VixAttention
from modeling_vix.kernels_vix import MixerShape, depthwise_token_conv, iterative_pinv


def build_mixer(attn_implementation="sdpa", **overrides):
    """The attention module of the tiny ViT's first layer, built as the model builds it. The config's
    attn_implementation picks the fused path ("sdpa") or the one that materialises attention maps ("eager")."""
    config = tiny_config(**overrides)
    config._attn_implementation = attn_implementation
    shape = MixerShape(config.hidden_size, config.num_attention_heads, config.attention_head_dim, config.num_tokens)
    return VixAttention(config, shape)


@pytest.mark.parametrize("shape", [(2, 4, 1025, 32, 33), (1, 2, 7, 3, 5), (2, 3, 100, 8, 1), (1, 2, 64, 4, 129)])
def test_banded_token_conv_equals_grouped_conv2d(shape):
    batch, heads, tokens, head_dim, kernel = shape
    values = torch.randn(batch, heads, tokens, head_dim, dtype=torch.float64, requires_grad=True)
    taps = torch.randn(heads, kernel, dtype=torch.float64, requires_grad=True)
    expected = F.conv2d(values, taps[:, None, :, None], padding=(kernel // 2, 0), groups=heads)
    actual = depthwise_token_conv(values, taps)
    torch.testing.assert_close(actual, expected)
    upstream = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (values, taps), upstream)
    actual_grads = torch.autograd.grad(actual, (values, taps), upstream)
    for got, want in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("blocked", [True, False], ids=["fused_cpu_kernel", "matmul_softmax"])
@pytest.mark.parametrize("tokens, landmarks, per_head", [(64, 16, True), (70, 16, False), (33, 8, True)])
def test_nystrom_node_passes_float64_gradcheck(blocked, tokens, landmarks, per_head):
    """The hand-written backward of the Nystrom node against finite differences, on both attention paths, with
    landmarks of equal and of unequal runs and both pseudo-inverse scalings."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from modeling_vix.nystrom_vix import nystrom_attention

    query, key, value = (torch.randn(1, 2, tokens, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH] if blocked else [SDPBackend.MATH]
    with sdpa_kernel(backends):
        assert torch.autograd.gradcheck(
            lambda q, k, v: nystrom_attention(q, k, v, landmarks, 0.5, 6, per_head), (query, key, value)
        )


def test_nystrom_node_gives_autograds_gradients_through_the_same_steps():
    """The fused node (q, k, v kept; maps, pseudo-inverse and conv blocks recomputed in backward) against autograd
    through the step-by-step formula that stores everything: the same outputs and gradients for every input."""
    mixer = build_mixer(attention_type="nystrom").double().train()
    hidden = torch.randn(2, 65, 32, dtype=torch.float64, requires_grad=True)
    inputs = [hidden, *mixer.parameters()]
    fused_output, _ = mixer(hidden)
    fused = torch.autograd.grad(fused_output.square().sum(), inputs)

    nystrom = mixer.kernel
    nystrom.attend = lambda q, k, v, bias=None: (
        nystrom.attend_step_by_step(q, k, v, bias)[0]
        + depthwise_token_conv(v, nystrom.residual_conv.weight[:, 0, :, 0]), None)
    nystrom.pseudo_inverse = lambda matrix: iterative_pinv(matrix, nystrom.pinv_iterations,
                                                           nystrom.per_matrix_pinv_scale)
    stored_output, _ = mixer(hidden)
    stored = torch.autograd.grad(stored_output.square().sum(), inputs)
    torch.testing.assert_close(fused_output, stored_output)
    for got, want in zip(fused, stored, strict=True):
        torch.testing.assert_close(got, want)


def test_favor_node_gives_the_same_output_and_gradients_as_the_eager_path():
    """Performer's training node (feature maps recomputed in backward, backward written out) against the eager
    path, which builds the attention map from stored feature maps through autograd."""
    mixer = build_mixer("sdpa", attention_type="performer").train()
    hidden = torch.randn(2, 65, 32, requires_grad=True)
    inputs = [hidden, *mixer.parameters()]
    fused_output, weights = mixer(hidden)
    assert weights is None
    fused = torch.autograd.grad(fused_output.square().sum(), inputs)
    mixer.kernel.config._attn_implementation = "eager"
    stored_output, weights = mixer(hidden)
    assert weights is not None
    stored = torch.autograd.grad(stored_output.square().sum(), inputs)
    torch.testing.assert_close(fused_output, stored_output)
    for got, want in zip(fused, stored, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@pytest.mark.parametrize("key_stabilizer", ["head", "global"])
def test_favor_node_gives_autograds_gradients_through_the_same_ops(kernel, key_stabilizer):
    """In float64, against autograd through the feature maps and products written plainly. (Finite differences
    do not apply to the exp kernel: its stabilising shifts are held constant, as in the Performer reference.)"""
    from modeling_vix.favor_vix import favor_attention, favor_features

    query, key, value = (torch.randn(2, 3, 20, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    projection = torch.randn(12, 8, dtype=torch.float64)
    query_features = favor_features(query, projection, 0.6, kernel, "row")
    key_features = favor_features(key, projection, 0.6, kernel, key_stabilizer)
    numerator = query_features @ (key_features.transpose(-1, -2) @ value)
    expected = numerator / (query_features @ key_features.sum(-2)[..., None])
    actual = favor_attention(query, key, value, projection, 0.6, kernel, key_stabilizer)
    torch.testing.assert_close(actual, expected)
    upstream = torch.randn_like(expected)
    for got, want in zip(torch.autograd.grad(actual, (query, key, value), upstream),
                         torch.autograd.grad(expected, (query, key, value), upstream), strict=True):
        torch.testing.assert_close(got, want)


def test_favor_node_passes_float64_gradcheck():
    """The relu kernel has no stabilising shift: its backward against finite differences."""
    from modeling_vix.favor_vix import favor_attention

    query, key, value = (torch.randn(2, 2, 9, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    projection = torch.randn(6, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda q, k, v: favor_attention(q, k, v, projection, 0.7, "relu", "head"), (query, key, value)
    )


def test_fourier_mixing_gradient_equals_autograd_through_complex_fft():
    from modeling_vix.mixers_vix import RealFourierTransform2d

    hidden = torch.randn(2, 65, 32, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(RealFourierTransform2d.apply, (hidden,))
    upstream = torch.randn(2, 65, 32, dtype=torch.float64)
    (expected,) = torch.autograd.grad(torch.fft.fft2(hidden, dim=(-2, -1)).real, hidden, upstream)
    (actual,) = torch.autograd.grad(RealFourierTransform2d.apply(hidden), hidden, upstream)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("per_head", [True, False])
def test_pinv_initial_scale_gradient_splits_ties_as_autograd_does(per_head):
    """Z0 = A^T / (max column sum * max row sum): the hand-written gradient of the two maxima, on matrices whose
    rows and columns tie (a permutation-symmetric block, as softmax kernels with equal rows give)."""
    from modeling_vix.nystrom_vix import initial_inverse, initial_inverse_backward

    tied = torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]], dtype=torch.float64)
    matrix = torch.stack([tied, torch.rand(3, 3, dtype=torch.float64)]).requires_grad_()
    upstream = torch.randn(2, 3, 3, dtype=torch.float64)
    (expected,) = torch.autograd.grad(initial_inverse(matrix, per_head), matrix, upstream)
    torch.testing.assert_close(initial_inverse_backward(matrix.detach(), upstream, per_head), expected)
