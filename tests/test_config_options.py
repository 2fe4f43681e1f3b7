"""Options beyond the switch matrix: explicit head_dim, and the authors' patch-embedding LayerNorms."""

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_config
from modeling_vix import VixForImageClassification


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
