"""Attention kernels of ViX: queries, keys and values in, context out. `attention_type` picks one from
`ATTENTION_KERNELS`, for every backbone alike.

A kernel never projects: each backbone's attention module owns its projections and calls them as modules (so peft's
LoRA, forward hooks, quantized Linears and tensor-parallel plans see them), then hands the heads to its kernel:

    kernel(query, key, value, attention_bias=None) -> context, weights
    query (B, H, Nq, D), key (B, H_kv, Nk, D), value (B, H_kv, Nk, Dv), bias broadcastable to (B, H, Nq, Nk)
    context (B, H, Nq, Dv); weights (B, H, Nq, Nk) where the kernel materialises them, else None

Keys and values may be fewer or more tokens than the queries (CvT's strided key/value projections, LeViT's shrink
attention). A kernel owns only what is its own: Nystrom its residual conv on V, Performer its random features,
Linformer its sequence projections. It also says what its module must project (`num_key_value_heads`,
`projects_values`: the Linformer package's compatibility settings share one key/value head, or use V = K).

`attention_bias` is added to the attention logits: exactly by softmax; by Nystrom through its landmarks (each
landmark's bias is the mean over the tokens it averages, on each of the three softmaxes); by Linformer through the
same sequence projection as its keys; FAVOR+ never forms the logits, so Performer refuses a bias (configs say so).

Attention maps follow transformers v5: `attn_implementation="eager"` materialises and returns them (for the linear
kernels too: their implicit Nq x Nk map), while the default fused path (`sdpa`) returns None and warns once if
`output_attentions` is asked for. Each kernel declares what it can do (`capabilities`, the same data as
`MIXER_CAPABILITIES`, which the configs read without importing this module).
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import initialization as init
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging

from .configuration_vix import MIXER_CAPABILITIES, MixerCapabilities
from .favor_vix import favor_attention, favor_context, favor_features
from .nystrom_vix import at_least_fp32, iterative_pinv, nystrom_attention, segment_means


logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class MixerShape:
    """The sizes of one layer's token mixer: width, heads, channels per head, and query tokens at the configured
    image size (which Linformer's and MLP-Mixer's parameters are sized by).

    num_key_tokens: keys (and values) per image when they differ from the queries (CvT's strided key/value
        projection, LeViT's shrink attention); None = the same tokens as the queries.
    scaling: the logit scale; None = head_dim ** -0.5 (CvT scales by its width ** -0.5).
    """

    hidden_size: int
    num_heads: int
    head_dim: int
    num_tokens: int
    num_key_tokens: int | None = None
    scaling: float | None = None

    @property
    def key_tokens(self) -> int:
        return self.num_tokens if self.num_key_tokens is None else self.num_key_tokens


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact softmax attention that also returns its weights; same signature as transformers' interface."""
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()  # (B, N, H, D)
    return output, weights


class AttentionKernel(nn.Module):
    """Base of the kernels. Subclasses set `capabilities` and implement `forward(query, key, value, attention_bias)`.

    The attention module sizes its projections by `num_key_value_heads` and builds a value projection only when
    `projects_values` (else the values are the unrotated keys).
    """

    capabilities: MixerCapabilities
    is_causal = False  # read by transformers' attention functions

    def __init__(self, config, shape: MixerShape):
        super().__init__()
        self.config = config
        self.shape = shape
        self.num_heads = shape.num_heads
        self.head_dim = shape.head_dim
        self.num_key_value_heads = shape.num_heads
        self.projects_values = True
        self.scaling = self.head_dim**-0.5 if shape.scaling is None else shape.scaling
        self.attention_dropout = config.attention_probs_dropout_prob

    def init_weights(self) -> None:
        """Initialise what `PreTrainedModel._init_weights` does not know (called from it, with
        `transformers.initialization`, which skips tensors loaded from a checkpoint)."""

    def on_training_forward(self) -> None:
        """Called once per training forward of the model, outside the layers (so an activation-checkpointed
        layer's recompute in backward does not count twice)."""

    @property
    def dropout_p(self) -> float:
        return self.attention_dropout if self.training else 0.0

    @property
    def materialize_attention_maps(self) -> bool:
        """v5's rule: the eager kernel builds the attention map, fused kernels don't."""
        return self.config._attn_implementation in (None, "eager")

    def warn_if_maps_unavailable(self, kwargs) -> None:
        if kwargs.get("output_attentions") and not self.materialize_attention_maps:
            logger.warning_once(
                f"attention_type={self.config.attention_type!r} with attn_implementation="
                f"{self.config._attn_implementation!r} does not build attention maps, so none are returned; load or "
                "set the model with attn_implementation='eager' to get them."
            )


class SoftmaxKernel(AttentionKernel):
    """Exact softmax attention (ViT), through transformers' attention interface (eager / sdpa / flex)."""

    capabilities = MIXER_CAPABILITIES["softmax"]

    def forward(self, query, key, value, attention_bias=None, **kwargs):
        self.warn_if_maps_unavailable(kwargs)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        mask = None
        if attention_bias is not None:  # a float mask is added to the logits by eager and sdpa
            mask = attention_bias.to(query.dtype)
            mask = mask if mask.ndim == 4 else mask[None]  # (1 or B, H, Nq, Nk)
        context, weights = attention(
            self, query, key, value, mask, dropout=self.dropout_p, scaling=self.scaling, **kwargs
        )  # context: (B, Nq, H, D)
        return context.transpose(1, 2), weights


def gaussian_orthogonal_random_matrix(num_rows: int, num_columns: int, generator=None) -> torch.Tensor:
    """Rows drawn in orthogonal blocks of `num_columns`, each row rescaled by the norm of a Gaussian vector
    (FAVOR+'s "positive orthogonal random features", Choromanski et al. 2020, section 2.4)."""
    blocks = []
    for _ in range(math.ceil(num_rows / num_columns)):
        gaussian = torch.randn(num_columns, num_columns, generator=generator)
        orthogonal, triangular = torch.linalg.qr(gaussian)
        # Fix the signs so Q is Haar-distributed (QR alone biases the row directions, and with them FAVOR+).
        orthogonal = orthogonal * torch.sign(torch.diagonal(triangular)).where(torch.diagonal(triangular) != 0, 1.0)
        blocks.append(orthogonal.T)
    matrix = torch.cat(blocks)[:num_rows]
    row_norms = torch.randn(num_rows, num_columns, generator=generator).norm(dim=1)
    return row_norms[:, None] * matrix


class PerformerKernel(AttentionKernel):
    """FAVOR+ (Performer): softmax attention approximated by positive random features, linear in N.

    The random projection is a persistent buffer, so it is saved and identical after a reload. It is never
    redrawn unless `performer_redraw_interval` > 0: then the model calls `on_training_forward()` once per
    training forward, and the count since the last redraw is a saved buffer too, so a resumed run keeps the
    schedule (reading it is one host sync per step, only in that mode).
    Feature maps and their contractions run in fp32: exp() of bf16/fp16 logits overflows or loses the ratio.
    """

    capabilities = MIXER_CAPABILITIES["performer"]

    def __init__(self, config, shape: MixerShape):
        super().__init__(config, shape)
        self.kernel = config.performer_kernel
        self.num_features = config.performer_num_features or int(self.head_dim * math.log(self.head_dim))
        self.redraw_interval = config.performer_redraw_interval
        self.global_key_stabilizer = config.performer_key_stabilizer == "global"
        # Drawn here (a meta tensor while from_pretrained builds the model, then the checkpoint's own matrix).
        projection = gaussian_orthogonal_random_matrix(self.num_features, self.head_dim)
        self.register_buffer("projection_matrix", projection, persistent=True)
        # Only with redraws: checkpoints of never-redrawn Performers keep their keys.
        counter = torch.zeros((), dtype=torch.long) if self.redraw_interval > 0 else None
        self.register_buffer("steps_since_redraw", counter, persistent=True)

    def init_weights(self) -> None:
        fresh = gaussian_orthogonal_random_matrix(self.num_features, self.head_dim)
        init.copy_(self.projection_matrix, fresh.to(self.projection_matrix.device))
        if self.steps_since_redraw is not None:
            init.zeros_(self.steps_since_redraw)

    @torch.no_grad()
    def redraw_projection(self) -> None:
        fresh = gaussian_orthogonal_random_matrix(self.num_features, self.head_dim)
        self.projection_matrix.copy_(fresh.to(self.projection_matrix))

    @torch.no_grad()
    def on_training_forward(self) -> None:
        """Redraw the features every `redraw_interval` training steps (interval 0: never)."""
        if self.steps_since_redraw is None:
            return
        self.steps_since_redraw += 1
        if int(self.steps_since_redraw) >= self.redraw_interval:
            self.redraw_projection()
            self.steps_since_redraw.zero_()

    @property
    def key_stabilizer(self) -> str:
        return "global" if self.global_key_stabilizer else "head"

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """phi(x) for x (B, H, N, D) in fp32 -> (B, H, N, M), up to a constant factor (`favor_vix.favor_features`).

        FAVOR+ is phi(x) = M^-1/2 (exp(w.x - |x|^2 / 2) + eps) with x scaled by D^-1/4 (so that
        phi(q).phi(k) ~ exp(q.k / sqrt(D))). Constant factors cancel between the output and its normaliser,
        so M^-1/2 is left out. exp() is stabilised by a per-query constant (cancels in the row normalisation) and,
        for keys, one constant per head (not per key), which keeps the ratios between keys intact.
        """
        stabilize = "row" if is_query else self.key_stabilizer
        return favor_features(x, self.projection_matrix.to(x.dtype), self.scaling**0.5, self.kernel, stabilize)

    def favor_attention_with_map(self, query, key, value):
        """FAVOR+ through autograd for fp32 (B, H, N, D) inputs, with its implicit (B, H, N, N) map (eager)."""
        query_features = self.feature_map(query, is_query=True)  # (B, H, N, M)
        key_features = self.feature_map(key, is_query=False)  # (B, H, N, M)
        context, _, normaliser = favor_context(query_features, key_features, value)
        return context, (query_features @ key_features.transpose(-1, -2)) / normaliser  # (B, H, N, N)

    def forward(self, query, key, value, attention_bias=None, **kwargs):
        self.warn_if_maps_unavailable(kwargs)
        if attention_bias is not None:
            raise ValueError(
                "Performer (FAVOR+) never forms the attention logits, so it cannot add an attention bias; build the "
                "backbone without one (e.g. LeViT's attention_bias=False) or use softmax, nystrom or linformer."
            )
        input_dtype = value.dtype
        with torch.autocast(device_type=value.device.type, enabled=False):
            query, key, value = at_least_fp32(query), at_least_fp32(key), at_least_fp32(value)
            weights = None
            if self.materialize_attention_maps:
                context, weights = self.favor_attention_with_map(query, key, value)
            else:
                # One autograd node that keeps q, k, v and recomputes the (B, H, N, M) feature maps (several times
                # the size of q, k, v) in backward: favor_vix.py.
                context = favor_attention(query, key, value, self.projection_matrix.to(query.dtype), self.scaling**0.5,
                                          self.kernel, self.key_stabilizer)
        context = F.dropout(context.to(input_dtype), p=self.dropout_p, training=self.training)
        return context, weights



class LinformerKernel(AttentionKernel):
    """Linformer: keys and values projected along the sequence axis from N to k, so cost is O(N k).

    `linformer_share_kv` shares the sequence projection of keys and values (E = F, the Linformer paper's
    key-value sharing). Two compatibility options reproduce the `linformer` package used by the paper's
    code: `linformer_one_kv_head` (one key/value head shared by all query heads) and
    `linformer_values_from_keys` (V = K: the module builds no value projection).
    """

    capabilities = MIXER_CAPABILITIES["linformer"]

    def __init__(self, config, shape: MixerShape):
        super().__init__(config, shape)
        self.num_key_value_heads = 1 if config.linformer_one_kv_head else shape.num_heads
        self.projects_values = not config.linformer_values_from_keys
        self.seq_len = shape.key_tokens
        self.seq_proj_k = nn.Parameter(torch.empty(self.seq_len, config.linformer_k))
        self.seq_proj_v = (
            None if config.linformer_share_kv else nn.Parameter(torch.empty(self.seq_len, config.linformer_k))
        )

    def init_weights(self) -> None:
        # The Linformer paper's init of E / F: uniform(+-1/sqrt(k)), so k projected tokens keep unit scale.
        bound = self.seq_proj_k.shape[-1] ** -0.5
        for projection in (self.seq_proj_k, self.seq_proj_v):
            if projection is not None:
                init.uniform_(projection, -bound, bound)

    def forward(self, query, key, value, attention_bias=None, **kwargs):
        self.warn_if_maps_unavailable(kwargs)
        num_keys = key.shape[-2]
        if num_keys != self.seq_len:
            raise ValueError(
                f"Linformer projects exactly {self.seq_len} tokens of keys (the image size and patch size of the "
                f"config), but got {num_keys}. Resize images to the configured `image_size`, or use another "
                "attention_type."
            )
        seq_proj_v = self.seq_proj_k if self.seq_proj_v is None else self.seq_proj_v
        # (B, kv_heads, k, D), made contiguous (k x D is small): einsum returns D-major strides, which would send
        # scaled_dot_product_attention to its unfused path
        key = torch.einsum("bhnd,nk->bhkd", key, self.seq_proj_k.to(key.dtype)).contiguous()
        value = torch.einsum("bhnd,nk->bhkd", value, seq_proj_v.to(value.dtype)).contiguous()
        mask = None
        if attention_bias is not None:  # a projected key's bias: the same projection of the keys' biases
            mask = (attention_bias.to(query.dtype) @ self.seq_proj_k.to(query.dtype))  # (.., H, Nq, k)
            mask = mask if mask.ndim == 4 else mask[None]
        if self.materialize_attention_maps:
            key, value = key.expand(-1, self.num_heads, -1, -1), value.expand(-1, self.num_heads, -1, -1)
            context, weights = eager_attention_forward(self, query, key, value, mask, self.scaling, self.dropout_p)
            return context.transpose(1, 2), weights  # back to (B, H, Nq, D)
        if key.shape[1] == 1 and mask is None:
            # One key/value head for all query heads: the heads are just more queries of one attention. Expanded
            # (stride-0) keys would send scaled_dot_product_attention to its slow unfused path.
            batch, heads, num_queries, head_dim = query.shape
            folded = query.transpose(1, 2).reshape(batch, 1, num_queries * heads, head_dim)  # (B, 1, Nq H, D)
            context = F.scaled_dot_product_attention(
                folded, key, value, dropout_p=self.dropout_p, scale=self.scaling
            )
            return context.view(batch, num_queries, heads, -1).transpose(1, 2), None  # (B, H, Nq, Dv)
        key, value = key.expand(-1, self.num_heads, -1, -1), value.expand(-1, self.num_heads, -1, -1)
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=self.dropout_p, scale=self.scaling
        )
        return context, None


