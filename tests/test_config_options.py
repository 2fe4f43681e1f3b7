"""Options beyond the switch matrix: explicit head_dim, and the authors' patch-embedding LayerNorms."""

import pytest
import torch
import torch.nn.functional as F
from huggingface_hub.errors import StrictDataclassFieldValidationError

from conftest import tiny_config
from modeling_vix import VixConfig, VixForImageClassification


@pytest.mark.parametrize("attention", ["softmax", "performer", "linformer", "nystrom"])
def test_head_dim_independent_of_hidden_size(attention):
    """The authors' models use dim_head=64 with hidden 128 and 4 heads: inner width 256 != hidden."""
    config = tiny_config(attention_type=attention, head_dim=16, position_embedding_type="rope_2d")
    model = VixForImageClassification(config).eval()
    mixer = model.vix.layers[0].attention
    assert mixer.q_proj.weight.shape == (4 * 16, 32) and mixer.o_proj.weight.shape == (32, 4 * 16)
    logits = model(torch.randn(2, 3, 32, 32)).logits
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_head_dim_lifts_divisibility_requirement():
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        tiny_config(hidden_size=30)
    assert tiny_config(hidden_size=30, head_dim=8).attention_head_dim == 8


def test_patch_embedding_norm_matches_explicit_patchify():
    """LayerNorm(patch pixels) -> Linear -> LayerNorm(hidden), written out with reshapes as an independent check."""
    config = tiny_config(patch_embedding_norm=True)
    embeddings = VixForImageClassification(config).vix.embeddings.patch_embeddings
    with torch.no_grad():
        for norm in (embeddings.norm_before, embeddings.norm_after):
            norm.weight.normal_()
            norm.bias.normal_()
    pixels = torch.randn(2, 3, 32, 32)
    p = config.patch_size
    patches = pixels.unflatten(2, (8, p)).unflatten(4, (8, p))  # (B, c, h, p1, w, p2)
    patches = patches.permute(0, 2, 4, 1, 3, 5).flatten(3).flatten(1, 2)  # (B, h*w, c*p1*p2)
    normed = F.layer_norm(patches, (3 * p * p,), embeddings.norm_before.weight, embeddings.norm_before.bias, 1e-5)
    tokens = normed @ embeddings.projection.weight.flatten(1).T + embeddings.projection.bias
    expected = F.layer_norm(tokens, (32,), embeddings.norm_after.weight, embeddings.norm_after.bias, 1e-5)
    actual = embeddings(pixels).flatten(2).transpose(1, 2)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_patch_embedding_norm_needs_linear_embedding():
    with pytest.raises(ValueError, match="embedding_type='linear'"):
        tiny_config(patch_embedding_norm=True, embedding_type="conv")


def test_cct_style_conv_stem_matches_explicit_conv_relu_pool():
    """conv_stem_downsampling='max_pool' with ReLU: conv -> ReLU -> pool, then conv -> pool, written out with F."""
    config = tiny_config(embedding_type="conv", conv_stem_channels=[8], conv_stem_activation="relu",
                         conv_stem_downsampling="max_pool", patch_size=4)
    model = VixForImageClassification(config).eval()
    stem = model.vix.embeddings.patch_embeddings
    first, second = (layer for layer in stem.convs if isinstance(layer, torch.nn.Conv2d))
    pixels = torch.randn(2, 3, 32, 32)
    features = F.max_pool2d(F.relu(F.conv2d(pixels, first.weight, first.bias, padding=1)), 3, 2, 1)
    expected = F.max_pool2d(F.conv2d(features, second.weight, second.bias, padding=1), 3, 2, 1)  # (2, 32, 8, 8)
    torch.testing.assert_close(stem(pixels), expected)
    assert model(pixels).logits.shape == (2, 10)


def test_default_conv_stem_keeps_the_paper_stem_and_its_checkpoint_keys():
    """No activation and stride on the last conv by default: the stem is linear, and keys stay convs.0/1/2."""
    config = tiny_config(embedding_type="conv", conv_stem_channels=[4, 8])
    stem = VixForImageClassification(config).vix.embeddings.patch_embeddings
    assert [key for key in stem.state_dict() if key.endswith("weight")] == [f"convs.{i}.weight" for i in range(3)]
    pixels = torch.randn(2, 3, 32, 32)
    # Linear as a whole: the stem of a sum is the sum of the stems (up to the biases counted once).
    zero = stem(torch.zeros_like(pixels))
    torch.testing.assert_close(stem(pixels + pixels) - zero, 2 * (stem(pixels) - zero), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides, error, pattern",
    [
        ({"embedding_type": "linear", "conv_stem_activation": "relu"}, ValueError, "embedding_type='conv'"),
        ({"embedding_type": "conv", "conv_stem_downsampling": "max_pool", "patch_size": 2}, ValueError,
         "patch_size must be 4"),
        # An unknown activation is refused by the field's own type (a Literal), naming the valid ones.
        ({"embedding_type": "conv", "conv_stem_activation": "tanh"}, StrictDataclassFieldValidationError,
         r"'conv_stem_activation' expected one of \('none', 'relu', 'gelu'\), got tanh"),
    ],
)
def test_conv_stem_options_reject_impossible_combinations(overrides, error, pattern):
    with pytest.raises(error, match=pattern):
        tiny_config(**{"conv_stem_channels": [8], **overrides})


def test_official_zero_padding_needs_projections_without_bias():
    """zeros_front pads q, k, v with zeros, which is what the official ViN's bias-free projections make of zero
    tokens; with a bias they would not be zero, so the combination is refused."""
    with pytest.raises(ValueError, match="set qkv_bias=False or nystrom_padding='none'"):
        VixConfig(attention_type="nystrom", nystrom_padding="zeros_front", qkv_bias=True)
    assert VixConfig(attention_type="nystrom", nystrom_padding="zeros_front").nystrom_padding == "zeros_front"
