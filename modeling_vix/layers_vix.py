"""The parts every ViX backbone builds its layers from: the MLP, stochastic depth, the pre-norm layer, the token
mixer a layer gets for its `attention_type`, the classification head, and the token-grid reshapes.
"""

import torch
from torch import nn
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs

from .attention_vix import VixAttention
from .kernels_vix import ATTENTION_KERNELS, MixerShape
from .mixers_vix import TOKEN_MIXERS


def build_token_mixer(config, shape: MixerShape) -> nn.Module:
    """The self-attention module with the configured kernel, or FNet / MLP-Mixer, which replace attention."""
    if config.attention_type in ATTENTION_KERNELS:
        return VixAttention(config, shape)
    return TOKEN_MIXERS[config.attention_type](config, shape)


def grid_to_tokens(features: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h*w, C), raster order."""
    return features.flatten(2).transpose(1, 2)


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, C) -> (B, C, h, w)."""
    return tokens.transpose(1, 2).unflatten(-1, grid)


class VixMLP(nn.Module):
    def __init__(self, config, hidden_size: int, intermediate_size: int):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation_fn(self.fc1(hidden_states))))


class VixDropPath(nn.Module):
    """Stochastic depth: in training, drop a residual branch for a whole sample with probability p and scale the
    kept ones by 1 / (1 - p); the identity in eval mode (and when p = 0)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        keep = torch.rand((hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1), device=hidden_states.device)
        return hidden_states * (keep < keep_prob).to(hidden_states.dtype) / keep_prob

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class VixLayer(GradientCheckpointingLayer):
    """x = x + attention(norm(x)); x = x + mlp(norm(x)). Only the attention (token mixer) changes between variants.

    The backbone builds `attention` (`build_token_mixer` for ViT, CCT and PiT; CvT's convolutional attention);
    keyword arguments of `forward` (RoPE tables, CvT's token grid, transformers' kwargs) reach it unchanged.
    `drop_path_rate` is stochastic depth on both residual branches (0 = off). CCT's block differs in one place,
    which `normalize_stream_before_mlp` switches: the residual stream itself is normalised after the attention,
    x = norm(x + attention(norm(x))); x = x + mlp(x), as in the official CCT code.
    """

    def __init__(
        self,
        config,
        hidden_size: int,
        intermediate_size: int,
        attention: nn.Module,
        drop_path_rate: float = 0.0,
        normalize_stream_before_mlp: bool = False,
    ):
        super().__init__()
        self.normalize_stream_before_mlp = normalize_stream_before_mlp
        self.layernorm_before = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.attention = attention
        self.layernorm_after = nn.LayerNorm(hidden_size, eps=config.layer_norm_eps)
        self.mlp = VixMLP(config, hidden_size, intermediate_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = VixDropPath(drop_path_rate)

    def forward(self, hidden_states: torch.Tensor, **kwargs: Unpack[TransformersKwargs]) -> torch.Tensor:
        mixed, _ = self.attention(self.layernorm_before(hidden_states), **kwargs)
        hidden_states = hidden_states + self.drop_path(self.dropout(mixed))
        if self.normalize_stream_before_mlp:
            hidden_states = self.layernorm_after(hidden_states)
            return hidden_states + self.drop_path(self.dropout(self.mlp(hidden_states)))
        return hidden_states + self.drop_path(self.dropout(self.mlp(self.layernorm_after(hidden_states))))


def classifier_head(hidden_size: int, num_labels: int) -> nn.Module:
    """A linear head, or the identity when num_labels is 0 (features out, as in transformers)."""
    return nn.Linear(hidden_size, num_labels) if num_labels > 0 else nn.Identity()


__all__ = [
    "VixDropPath", "VixLayer", "VixMLP", "build_token_mixer", "classifier_head", "grid_to_tokens", "tokens_to_grid",
]
