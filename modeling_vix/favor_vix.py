"""FAVOR+ (Performer) as plain tensor functions, and its training path as one autograd node.

    phi(x) = exp(w.x' - |x'|^2 / 2 - shift) + eps      (x' = x s^(1/2); "relu": relu(w.x') + eps)
    out = D^-1 phi(Q) (phi(K)^T [V, 1]),   D = the last column of the same product (the normaliser)

`favor_attention` keeps q, k, v, the small (M, Dv + 1) key-value summary and the normaliser for backward and
recomputes the (N, M) feature maps there. Its backward is written out (the matmul rules, the normalisation and the
feature map's derivative); the stabilising shifts are constants, as in the Performer reference code, so they get
no gradient. Against autograd through the same ops (with the maps recomputed by checkpointing) this avoids a second
pass over the two large products and most of the elementwise passes over the maps.
"""

import torch
import torch.nn.functional as F


EXP_EPSILON = 1e-4
RELU_EPSILON = 1e-3


def favor_features(x: torch.Tensor, projection: torch.Tensor, input_scale: float, kernel: str, stabilize: str):
    """phi(x) for x (B, H, N, D) -> (B, H, N, M), up to a constant factor (it cancels in the normalisation).

    stabilize: "row" (queries: a shift per token), "head" (keys: one per head, so ratios between keys hold) or
    "global" (keys: one over the whole batch, as performer-pytorch 1.0). The shift only keeps exp() finite.
    """
    scaled = x * input_scale  # D^-1/4 for the default scale, on the small (B, H, N, D) input
    projected = scaled @ projection.T  # (B, H, N, M)
    if kernel == "relu":
        return F.relu(projected) + RELU_EPSILON
    if stabilize == "row":
        shift = projected.amax(dim=-1, keepdim=True)
    elif stabilize == "global":
        shift = projected.amax()
    else:
        shift = projected.amax(dim=(-2, -1), keepdim=True)
    offset = 0.5 * scaled.square().sum(-1, keepdim=True) + shift.detach()  # (B, H, N, 1): one pass over the maps
    exponent = projected.sub_(offset)  # in place: each (B, H, N, M) map made here is one more at the peak
    if torch.is_grad_enabled() and exponent.requires_grad:
        return torch.exp(exponent) + EXP_EPSILON  # autograd keeps exp's output: no in-place add on it
    return exponent.exp_().add_(EXP_EPSILON)


def favor_features_backward(x, features, grad_features, projection, input_scale: float, kernel: str):
    """d loss / d x for `favor_features` (the shift held constant), from the features it returned. Overwrites
    `features` and `grad_features` (no further (B, H, N, M) map at the peak)."""
    if kernel == "relu":
        grad_projected = grad_features.mul_(features > RELU_EPSILON)
        return (grad_projected @ projection) * input_scale
    grad_exponent = grad_features.mul_(features.sub_(EXP_EPSILON))  # d exp(u) = exp(u) du
    # u = x' w^T - |x'|^2 / 2:  d x' = du w - sum(du) x'
    grad_scaled = grad_exponent @ projection - grad_exponent.sum(-1, keepdim=True) * (x * input_scale)
    return grad_scaled * input_scale


def favor_context(query_features, key_features, value):
    """D^-1 phi(Q) (phi(K)^T [V, 1]) from the feature maps -> (context (B, H, N, Dv), key_value (B, H, M, Dv + 1),
    normaliser (B, H, N, 1)). The column of ones makes the normaliser the last column of the same two GEMMs."""
    value_and_ones = F.pad(value, (0, 1), value=1.0)  # (B, H, N, Dv + 1)
    key_value = key_features.transpose(-1, -2) @ value_and_ones  # (B, H, M, Dv + 1)
    context_and_normaliser = query_features @ key_value  # (B, H, N, Dv + 1)
    normaliser = context_and_normaliser[..., -1:]
    return context_and_normaliser[..., :-1] / normaliser, key_value, normaliser


class FavorAttentionFunction(torch.autograd.Function):
    """D^-1 phi(Q) (phi(K)^T [V, 1]) for (B, H, N, D) inputs of one float dtype, as one autograd node."""

    @staticmethod
    def forward(ctx, query, key, value, projection, input_scale: float, kernel: str, key_stabilizer: str):
        query_features = favor_features(query, projection, input_scale, kernel, "row")  # (B, H, N, M)
        key_features = favor_features(key, projection, input_scale, kernel, key_stabilizer)
        context, key_value, normaliser = favor_context(query_features, key_features, value)
        ctx.save_for_backward(query, key, value, projection, key_value, normaliser)
        ctx.options = (input_scale, kernel, key_stabilizer)
        return context  # (B, H, N, Dv)

    @staticmethod
    def backward(ctx, grad_context):
        query, key, value, projection, key_value, normaliser = ctx.saved_tensors
        input_scale, kernel, key_stabilizer = ctx.options
        # The query side first, then the key side: two (B, H, N, M) maps alive at a time, not four.
        query_features = favor_features(query, projection, input_scale, kernel, "row")  # recomputed
        # context = numerator / normaliser, both columns of query_features @ key_value
        numerator = query_features @ key_value[..., :-1]  # (B, H, N, Dv), recomputed
        grad_numerator = grad_context / normaliser
        grad_normaliser = -(grad_numerator * numerator).sum(-1, keepdim=True) / normaliser
        grad_product = torch.cat([grad_numerator, grad_normaliser], dim=-1)  # (B, H, N, Dv + 1)
        grad_key_value = query_features.transpose(-1, -2) @ grad_product  # (B, H, M, Dv + 1)
        grad_query_features = grad_product @ key_value.transpose(-1, -2)  # (B, H, N, M)
        grad_query = favor_features_backward(query, query_features, grad_query_features, projection, input_scale,
                                             kernel)
        del query_features, grad_query_features
        # key_value = key_features^T [V, 1]
        key_features = favor_features(key, projection, input_scale, kernel, key_stabilizer)  # recomputed
        grad_value = key_features @ grad_key_value[..., :-1]  # (B, H, N, Dv)
        grad_key_features = F.pad(value, (0, 1), value=1.0) @ grad_key_value.transpose(-1, -2)  # (B, H, N, M)
        grad_key = favor_features_backward(key, key_features, grad_key_features, projection, input_scale, kernel)
        return grad_query, grad_key, grad_value, None, None, None, None


def favor_attention(query, key, value, projection, input_scale: float, kernel: str, key_stabilizer: str):
    """FAVOR+ attention of q, k (B, H, N, D) and v (B, H, N, Dv), one autograd node (see the module docstring)."""
    return FavorAttentionFunction.apply(query, key, value, projection, input_scale, kernel, key_stabilizer)


__all__ = ["favor_attention", "favor_context", "favor_features"]
