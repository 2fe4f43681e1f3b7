"""Nystromformer's math as plain tensor functions, and its training path as one autograd node.

    out = softmax(Q K~^T s) pinv(softmax(Q~ K~^T s)) softmax(Q~ K^T s) V      (Q~, K~: m landmarks)

`nystrom_attention` computes it as one autograd node (`NystromAttentionFunction`) that keeps q, k, v and a few
m-sized tensors (landmarks, landmark values, log-sum-exps) for backward and recomputes the rest there (the N-sized
attention output, the m x m kernel and every step of its pseudo-inverse), as flash attention does for its scores.
Its backward is written out (the attention and matmul rules, and the Moore-Penrose iteration differentiated step
by step, so the gradients are those of autograd through the same iteration, not of an exact inverse). Against
autograd through the same ops this saves the N-sized tensors the two attentions would store and about half the
small ops of the m x m iteration (which dominate at a few dozen tokens)."""

import torch
import torch.nn.functional as F


def iterative_pinv(matrix: torch.Tensor, iterations: int, per_matrix_scale: bool) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse of (..., m, m) by the Nystromformer paper's iteration (its eq. 16).

    Z0 = A^T / (max column sum * max row sum) guarantees convergence. With `per_matrix_scale` the maxima are
    taken per matrix, so a sample's result does not depend on the other samples of its batch; otherwise over
    the whole tensor, as the `nystrom-attention` package does. Written as in the paper (autograd-friendly); the
    fused path runs the same steps in `pinv_steps`.
    """
    inverse = initial_inverse(matrix, per_matrix_scale)
    identity = torch.eye(matrix.shape[-1], device=matrix.device, dtype=matrix.dtype)
    for _ in range(iterations):
        product = matrix @ inverse
        inverse = 0.25 * inverse @ (13 * identity - product @ (15 * identity - product @ (7 * identity - product)))
    return inverse


def initial_inverse(matrix: torch.Tensor, per_matrix_scale: bool) -> torch.Tensor:
    """Z0 = A^T / (max column sum of |A| * max row sum of |A|), per matrix or over the whole tensor."""
    absolute = matrix.abs()
    col_sums, row_sums = absolute.sum(dim=-2), absolute.sum(dim=-1)
    if per_matrix_scale:
        scale = col_sums.amax(-1, keepdim=True)[..., None] * row_sums.amax(-1, keepdim=True)[..., None]
    else:
        scale = col_sums.max() * row_sums.max()
    return matrix.transpose(-1, -2) / scale


def pinv_steps(matrix: torch.Tensor, iterations: int, per_matrix_scale: bool, keep_steps: bool = True):
    """The iteration of `iterative_pinv` on (b, m, m), one fused GEMM per product. Returns the pseudo-inverse and,
    per step if `keep_steps`, what its backward needs: (Z_i, P = A Z_i, T1 = 7I - P, T2 = 15I - P T1, T3 = 13I - P T2).
    """
    identity = torch.eye(matrix.shape[-1], device=matrix.device, dtype=matrix.dtype).expand_as(matrix)
    seven, fifteen, thirteen = (c * identity for c in (7, 15, 13))  # made once, not per step
    inverse = initial_inverse(matrix, per_matrix_scale)
    steps = []
    for _ in range(iterations):
        product = torch.bmm(matrix, inverse)
        t1 = seven - product
        t2 = torch.baddbmm(fifteen, product, t1, alpha=-1)
        t3 = torch.baddbmm(thirteen, product, t2, alpha=-1)
        if keep_steps:
            steps.append((inverse, product, t1, t2, t3))
        inverse = torch.bmm(inverse, t3).mul_(0.25)
    return inverse, steps


def pinv_backward(matrix: torch.Tensor, grad_inverse: torch.Tensor, steps, per_matrix_scale: bool):
    """d loss / d A for `pinv_steps(A)` given d loss / d pinv, all (b, m, m), and the steps `pinv_steps` returned:
    the iteration differentiated step by step, signs folded into the fused GEMMs (no negations)."""
    grad_matrix = torch.zeros_like(matrix)
    grad = grad_inverse  # d loss / d Z_{i+1}
    for inverse, product, t1, t2, t3 in reversed(steps):
        # Z' = Z T3 / 4
        grad_t3 = torch.bmm(inverse.transpose(1, 2), grad).mul_(0.25)
        grad_z = torch.bmm(grad, t3.transpose(1, 2)).mul_(0.25)
        # T3 = 13I - P T2;  T2 = 15I - P T1;  T1 = 7I - P.  With a = P^T dT3 and b = P^T a: dT2 = -a, dT1 = b, and
        # dP = -dT3 T2^T - dT2 T1^T - dT1 = -(b + dT3 T2^T - a T1^T) = -negative_grad_product
        a = torch.bmm(product.transpose(1, 2), grad_t3)
        b = torch.bmm(product.transpose(1, 2), a)
        negative_grad_product = torch.baddbmm(b, grad_t3, t2.transpose(1, 2))
        negative_grad_product = torch.baddbmm(negative_grad_product, a, t1.transpose(1, 2), alpha=-1)
        # P = A Z
        grad_matrix = torch.baddbmm(grad_matrix, negative_grad_product, inverse.transpose(1, 2), alpha=-1)
        grad = torch.baddbmm(grad_z, matrix.transpose(1, 2), negative_grad_product, alpha=-1)
    return grad_matrix + initial_inverse_backward(matrix, grad, per_matrix_scale)


def initial_inverse_backward(matrix: torch.Tensor, grad: torch.Tensor, per_matrix_scale: bool) -> torch.Tensor:
    """d loss / d A for Z0 = A^T / s, s = (max column sum of |A|) (max row sum of |A|), given d loss / d Z0, as
    autograd computes it: a max passes its gradient to the largest sums, split evenly between ties."""
    absolute = matrix.abs()
    col_sums, row_sums = absolute.sum(dim=-2), absolute.sum(dim=-1)  # (b, m)
    if per_matrix_scale:
        col_max, row_max = col_sums.amax(-1, keepdim=True), row_sums.amax(-1, keepdim=True)  # (b, 1)
        col_pick, row_pick = (col_sums == col_max).to(matrix.dtype), (row_sums == row_max).to(matrix.dtype)
        col_pick, row_pick = col_pick / col_pick.sum(-1, keepdim=True), row_pick / row_pick.sum(-1, keepdim=True)
    else:
        col_max, row_max = col_sums.max(), row_sums.max()
        col_pick, row_pick = (col_sums == col_max).to(matrix.dtype), (row_sums == row_max).to(matrix.dtype)
        col_pick, row_pick = col_pick / col_pick.sum(), row_pick / row_pick.sum()
    scale = col_max * row_max  # (b, 1) or ()
    grad_transposed = grad.transpose(-1, -2)
    # d loss / d s = -sum(G * A^T) / s^2, per matrix or over all of them
    weighted = (grad_transposed * matrix).sum(dim=(-2, -1))  # (b,)
    grad_scale = -(weighted[:, None] if per_matrix_scale else weighted.sum()) / scale.square()
    grad_absolute = (grad_scale * row_max * col_pick)[..., None, :] + (grad_scale * col_max * row_pick)[..., :, None]
    scale_per_entry = scale[..., None] if per_matrix_scale else scale
    return grad_transposed / scale_per_entry + grad_absolute * matrix.sign()


def segment_means(x: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Means of `num_segments` consecutive runs of tokens of x (..., N, D) -> (..., m, D).

    When m divides N the runs have equal length N/m. Otherwise they have length floor(N/m) or ceil(N/m)
    (token j belongs to run floor(j m / N)), so every landmark is the mean of real tokens only: no
    padding tokens are invented, and nothing needs masking.
    """
    num_tokens = x.shape[-2]
    if x.ndim != 4:  # attention biases (..., N, N')
        if num_tokens % num_segments == 0:
            return x.unflatten(-2, (num_segments, num_tokens // num_segments)).mean(dim=-2)
        return segment_averaging(num_tokens, num_segments, x) @ x
    if num_tokens % num_segments == 0:
        # (B, H, N, D) averaged in (B, N, H, D) order, the layout of heads split from a projection: no copy of x
        runs = x.transpose(1, 2).unflatten(1, (num_segments, num_tokens // num_segments))  # (B, m, N/m, H, D)
        return runs.mean(dim=2).transpose(1, 2)
    # einsum contracts N without expanding the (m, N) averaging to every (batch, head), as a broadcast matmul would
    return torch.einsum("mn,bhnd->bhmd", segment_averaging(num_tokens, num_segments, x), x)


def segment_means_backward(grad_means: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The gradient of `segment_means` (B, H, m, D) -> (B, H, N, D): each token gets its run's gradient / length."""
    num_segments = grad_means.shape[-2]
    if num_tokens % num_segments == 0:
        run = num_tokens // num_segments
        return (grad_means / run).repeat_interleave(run, dim=-2)
    return torch.einsum("mn,bhmd->bhnd", segment_averaging(num_tokens, num_segments, grad_means), grad_means)


def segment_averaging(num_tokens: int, num_segments: int, like: torch.Tensor) -> torch.Tensor:
    """(m, N): row i averages the tokens of run i (token j is in run floor(j m / N))."""
    segment_of_token = torch.arange(num_tokens, device=like.device) * num_segments // num_tokens
    membership = F.one_hot(segment_of_token, num_segments).T.to(like.dtype)  # (m, N)
    return membership / membership.sum(dim=-1, keepdim=True)


def at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    """bf16 / fp16 -> fp32; fp32 and fp64 stay (so float64 gradient checks see float64 throughout)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def softmax_backward(grad: torch.Tensor, probabilities: torch.Tensor) -> torch.Tensor:
    """d loss / d logits of a last-dim softmax, p * (g - sum(g * p)), in one fused pass."""
    return torch.ops.aten._softmax_backward_data(grad, probabilities, -1, probabilities.dtype)


def attention_probabilities(query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T) over the keys (the scale already in q or k), in fp32 or wider, cast back to q's dtype."""
    logits = torch.matmul(query, key.transpose(-1, -2))
    return torch.softmax(at_least_fp32(logits), dim=-1).to(query.dtype)


def scale_smaller(query: torch.Tensor, key: torch.Tensor, scaling: float):
    """Fold the logit scale into whichever of q and k has fewer tokens (the landmarks): m x D multiplications
    instead of N x m."""
    if query.shape[-2] <= key.shape[-2]:
        return query * scaling, key
    return query, key * scaling


def softmax_attention(query, key, value, scaling: float, blocked: bool):
    """softmax(q k^T s) v -> (output, log-sum-exp per query or None). `blocked`: torch's fused CPU kernel (the one
    `scaled_dot_product_attention` picks on CPU: blocks of keys, never the Nq x Nk map); else matmul + softmax
    (faster for a few dozen tokens, as the math backend is)."""
    if blocked:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, scale=scaling)
    return attention_probabilities(*scale_smaller(query, key, scaling)) @ value, None


def softmax_attention_backward(grad_output, query, key, value, output, logsumexp, scaling: float, blocked: bool):
    """The gradients of `softmax_attention` for q, k, v. The blocked kernel needs the output (recomputed if None);
    matmul + softmax recomputes the map."""
    if blocked:
        if output is None:
            output, _ = softmax_attention(query, key, value, scaling, blocked)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_output, query, key, value, output, logsumexp, 0.0, False, scale=scaling
        )
    scaled_query, scaled_key = scale_smaller(query, key, scaling)
    probabilities = attention_probabilities(scaled_query, scaled_key)  # (B, H, Nq, Nk)
    grad_value = probabilities.transpose(-1, -2) @ grad_output
    grad_logits = softmax_backward(at_least_fp32(grad_output @ value.transpose(-1, -2)), at_least_fp32(probabilities))
    grad_logits = grad_logits.to(query.dtype)
    # logits = s q k^T with s folded into one operand: the other one's gradient still needs it
    grad_query = grad_logits @ scaled_key
    grad_key = grad_logits.transpose(-1, -2) @ scaled_query
    if scaled_query is query:
        grad_key = grad_key * scaling
    else:
        grad_query = grad_query * scaling
    return grad_query, grad_key, grad_value


class NystromAttentionFunction(torch.autograd.Function):
    """The Nystrom approximation as one autograd node (see the module docstring), for tensors (B, H, N, D) of one
    dtype. The two N-sized attentions run blocked (torch's fused CPU kernel) or as matmul + softmax (`blocked`);
    the m x m kernel, its pseudo-inverse and their products in fp32 or wider (the iteration cubes the matrix).
    Kept for backward: q, k, v (the projections' outputs, alive anyway), the landmarks, the landmark values and
    the log-sum-exps; the m x m kernel and its pseudo-inverse are recomputed (O(m^3))."""

    @staticmethod
    def forward(ctx, query, key, value, num_landmarks: int, scaling: float, iterations: int, per_matrix_scale: bool,
                blocked: bool):
        query_landmarks = segment_means(query, num_landmarks)  # (B, H, m, D)
        key_landmarks = segment_means(key, num_landmarks)
        kernel = landmark_kernel(query_landmarks, key_landmarks, scaling)  # (B, H, m, m)
        kernel_pinv, _ = pinv_steps(kernel.flatten(0, 1), iterations, per_matrix_scale, keep_steps=False)
        kernel_pinv = kernel_pinv.view_as(kernel)
        # out = softmax(q K~^T s) @ mixed_values;  mixed_values = pinv @ softmax(Q~ k^T s) v
        landmark_values, right_logsumexp = softmax_attention(query_landmarks, key, value, scaling, blocked)
        mixed_values = (kernel_pinv @ at_least_fp32(landmark_values)).to(value.dtype)  # (B, H, m, Dv)
        output, left_logsumexp = softmax_attention(query, key_landmarks, mixed_values, scaling, blocked)
        ctx.save_for_backward(query, key, value, query_landmarks, key_landmarks, landmark_values, right_logsumexp,
                              left_logsumexp)
        ctx.options = (scaling, iterations, per_matrix_scale, blocked)
        return output  # (B, H, Nq, Dv)

    @staticmethod
    def backward(ctx, grad_output):
        query, key, value, query_landmarks, key_landmarks, landmark_values, right_logsumexp, left_logsumexp = (
            ctx.saved_tensors
        )
        scaling, iterations, per_matrix_scale, blocked = ctx.options
        dtype = value.dtype
        with torch.autocast(device_type=value.device.type, enabled=False):
            # recomputed, all m-sized: the kernel, its pseudo-inverse (with the steps its backward needs), mixed values
            kernel = landmark_kernel(query_landmarks, key_landmarks, scaling)
            kernel_pinv, pinv_steps_taken = pinv_steps(kernel.flatten(0, 1), iterations, per_matrix_scale)
            kernel_pinv = kernel_pinv.view_as(kernel)
            mixed_values = (kernel_pinv @ at_least_fp32(landmark_values)).to(dtype)
            grad_query, grad_key_landmarks, grad_mixed = softmax_attention_backward(
                grad_output.to(dtype), query, key_landmarks, mixed_values, None, left_logsumexp, scaling, blocked
            )
            # mixed_values = pinv(kernel) @ landmark_values
            grad_mixed = at_least_fp32(grad_mixed)
            grad_pinv = grad_mixed @ at_least_fp32(landmark_values).transpose(-1, -2)  # (B, H, m, m)
            grad_landmark_values = (kernel_pinv.transpose(-1, -2) @ grad_mixed).to(dtype)  # (B, H, m, Dv)
            grad_kernel = pinv_backward(
                kernel.flatten(0, 1), grad_pinv.flatten(0, 1), pinv_steps_taken, per_matrix_scale
            )
            # kernel = softmax(Q~ K~^T s)
            grad_kernel_logits = softmax_backward(grad_kernel.view_as(kernel), kernel) * scaling  # (B, H, m, m)
            grad_query_landmarks = grad_kernel_logits @ at_least_fp32(key_landmarks)
            grad_key_landmarks = at_least_fp32(grad_key_landmarks) + (
                grad_kernel_logits.transpose(-1, -2) @ at_least_fp32(query_landmarks)
            )
            # landmark_values = softmax(Q~ k^T s) v
            grad_right_query, grad_key, grad_value = softmax_attention_backward(
                grad_landmark_values, query_landmarks, key, value, landmark_values, right_logsumexp, scaling, blocked
            )
            grad_query_landmarks = grad_query_landmarks + at_least_fp32(grad_right_query)
            # the landmarks are segment means of q and k
            grad_query = grad_query + segment_means_backward(grad_query_landmarks.to(dtype), query.shape[-2])
            grad_key = grad_key + segment_means_backward(grad_key_landmarks.to(dtype), key.shape[-2])
        return grad_query, grad_key, grad_value, None, None, None, None, None


def landmark_kernel(query_landmarks: torch.Tensor, key_landmarks: torch.Tensor, scaling: float) -> torch.Tensor:
    """softmax(Q~ K~^T s), (B, H, m, m), in fp32 or wider."""
    return attention_probabilities(at_least_fp32(query_landmarks), at_least_fp32(key_landmarks) * scaling)


@torch.compiler.assume_constant_result
def fused_attention_enabled() -> bool:
    """Whether `scaled_dot_product_attention` may use its fused kernel here (the `sdpa_kernel` context's choice);
    a constant to torch.compile, so reading it does not break the graph."""
    return torch.backends.cuda.flash_sdp_enabled()


def nystrom_attention(
    query, key, value, num_landmarks: int, scaling: float, iterations: int, per_matrix_scale: bool
) -> torch.Tensor:
    """The Nystrom approximation of softmax(q k^T s) v for q (B, H, Nq, D), k (B, H, Nk, D), v (B, H, Nk, Dv), with
    min(m, Nq, Nk) landmarks, as one autograd node (`NystromAttentionFunction`, autocast off inside). The N-sized
    attentions run in torch's fused CPU kernel unless it is switched off (`torch.nn.attention.sdpa_kernel`
    without FLASH_ATTENTION, as `--sdpa_backend math` does), the tensors are not on the CPU or the values are wider
    than the keys; otherwise as matmul + softmax."""
    num_landmarks = min(num_landmarks, query.shape[-2], key.shape[-2])
    # torch's fused CPU kernel wants values as wide as keys (LeViT's are wider)
    blocked = value.device.type == "cpu" and fused_attention_enabled() and value.shape[-1] == query.shape[-1]
    with torch.autocast(device_type=value.device.type, enabled=False):
        dtype = value.dtype
        return NystromAttentionFunction.apply(
            query.to(dtype), key.to(dtype), value, num_landmarks, scaling, iterations, per_matrix_scale, blocked
        )


__all__ = ["iterative_pinv", "nystrom_attention", "segment_means"]