def depthwise_token_conv(values: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Per-head 1D convolution along the tokens, zero-padded to keep N: values (B, H, N, D), taps (H, K), K odd.

    Same result as `Conv2d(H, H, (K, 1), padding=(K // 2, 0), groups=H)` on (B, H, N, D), written as a
    block-banded matmul: tokens are cut into blocks of L >= K // 2 so that an output block sees only its own
    block and its two neighbours, each through one (L, L) Toeplitz matrix of taps per head. Three large GEMMs
    on views of one padded copy: about 3x faster (forward + backward) than oneDNN's grouped conv at the
    paper's 1025 tokens, saving one copy of V for backward, and still linear in N.
    """
    batch, _, num_tokens, head_dim = values.shape
    kernel = taps.shape[-1]
    block = max(32, kernel // 2)
    if num_tokens <= 3 * block:  # few tokens: one (N, N) band per head costs fewer FLOPs than three blocks
        tap_index = torch.arange(num_tokens, device=values.device)
        tap_index = tap_index[None, :] - tap_index[:, None] + kernel // 2  # (N, N): output row, input column
        in_band = (tap_index >= 0) & (tap_index < kernel)
        band = (taps[:, tap_index.clamp(0, kernel - 1)] * in_band.to(taps.dtype)).to(values.dtype)  # (H, N, N)
        by_head = values.permute(1, 2, 0, 3).flatten(2)  # (H, N, B * D): one GEMM per head for the whole batch
        return (band @ by_head).unflatten(2, (batch, head_dim)).permute(2, 0, 1, 3)  # (B, H, N, D)
    num_blocks = -(-num_tokens // block)
    padded = F.pad(values, (0, 0, block, block + num_blocks * block - num_tokens))  # (B, H, (nb + 2) L, D)
    # (H, B, L, nb + 2, D): row r of block i is token (i - 1) L + r; one copy, viewed three times below.
    blocks = padded.unflatten(2, (num_blocks + 2, block)).permute(1, 0, 3, 2, 4).contiguous()
    rows = torch.arange(block, device=values.device)[:, None]
    cols = torch.arange(block, device=values.device)[None, :]
    output = 0
    for shift in (-1, 0, 1):  # the neighbour block feeding each output block
        tap_index = cols - rows + shift * block + kernel // 2  # (L, L)
        in_band = (tap_index >= 0) & (tap_index < kernel)
        toeplitz = (taps[:, tap_index.clamp(0, kernel - 1)] * in_band.to(taps.dtype)).to(values.dtype)  # (H, L, L)
        neighbours = blocks[:, :, :, 1 + shift : 1 + shift + num_blocks].flatten(3)  # (H, B, L, nb * D), a view
        output = output + toeplitz[:, None] @ neighbours
    output = output.unflatten(3, (num_blocks, head_dim)).permute(1, 0, 3, 2, 4)  # (B, H, nb, L, D)
    return output.flatten(2, 3)[:, :, :num_tokens]


class NystromKernel(AttentionKernel):
    """Nystromformer: softmax attention through m landmarks (segment means of q and k), O(N m).

    out = softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V  +  depthwise_conv(V)

    Training and inference run it as one autograd node (`nystrom_vix.nystrom_attention`) that keeps only q, k, v
    for backward and recomputes the N x m softmax maps there; the order softmax(Q K~^T) @ (pinv @ (softmax(Q~ K^T)
    @ V)) avoids every N x m x m product. An attention bias or the eager map go through autograd step by step.

    When m does not divide N, landmarks are means over runs of unequal length (see `segment_means`)
    instead of the official code's zero tokens. `nystrom_padding="zeros_front"` restores the official
    behaviour (zero tokens prepended, part of the landmarks and of the softmaxes) for exact reproduction: the
    official code projects zero tokens without bias (its config refuses qkv_bias), so they are zero q, k and v.
    """

    capabilities = MIXER_CAPABILITIES["nystrom"]

    def __init__(self, config, shape: MixerShape):
        super().__init__(config, shape)
        self.num_landmarks = config.nystrom_num_landmarks
        self.pinv_iterations = config.nystrom_pinv_iterations
        self.pad_zeros_front = config.nystrom_padding == "zeros_front"
        self.per_matrix_pinv_scale = config.nystrom_pinv_scale == "per_head"
        kernel = config.nystrom_residual_conv_kernel
        self.residual_conv = None
        # The conv adds a value per query token, so it exists only where queries and keys are the same tokens.
        if kernel > 0 and shape.key_tokens == shape.num_tokens:
            self.residual_conv = nn.Conv2d(
                self.num_heads, self.num_heads, (kernel, 1), padding=(kernel // 2, 0), groups=self.num_heads, bias=False
            )

    def pseudo_inverse(self, kernel: torch.Tensor) -> torch.Tensor:
        """The iteration keeps ~4 m x m products per step alive for backward; recomputing them in backward
        (cheap: O(m^3)) saves that memory, as flash attention does for its scores."""
        if torch.is_grad_enabled() and kernel.requires_grad:
            return checkpoint(
                iterative_pinv, kernel, self.pinv_iterations, self.per_matrix_pinv_scale, use_reentrant=False
            )
        return iterative_pinv(kernel, self.pinv_iterations, self.per_matrix_pinv_scale)

    def forward(self, query, key, value, attention_bias=None, **kwargs):
        self.warn_if_maps_unavailable(kwargs)
        num_tokens = query.shape[-2]
        if not self.pad_zeros_front or num_tokens % self.num_landmarks == 0:
            return self.attend(query, key, value, attention_bias)
        # Compatibility: zero tokens prepended to the self-attention's q, k, v, as the official code does.
        if key.shape[-2] != num_tokens or attention_bias is not None:
            raise ValueError(
                "nystrom_padding='zeros_front' reproduces the official ViN's self-attention only; use the default "
                "nystrom_padding='none' with separate keys and values or an attention bias."
            )
        num_padding = self.num_landmarks - num_tokens % self.num_landmarks
        query, key, value = (F.pad(x, (0, 0, num_padding, 0)) for x in (query, key, value))  # (B, H, pad + N, D)
        context, weights = self.attend(query, key, value)
        weights = None if weights is None else weights[..., num_padding:, num_padding:]
        return context[:, :, num_padding:], weights

    def attend(self, query, key, value, attention_bias=None):
        """The Nystrom approximation of softmax(q k^T + bias) v, plus the residual conv on v."""
        if attention_bias is None and not self.materialize_attention_maps:
            # One autograd node that keeps only q, k, v (and m-sized tensors) for backward: nystrom_vix.py.
            context = nystrom_attention(
                query, key, value, self.num_landmarks, self.scaling, self.pinv_iterations, self.per_matrix_pinv_scale
            )
            weights = None
        else:
            context, weights = self.attend_step_by_step(query, key, value, attention_bias)
        if self.residual_conv is not None:
            context = context + self.convolve_values(value)
        context = F.dropout(context, p=self.dropout_p, training=self.training)
        return context, weights

    def convolve_values(self, value: torch.Tensor) -> torch.Tensor:
        """The residual depthwise conv on V (B, H, N, Dv). In training its blocked copy of V is recomputed in
        backward instead of kept (V itself is kept by the attention anyway): one N-sized tensor less per layer."""
        taps = self.residual_conv.weight[:, 0, :, 0]  # weight (H, 1, K, 1), kept in Conv2d form for checkpoints
        if torch.is_grad_enabled() and (value.requires_grad or taps.requires_grad):
            return checkpoint(depthwise_token_conv, value, taps, use_reentrant=False)
        return depthwise_token_conv(value, taps)

    def attend_step_by_step(self, query, key, value, attention_bias=None):
        """The same approximation through autograd, for what the fused node does not do: an attention bias
        (LeViT), or the (B, H, Nq, Nk) map the eager implementation returns."""
        num_landmarks = min(self.num_landmarks, query.shape[-2], key.shape[-2])
        query_landmarks = segment_means(query, num_landmarks)  # (B, H, m, D)
        key_landmarks = segment_means(key, num_landmarks)
        # A landmark's bias is the mean bias of the tokens it averages: over keys (left), queries (right), both.
        left_bias = right_bias = kernel_bias = None
        if attention_bias is not None:
            bias = at_least_fp32(attention_bias)
            left_bias = segment_means(bias.transpose(-1, -2), num_landmarks).transpose(-1, -2)  # (.., Nq, m)
            right_bias = segment_means(bias, num_landmarks)  # (.., m, Nk)
            kernel_bias = segment_means(right_bias.transpose(-1, -2), num_landmarks).transpose(-1, -2)  # (.., m, m)

        input_dtype = value.dtype
        with torch.autocast(device_type=value.device.type, enabled=False):
            # The m x m kernel and its pseudo-inverse need fp32: the iteration cubes the matrix.
            logits = at_least_fp32(query_landmarks) @ at_least_fp32(key_landmarks).transpose(-1, -2) * self.scaling
            kernel = torch.softmax(logits if kernel_bias is None else logits + kernel_bias, -1)
            kernel_pinv = self.pseudo_inverse(kernel)  # (B, H, m, m)

        if self.materialize_attention_maps:
            left = at_least_fp32(query @ key_landmarks.transpose(-1, -2) * self.scaling)
            right = at_least_fp32(query_landmarks @ key.transpose(-1, -2) * self.scaling)
            if attention_bias is not None:
                left, right = left + left_bias, right + right_bias
            weights = (left.softmax(-1) @ kernel_pinv @ right.softmax(-1)).to(input_dtype)  # (B, H, Nq, Nk)
            return weights @ value, weights
        # Both N-sized softmax products are attentions: fused by scaled_dot_product_attention.
        if attention_bias is not None:
            left_bias, right_bias = left_bias.to(input_dtype), right_bias.to(input_dtype)
        landmark_context = F.scaled_dot_product_attention(
            query_landmarks, key, value, attn_mask=right_bias, scale=self.scaling
        )
        landmark_context = (kernel_pinv @ at_least_fp32(landmark_context)).to(input_dtype)  # (B, H, m, Dv)
        context = F.scaled_dot_product_attention(
            query, key_landmarks, landmark_context, attn_mask=left_bias, scale=self.scaling
        )
        return context, None


ATTENTION_KERNELS: dict[str, type[AttentionKernel]] = {
    "softmax": SoftmaxKernel,
    "performer": PerformerKernel,
    "linformer": LinformerKernel,
    "nystrom": NystromKernel,
}


def notify_training_forward(model: nn.Module) -> None:
    """Once per training forward of a model: let every kernel keep its per-step state (Performer redraws)."""
    if model.training:
        for module in model.modules():
            if isinstance(module, AttentionKernel):
                module.on_training_forward()


__all__ = ["ATTENTION_KERNELS", "AttentionKernel", "MixerShape", "eager_attention_forward", "notify_training_forward"]
