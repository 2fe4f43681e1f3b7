"""Token mixers of ViX: the one part of a layer that the config switches, shared by every backbone.

Every mixer is built as `MIXERS[config.attention_type](config, shape)`: `config` carries the mixer settings
(`VixMixerConfig`, the same fields on every backbone) and `shape` the layer's own sizes (`MixerShape`: width,
heads, head dim, token count), so one class serves a ViT layer and every stage of CCT or PiT alike.
Every mixer has the same call: tokens `(B, N, C)` in, `(B, N, C)` out plus attention weights (or None), with
optional RoPE tables `position_embeddings=(cos, sin)`; other keyword arguments (transformers' kwargs) pass through.

The four attention mixers are projections around one kernel, `attend(query, key, value, attention_bias)`, which
backbones with their own projections reuse (one implementation per mixer):
- keys and values may come from other tokens than the queries, and be fewer or more of them (CvT's strided
  conv projections give `key_states` / `value_states`; LeViT's shrink attention subsamples the queries);
  `MixerShape.num_key_tokens` sizes what depends on the key count (Linformer's sequence projection);
- `MixerShape(with_projections=False)` builds the kernel alone (LeViT projects q/k/v with BatchNorm itself);
- `attention_bias` (heads or batch, heads, queries, keys) is added to the attention logits: exactly by softmax;
  by Nystrom through its landmarks (each landmark's bias is the mean over the tokens it averages, on each of the
  three softmaxes); by Linformer through the same sequence projection as its keys (a projected key's bias is the
  projection of the keys' biases); FAVOR+ never forms the logits, so Performer refuses a bias (configs say so).

Attention maps follow transformers v5: `attn_implementation="eager"` materialises and returns them (for the
linear mixers too: their implicit N x keys map), while the default fused path (`sdpa`) returns None and warns
once if `output_attentions` is asked for. FNet and MLP-Mixer have no map in any mode.

Each class declares what it can do (`capabilities`, the same data as `MIXER_CAPABILITIES` that the configs read
without importing this module). The four attention mixers share the projection names `q_proj`, `k_proj`,
`v_proj`, `o_proj`, so a softmax checkpoint (ours, HF ViT/DeiT, vit-pytorch) carries over to each of them.
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


logger = logging.get_logger(__name__)


@dataclass(frozen=True)
class MixerShape:
    """The sizes of one layer's mixer: width, heads, channels per head, and tokens at the configured image size
    (which Linformer's and MLP-Mixer's parameters are sized by).

    num_key_tokens: keys (and values) per image when they differ from the queries (CvT's strided key/value
        projection, LeViT's shrink attention); None = the same tokens as the queries.
    scaling: the logit scale; None = head_dim ** -0.5 (CvT scales by its width ** -0.5).
    with_projections: False builds the attention kernel alone (`attend`), for a backbone that projects q/k/v and
        the output itself.
    """

    hidden_size: int
    num_heads: int
    head_dim: int
    num_tokens: int
    num_key_tokens: int | None = None
    scaling: float | None = None
    with_projections: bool = True

    @property
    def key_tokens(self) -> int:
        return self.num_tokens if self.num_key_tokens is None else self.num_key_tokens


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the interleaved-pair rotation of RoFormer."""
    pairs = x.unflatten(-1, (-1, 2))  # (..., D/2, 2)
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each (2i, 2i+1) pair of `x` (B, H, N, D) by the angles whose cos/sin are given as (N, D)."""
    return x * cos.to(x.dtype) + rotate_every_two(x) * sin.to(x.dtype)


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


class VixTokenMixer(nn.Module):
    """Base of all mixers. Subclasses set `capabilities` (from `MIXER_CAPABILITIES`) and implement `forward`."""

    capabilities: MixerCapabilities

    def __init__(self, config, shape: MixerShape):
        super().__init__()
        self.config = config
        self.shape = shape

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def init_weights(self) -> None:
        """Initialise what `PreTrainedModel._init_weights` does not know (called from it, with
        `transformers.initialization`, which skips tensors loaded from a checkpoint)."""

    def on_training_forward(self) -> None:
        """Called once per training forward of the model, outside the layers (so an activation-checkpointed
        layer's recompute in backward does not count twice)."""

    @property
    def materialize_attention_maps(self) -> bool:
        """v5's rule: the eager kernel builds the attention map, fused kernels don't."""
        return self.config._attn_implementation in (None, "eager")

    def warn_if_maps_unavailable(self, kwargs) -> None:
        if not kwargs.get("output_attentions"):
            return
        if self.capabilities.returns_attention_weights:
            if self.materialize_attention_maps:
                return
            logger.warning_once(
                f"attention_type={self.config.attention_type!r} with attn_implementation="
                f"{self.config._attn_implementation!r} does not build attention maps, so none are returned; load or "
                "set the model with attn_implementation='eager' to get them."
            )
        else:
            logger.warning_once(
                f"attention_type={self.config.attention_type!r} mixes tokens without attention weights, so no "
                "attention maps are returned (output_hidden_states works for every mixer)."
            )


class VixQKVMixer(VixTokenMixer):
    """Shared projections of the attention mixers: q/k/v per head, optional RoPE on q and k, output o_proj,
    around the mixer's kernel `attend`."""

    def __init__(self, config, shape: MixerShape, kv_heads: int | None = None, value_projection: bool = True):
        super().__init__(config, shape)
        self.num_heads = shape.num_heads
        self.head_dim = shape.head_dim
        self.num_kv_heads = kv_heads or self.num_heads
        self.scaling = self.head_dim**-0.5 if shape.scaling is None else shape.scaling
        self.attention_dropout = config.attention_probs_dropout_prob
        self.is_causal = False  # read by transformers' attention functions
        self.q_proj = self.k_proj = self.v_proj = self.o_proj = None
        if shape.with_projections:
            hidden, inner = shape.hidden_size, self.num_heads * self.head_dim
            kv_inner = self.num_kv_heads * self.head_dim
            self.q_proj = nn.Linear(hidden, inner, bias=config.qkv_bias)
            self.k_proj = nn.Linear(hidden, kv_inner, bias=config.qkv_bias)
            self.v_proj = nn.Linear(hidden, kv_inner, bias=config.qkv_bias) if value_projection else None
            self.o_proj = nn.Linear(inner, hidden)

    def split_heads(self, projected: torch.Tensor) -> torch.Tensor:
        """(B, N, heads * D) -> (B, heads, N, D)."""
        return projected.unflatten(-1, (-1, self.head_dim)).transpose(1, 2)

    def project_qkv(self, hidden_states, rope, key_states=None, value_states=None):
        """Queries, keys and values as (B, H, N, D); RoPE rotates q and k (never v), as in RoFormer.

        Self-attention runs the three projections as one GEMM on their concatenated weights: one 3C-wide product
        uses the matmul units better than three C-wide ones (and one read of the input in backward instead of
        three). With separate `key_states` / `value_states` (B, Nk, C), or fewer key/value heads, each input gets
        its own projection.
        """
        if key_states is not None or value_states is not None or self.num_kv_heads != self.num_heads:
            key_states = hidden_states if key_states is None else key_states
            value_states = key_states if value_states is None else value_states
            query = self.split_heads(self.q_proj(hidden_states))
            key, value = self.split_heads(self.k_proj(key_states)), self.split_heads(self.v_proj(value_states))
        else:
            projections = (self.q_proj, self.k_proj, self.v_proj)
            weight = torch.cat([projection.weight for projection in projections])
            bias = None if self.q_proj.bias is None else torch.cat([projection.bias for projection in projections])
            qkv = F.linear(hidden_states, weight, bias)  # (B, N, 3 * H * D)
            query, key, value = qkv.unflatten(-1, (3, self.num_heads, self.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
        if rope is not None:
            query, key = apply_rotary(query, *rope), apply_rotary(key, *rope)
        return query, key, value

    def forward(
        self, hidden_states, position_embeddings=None, key_states=None, value_states=None, attention_bias=None,
        **kwargs,
    ):
        """Tokens (B, Nq, C) attend to `key_states` / `value_states` (B, Nk, C; default: themselves)."""
        self.warn_if_maps_unavailable(kwargs)
        query, key, value = self.project_qkv(hidden_states, position_embeddings, key_states, value_states)
        context, weights = self.attend(query, key, value, attention_bias, **kwargs)
        return self.merge_heads(context), weights

    def attend(self, query, key, value, attention_bias=None, **kwargs):
        """The kernel: q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, Dv), bias broadcastable to (B, H, Nq, Nk)
        -> context (B, H, Nq, Dv) and the (B, H, Nq, Nk) weights when they are materialised, else None."""
        raise NotImplementedError

    def merge_heads(self, context: torch.Tensor) -> torch.Tensor:
        """(B, H, N, D) -> (B, N, C), then the output projection."""
        return self.o_proj(context.transpose(1, 2).flatten(2))

    @property
    def dropout_p(self) -> float:
        return self.attention_dropout if self.training else 0.0


class SoftmaxAttention(VixQKVMixer):
    """Exact softmax attention (ViT), through transformers' attention interface (eager / sdpa / flex)."""

    capabilities = MIXER_CAPABILITIES["softmax"]

    def attend(self, query, key, value, attention_bias=None, **kwargs):
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        mask = None
        if attention_bias is not None:  # a float mask is added to the logits by every interface
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


class PerformerAttention(VixQKVMixer):
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

    def feature_map(self, x: torch.Tensor, is_query: bool) -> torch.Tensor:
        """phi(x) for x (B, H, N, D) in fp32 -> (B, H, N, M), up to a constant factor.

        FAVOR+ is phi(x) = M^-1/2 (exp(w.x - |x|^2 / 2) + eps) with x scaled by D^-1/4 (so that
        phi(q).phi(k) ~ exp(q.k / sqrt(D))). Constant factors cancel between the output and its normaliser,
        so M^-1/2 is left out, and D^-1/4 is applied to the small (B, H, N, D) input, not to the maps.
        """
        x = x * self.scaling**0.5  # D^-1/4 for the default scale
        projected = x @ self.projection_matrix.float().T  # (B, H, N, M)
        if self.kernel == "relu":
            return F.relu(projected) + 1e-3
        # Stabilise exp: any per-query constant cancels in the row normalisation; for keys only one
        # constant per head (not per key) keeps the ratios between keys intact.
        if is_query:
            shift = projected.amax(dim=-1, keepdim=True)
        elif self.global_key_stabilizer:  # compatibility: one max over the whole batch (performer-pytorch 1.0)
            shift = projected.amax()
        else:
            shift = projected.amax(dim=(-2, -1), keepdim=True)
        offset = 0.5 * x.square().sum(-1, keepdim=True) + shift.detach()  # (B, H, N, 1): one pass over the maps
        return torch.exp(projected - offset) + 1e-4

    def favor_attention(self, query, key, value, return_weights=False):
        """D^-1 phi(Q) (phi(K)^T V) for fp32 (B, H, N, D) inputs, with D = diag(phi(Q) phi(K)^T 1).

        A column of ones appended to V makes the normaliser the last column of the same two GEMMs.
        """
        query_features = self.feature_map(query, is_query=True)  # (B, H, N, M)
        key_features = self.feature_map(key, is_query=False)  # (B, H, N, M)
        value_and_ones = F.pad(value, (0, 1), value=1.0)  # (B, H, N, D + 1)
        key_value = key_features.transpose(-1, -2) @ value_and_ones  # (B, H, M, D + 1)
        context_and_normaliser = query_features @ key_value  # (B, H, N, D + 1)
        normaliser = context_and_normaliser[..., -1:]
        context = context_and_normaliser[..., :-1] / normaliser  # (B, H, N, D)
        if not return_weights:
            return context
        return context, (query_features @ key_features.transpose(-1, -2)) / normaliser  # (B, H, N, N)

    def attend(self, query, key, value, attention_bias=None, **kwargs):
        if attention_bias is not None:
            raise ValueError(
                "Performer (FAVOR+) never forms the attention logits, so it cannot add an attention bias; build the "
                "backbone without one (e.g. LeViT's attention_bias=False) or use softmax, nystrom or linformer."
            )
        input_dtype = value.dtype
        with torch.autocast(device_type=value.device.type, enabled=False):
            query, key, value = query.float(), key.float(), value.float()
            weights = None
            if self.materialize_attention_maps:
                context, weights = self.favor_attention(query, key, value, return_weights=True)
            elif torch.is_grad_enabled():
                # The (B, H, N, M) feature maps and their exp() intermediates are several times the size of
                # q, k, v: keep only q, k, v for backward and recompute the rest there (cheap next to storing it).
                context = checkpoint(self.favor_attention, query, key, value, use_reentrant=False)
            else:
                context = self.favor_attention(query, key, value)
        context = F.dropout(context.to(input_dtype), p=self.dropout_p, training=self.training)
        return context, weights


class LinformerAttention(VixQKVMixer):
    """Linformer: keys and values projected along the sequence axis from N to k, so cost is O(N k).

    `linformer_share_kv` shares the sequence projection of keys and values (E = F, the Linformer paper's
    key-value sharing). Two compatibility options reproduce the `linformer` package used by the paper's
    code: `linformer_one_kv_head` (one key/value head shared by all query heads) and
    `linformer_values_from_keys` (V = K, no `v_proj`).
    """

    capabilities = MIXER_CAPABILITIES["linformer"]

    def __init__(self, config, shape: MixerShape):
        self.values_from_keys = config.linformer_values_from_keys
        super().__init__(
            config, shape, kv_heads=1 if config.linformer_one_kv_head else None,
            value_projection=not self.values_from_keys,
        )
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

    def forward(
        self, hidden_states, position_embeddings=None, key_states=None, value_states=None, attention_bias=None,
        **kwargs,
    ):
        if not self.values_from_keys:
            return super().forward(
                hidden_states, position_embeddings, key_states, value_states, attention_bias, **kwargs
            )
        self.warn_if_maps_unavailable(kwargs)
        key_states = hidden_states if key_states is None else key_states
        query = self.split_heads(self.q_proj(hidden_states))
        key = self.split_heads(self.k_proj(key_states))  # (B, kv_heads, Nk, D)
        value = key  # values keep the unrotated keys, as in the paper's code
        if position_embeddings is not None:
            query, key = apply_rotary(query, *position_embeddings), apply_rotary(key, *position_embeddings)
        context, weights = self.attend(query, key, value, attention_bias, **kwargs)
        return self.merge_heads(context), weights

    def attend(self, query, key, value, attention_bias=None, **kwargs):
        num_keys = key.shape[-2]
        if num_keys != self.seq_len:
            raise ValueError(
                f"Linformer projects exactly {self.seq_len} tokens of keys (the image size and patch size of the "
                f"config), but got {num_keys}. Resize images to the configured `image_size`, or use another "
                "attention_type."
            )
        seq_proj_v = self.seq_proj_k if self.seq_proj_v is None else self.seq_proj_v
        key = torch.einsum("bhnd,nk->bhkd", key, self.seq_proj_k.to(key.dtype))  # (B, kv_heads, k, D)
        value = torch.einsum("bhnd,nk->bhkd", value, seq_proj_v.to(value.dtype))
        key = key.expand(-1, self.num_heads, -1, -1)
        value = value.expand(-1, self.num_heads, -1, -1)
        mask = None
        if attention_bias is not None:  # a projected key's bias: the same projection of the keys' biases
            mask = (attention_bias.to(query.dtype) @ self.seq_proj_k.to(query.dtype))  # (.., H, Nq, k)
            mask = mask if mask.ndim == 4 else mask[None]
        if self.materialize_attention_maps:
            context, weights = eager_attention_forward(self, query, key, value, mask, self.scaling, self.dropout_p)
            return context.transpose(1, 2), weights  # back to (B, H, Nq, D)
        context = F.scaled_dot_product_attention(
            query, key, value, attn_mask=mask, dropout_p=self.dropout_p, scale=self.scaling
        )
        return context, None


def iterative_pinv(matrix: torch.Tensor, iterations: int, per_matrix_scale: bool) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of (..., m, m) by the Nystromformer paper's iteration (its eq. 16).

    Z0 = A^T / (max column sum * max row sum) guarantees convergence. With `per_matrix_scale` the maxima are
    taken per matrix, so a sample's result does not depend on the other samples of its batch; otherwise over
    the whole tensor, as the `nystrom-attention` package does.
    """
    absolute = matrix.abs()
    col_sums, row_sums = absolute.sum(dim=-2), absolute.sum(dim=-1)
    if per_matrix_scale:
        scale = col_sums.amax(-1, keepdim=True)[..., None] * row_sums.amax(-1, keepdim=True)[..., None]
    else:
        scale = col_sums.max() * row_sums.max()
    inverse = matrix.transpose(-1, -2) / scale
    identity = torch.eye(matrix.shape[-1], device=matrix.device, dtype=matrix.dtype)
    for _ in range(iterations):
        product = matrix @ inverse
        inverse = 0.25 * inverse @ (13 * identity - product @ (15 * identity - product @ (7 * identity - product)))
    return inverse


def segment_means(x: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Means of `num_segments` consecutive runs of tokens of x (B, H, N, D) -> (B, H, m, D).

    When m divides N the runs have equal length N/m. Otherwise they have length floor(N/m) or ceil(N/m)
    (token j belongs to run floor(j m / N)), so every landmark is the mean of real tokens only: no
    padding tokens are invented, and nothing needs masking.
    """
    num_tokens = x.shape[-2]
    if num_tokens % num_segments == 0:
        return x.unflatten(-2, (num_segments, num_tokens // num_segments)).mean(dim=-2)
    segment_of_token = torch.arange(num_tokens, device=x.device) * num_segments // num_tokens
    membership = F.one_hot(segment_of_token, num_segments).T.to(x.dtype)  # (m, N)
    averaging = membership / membership.sum(dim=-1, keepdim=True)
    return averaging @ x


def depthwise_token_conv(values: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Per-head 1D convolution along the tokens, zero-padded to keep N: values (B, H, N, D), taps (H, K), K odd.

    Same result as `Conv2d(H, H, (K, 1), padding=(K // 2, 0), groups=H)` on (B, H, N, D), written as a
    block-banded matmul: tokens are cut into blocks of L >= K // 2 so that an output block sees only its own
    block and its two neighbours, each through one (L, L) Toeplitz matrix of taps per head. Three large GEMMs
    on views of one padded copy: about 3x faster (forward + backward) than oneDNN's grouped conv at the
    paper's 1025 tokens, saving one copy of V for backward, and still linear in N.
    """
    _, _, num_tokens, head_dim = values.shape
    kernel = taps.shape[-1]
    block = max(32, kernel // 2)
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


class NystromAttention(VixQKVMixer):
    """Nystromformer: softmax attention through m landmarks (segment means of q and k), O(N m).

    out = softmax(Q K~^T) pinv(softmax(Q~ K~^T)) softmax(Q~ K^T) V  +  depthwise_conv(V)

    The two N-sized softmax products are themselves softmax attentions, so both run through
    `scaled_dot_product_attention` (fused, never storing an N x m map in fp32 twice); the order
    softmax(Q K~^T) @ (pinv @ (softmax(Q~ K^T) @ V)) avoids every N x m x m product.

    When m does not divide N, landmarks are means over runs of unequal length (see `segment_means`)
    instead of the official code's zero tokens. `nystrom_padding="zeros_front"` restores the official
    behaviour (zero tokens prepended, part of the landmarks and of the softmaxes) for exact reproduction.
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

    def forward(
        self, hidden_states, position_embeddings=None, key_states=None, value_states=None, attention_bias=None,
        **kwargs,
    ):
        num_tokens = hidden_states.shape[1]
        if not self.pad_zeros_front or num_tokens % self.num_landmarks == 0:
            return super().forward(
                hidden_states, position_embeddings, key_states, value_states, attention_bias, **kwargs
            )
        # Compatibility: zero tokens prepended to the self-attention input, as the official code does.
        if key_states is not None or value_states is not None or attention_bias is not None:
            raise ValueError(
                "nystrom_padding='zeros_front' reproduces the official ViN's self-attention only; use the default "
                "nystrom_padding='none' with separate keys and values or an attention bias."
            )
        self.warn_if_maps_unavailable(kwargs)
        rope = position_embeddings
        num_padding = self.num_landmarks - num_tokens % self.num_landmarks
        hidden_states = F.pad(hidden_states, (0, 0, num_padding, 0))
        if rope is not None:  # padded tokens get the identity rotation
            cos, sin = rope
            rope = (F.pad(cos, (0, 0, num_padding, 0), value=1.0), F.pad(sin, (0, 0, num_padding, 0)))
        query, key, value = self.project_qkv(hidden_states, rope)
        context, weights = self.attend(query, key, value, **kwargs)
        output = self.merge_heads(context)[:, num_padding:]
        weights = None if weights is None else weights[..., num_padding:, num_padding:]
        return output, weights

    def attend(self, query, key, value, attention_bias=None, **kwargs):
        num_landmarks = min(self.num_landmarks, query.shape[-2], key.shape[-2])
        query_landmarks = segment_means(query, num_landmarks)  # (B, H, m, D)
        key_landmarks = segment_means(key, num_landmarks)
        # A landmark's bias is the mean bias of the tokens it averages: over keys (left), queries (right), both.
        left_bias = right_bias = kernel_bias = None
        if attention_bias is not None:
            bias = attention_bias.float()
            left_bias = segment_means(bias.transpose(-1, -2), num_landmarks).transpose(-1, -2)  # (.., Nq, m)
            right_bias = segment_means(bias, num_landmarks)  # (.., m, Nk)
            kernel_bias = segment_means(right_bias.transpose(-1, -2), num_landmarks).transpose(-1, -2)  # (.., m, m)

        input_dtype = value.dtype
        with torch.autocast(device_type=value.device.type, enabled=False):
            # The m x m kernel and its pseudo-inverse need fp32: the iteration cubes the matrix.
            logits = query_landmarks.float() @ key_landmarks.float().transpose(-1, -2) * self.scaling
            kernel = torch.softmax(logits if kernel_bias is None else logits + kernel_bias, -1)
            kernel_pinv = self.pseudo_inverse(kernel)  # (B, H, m, m)

        if self.materialize_attention_maps:
            left = (query @ key_landmarks.transpose(-1, -2) * self.scaling).float()
            right = (query_landmarks @ key.transpose(-1, -2) * self.scaling).float()
            if attention_bias is not None:
                left, right = left + left_bias, right + right_bias
            weights = (left.softmax(-1) @ kernel_pinv @ right.softmax(-1)).to(input_dtype)  # (B, H, Nq, Nk)
            context = weights @ value
        else:
            if attention_bias is not None:
                left_bias, right_bias = left_bias.to(input_dtype), right_bias.to(input_dtype)
            landmark_context = F.scaled_dot_product_attention(
                query_landmarks, key, value, attn_mask=right_bias, scale=self.scaling
            )
            landmark_context = (kernel_pinv @ landmark_context.float()).to(input_dtype)  # (B, H, m, Dv)
            context = F.scaled_dot_product_attention(
                query, key_landmarks, landmark_context, attn_mask=left_bias, scale=self.scaling
            )
            weights = None
        if self.residual_conv is not None:  # weight (H, 1, K, 1), kept in Conv2d form for checkpoints
            context = context + depthwise_token_conv(value, self.residual_conv.weight[:, 0, :, 0])
        context = F.dropout(context, p=self.dropout_p, training=self.training)
        return context, weights


class RealFourierTransform2d(torch.autograd.Function):
    """y = Re(DFT_tokens(DFT_hidden(x))) for real x, with the backward pass written out.

    The DFT matrix W is symmetric, so for y = Re(W_N x W_C) the gradient is Re(W_N g W_C): the same transform
    of the incoming gradient. Autograd would instead differentiate through complex tensors and their copies.
    """

    @staticmethod
    def forward(ctx, hidden_states):
        return torch.fft.fft2(hidden_states, dim=(-2, -1)).real

    @staticmethod
    def backward(ctx, grad_output):
        return torch.fft.fft2(grad_output, dim=(-2, -1)).real


class FNetMixer(VixTokenMixer):
    """FNet: the real part of the 2D discrete Fourier transform over (tokens, hidden). No parameters."""

    capabilities = MIXER_CAPABILITIES["fnet"]

    def forward(self, hidden_states, position_embeddings=None, **kwargs):
        self.warn_if_maps_unavailable(kwargs)
        # torch has no half-precision FFT on CPU (and only power-of-two sizes on GPU): compute in fp32.
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            mixed = RealFourierTransform2d.apply(hidden_states.float())
        return mixed.to(hidden_states.dtype), None


class TokenMixingMLP(VixTokenMixer):
    """MLP-Mixer's token mixing: one MLP across the N tokens, shared by all channels."""

    capabilities = MIXER_CAPABILITIES["mixer"]

    def __init__(self, config, shape: MixerShape):
        super().__init__(config, shape)
        self.seq_len = shape.num_tokens
        hidden = max(1, int(self.seq_len * config.mixer_token_expansion))
        self.fc1 = nn.Linear(self.seq_len, hidden)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.fc2 = nn.Linear(hidden, self.seq_len)

    def forward(self, hidden_states, position_embeddings=None, **kwargs):
        self.warn_if_maps_unavailable(kwargs)
        num_tokens = hidden_states.shape[1]
        if num_tokens != self.seq_len:
            raise ValueError(
                f"The MLP-Mixer token MLP mixes exactly {self.seq_len} tokens (the image size and patch size of the "
                f"config), but got {num_tokens}. Resize images to the configured `image_size`."
            )
        tokens_last = hidden_states.transpose(1, 2)  # (B, C, N)
        mixed = self.fc2(self.dropout(self.activation(self.fc1(tokens_last))))
        return mixed.transpose(1, 2), None


MIXERS: dict[str, type[VixTokenMixer]] = {
    "softmax": SoftmaxAttention,
    "performer": PerformerAttention,
    "linformer": LinformerAttention,
    "nystrom": NystromAttention,
    "fnet": FNetMixer,
    "mixer": TokenMixingMLP,
}

def notify_training_forward(model: nn.Module) -> None:
    """Once per training forward of a model: let every mixer keep its per-step state (Performer redraws)."""
    if model.training:
        for module in model.modules():
            if isinstance(module, VixTokenMixer):
                module.on_training_forward()


__all__ = ["MIXERS", "MixerShape", "VixTokenMixer", "apply_rotary", "notify_training_forward"]
