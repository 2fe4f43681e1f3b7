"""The attention module of ViX's ViT, CCT, PiT and CvT layers: it owns the projections `q_proj`, `k_proj`, `v_proj`,
`o_proj` and calls them as modules (so peft's LoRA, forward hooks, quantized Linears and tensor-parallel plans see
them), rotates queries and keys by RoPE where the backbone has it, and hands the heads to the kernel that
`attention_type` picks from `ATTENTION_KERNELS` (`kernels_vix.py`).

The names are shared by every kernel, so a softmax checkpoint (ours, HF ViT/DeiT, vit-pytorch) carries over to
Performer, Linformer and Nystrom. CvT subclasses it to put its convolutional projections in front (one file away).
"""

import torch
from torch import nn

from .kernels_vix import ATTENTION_KERNELS, MixerShape


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the interleaved-pair rotation of RoFormer."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., D/2, 2)
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (2i, 2i+1) pair of `x` (B, H, N, D) by the angles whose cos/sin are given as (N, D)."""
    return x * cos.to(x.dtype) + rotate_every_two(x) * sin.to(x.dtype)


class VixAttention(nn.Module):
    """Multi-head attention: queries from `hidden_states`, keys and values from the same tokens (or, for a
    subclass, from other ones), q/k/v/o projections as modules, and the configured kernel in between.

    `self.kernel` says how many key/value heads to project and whether to project values at all (Linformer's
    compatibility settings); without a value projection the values are the unrotated keys, as in the `linformer`
    package.
    """

    def __init__(self, config, shape: MixerShape):
        super().__init__()
        self.head_dim = shape.head_dim
        self.kernel = ATTENTION_KERNELS[config.attention_type](config, shape)
        hidden, inner = shape.hidden_size, shape.num_heads * shape.head_dim
        key_value_inner = self.kernel.num_key_value_heads * shape.head_dim
        self.q_proj = nn.Linear(hidden, inner, bias=config.qkv_bias)
        self.k_proj = nn.Linear(hidden, key_value_inner, bias=config.qkv_bias)
        self.v_proj = nn.Linear(hidden, key_value_inner, bias=config.qkv_bias) if self.kernel.projects_values else None
        self.o_proj = nn.Linear(inner, hidden)

    def split_heads(self, projected: torch.Tensor) -> torch.Tensor:
        """(B, N, heads * D) -> (B, heads, N, D)."""
        return projected.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)

    def attend_tokens(
        self,
        query_states: torch.Tensor,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens (B, Nq, C) attend to keys and values made from (B, Nk, C) -> (B, Nq, C) and the weights or None."""
        query = self.split_heads(self.q_proj(query_states))  # (B, H, Nq, D)
        key = self.split_heads(self.k_proj(key_states))  # (B, H_kv, Nk, D)
        value = key if self.v_proj is None else self.split_heads(self.v_proj(value_states))
        if position_embeddings is not None:  # RoPE rotates q and k, never v (RoFormer)
            query, key = apply_rotary(query, *position_embeddings), apply_rotary(key, *position_embeddings)
        context, weights = self.kernel(query, key, value, **kwargs)  # (B, H, Nq, Dv)
        return self.o_proj(context.transpose(1, 2).flatten(2)), weights

    def forward(
        self, hidden_states: torch.Tensor, position_embeddings=None, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention: (B, N, C) -> (B, N, C) and the (B, H, N, N) weights where the kernel builds them."""
        return self.attend_tokens(hidden_states, hidden_states, hidden_states, position_embeddings, **kwargs)


__all__ = ["VixAttention", "apply_rotary"]
