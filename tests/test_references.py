"""ViX against independent implementations, with weights copied across.

- softmax ViX model  vs transformers' ViTForImageClassification (logits, hidden states, attention maps)
- nystrom mixer      vs the `nystrom-attention` package (the paper code's dependency)
- performer mixer    vs `performer-pytorch`'s FastAttention, with the same projection matrix
- linformer mixer    vs the `linformer` package's LinformerSelfAttention
plus quality checks against exact softmax attention (Nystrom with m = N, FAVOR+ with many features,
uneven landmark segments vs zero padding) and internal consistency (eager vs sdpa, attention maps).

Attention modules are built as the model builds them, `VixAttention(config, MixerShape)`;
`config._attn_implementation` picks the fused path ("sdpa", no maps) or the eager one that materialises the
attention map.
"""

import copy
import math

import pytest
import torch
from torch import nn

from conftest import tiny_config
from modeling_vix import VixConfig, VixForImageClassification
from modeling_vix.attention_vix import VixAttention
from modeling_vix.kernels_vix import MixerShape, eager_attention_forward, segment_means


def layer_shape(config: VixConfig) -> MixerShape:
    return MixerShape(config.hidden_size, config.num_attention_heads, config.attention_head_dim, config.num_tokens)


def build_mixer(config, attn_implementation="sdpa") -> VixAttention:
    """The attention module of a ViT layer, with the kernel of `config.attention_type`, as the model builds it.
    `config._attn_implementation` picks its path: "sdpa" (the models' default) is the fused one without maps,
    "eager" materialises the attention map."""
    config._attn_implementation = attn_implementation
    return VixAttention(config, layer_shape(config))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors only: one intra-op thread keeps this file fast even when other processes hold the CPUs
    (with several OpenMP threads, the ~2k tiny QR factorisations of a 16k-feature projection then crawl)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return ((approx - exact).norm() / exact.norm()).item()


def assert_close(actual, expected, atol, what):
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    diff = max_diff(actual, expected)
    print(f"{what}: max abs diff {diff:.2e} (scale {expected.abs().max().item():.2e})")
    assert diff <= atol, f"{what}: max abs diff {diff:.3e} > {atol:.0e}"


@torch.no_grad()
def randomize_(module: nn.Module, std: float = 0.3, seed: int = 0) -> None:
    """Weights far from the near-uniform-attention init: std `std`, LayerNorm gains around 1."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if "layernorm" in name and name.endswith("weight"):
            param.copy_(1 + 0.2 * noise)
        elif name.endswith("bias"):
            param.copy_(0.1 * noise)
        else:
            param.copy_(std * noise)


# ---------------------------------------------------------------------------------------------------------
# 1. softmax ViX == transformers ViT
# ---------------------------------------------------------------------------------------------------------

VIT_SIZES = dict(
    image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=64, qkv_bias=True, layer_norm_eps=1e-12, num_labels=10,
)


def vit_and_vix(attn_implementation: str):
    from transformers import ViTConfig, ViTForImageClassification

    vit = ViTForImageClassification(ViTConfig(**VIT_SIZES)).eval()
    randomize_(vit)
    vix_config = VixConfig(
        **VIT_SIZES, attention_type="softmax", embedding_type="linear", position_embedding_type="learned",
        pooling="cls", hidden_act="gelu",
    )
    vix = VixForImageClassification(vix_config).eval()
    renamed = {("vix." + key[len("vit."):] if key.startswith("vit.") else key): value
               for key, value in vit.state_dict().items()}
    assert set(renamed) == set(vix.state_dict()), (
        f"only in ViT: {sorted(set(renamed) - set(vix.state_dict()))}; "
        f"only in ViX: {sorted(set(vix.state_dict()) - set(renamed))}"
    )
    print(f"ViT keys renamed vit.* -> vix.*, all equal to ViX's: {sorted(renamed)}")
    vix.load_state_dict(renamed, strict=True)
    vit.set_attn_implementation(attn_implementation)
    vix.set_attn_implementation(attn_implementation)
    assert vit.config._attn_implementation == vix.config._attn_implementation == attn_implementation
    return vit, vix


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@torch.no_grad()
def test_softmax_logits_match_hf_vit(cifar_pixels, attn_implementation):
    vit, vix = vit_and_vix(attn_implementation)
    expected = vit(cifar_pixels).logits
    assert expected.std() > 0.1  # random weights, not a trivial model
    assert_close(vix(cifar_pixels).logits, expected, 1e-5, f"ViT logits ({attn_implementation})")


@torch.no_grad()
def test_softmax_hidden_states_and_attentions_match_hf_vit(cifar_pixels):
    vit, vix = vit_and_vix("eager")
    pixels = cifar_pixels[:4]
    expected = vit(pixels, output_hidden_states=True, output_attentions=True)
    actual = vix(pixels, output_hidden_states=True, output_attentions=True)
    assert len(actual.hidden_states) == len(expected.hidden_states) == VIT_SIZES["num_hidden_layers"] + 1
    for index, (mine, theirs) in enumerate(zip(actual.hidden_states, expected.hidden_states, strict=True)):
        assert_close(mine, theirs, 1e-5, f"hidden_states[{index}]")
    assert len(actual.attentions) == len(expected.attentions) == VIT_SIZES["num_hidden_layers"]
    for index, (mine, theirs) in enumerate(zip(actual.attentions, expected.attentions, strict=True)):
        assert mine.shape == (4, 4, 65, 65)
        assert theirs.amax(-1).mean() > 0.2  # attention maps far from uniform (1/65)
        assert_close(mine, theirs, 1e-5, f"attentions[{index}]")
    assert_close(actual.logits, expected.logits, 1e-5, "logits with outputs")


# ---------------------------------------------------------------------------------------------------------
# 2. nystrom mixer == nystrom-attention package
# ---------------------------------------------------------------------------------------------------------


def nystrom_pair(hidden, heads, landmarks, iterations=6, conv_kernel=33, **vix_options):
    from nystrom_attention import NystromAttention as ReferenceNystrom

    reference = ReferenceNystrom(
        dim=hidden, dim_head=hidden // heads, heads=heads, num_landmarks=landmarks, pinv_iterations=iterations,
        residual=True, residual_conv_kernel=conv_kernel,
    ).eval()
    randomize_(reference, std=1.1 / math.sqrt(hidden))  # q.k / sqrt(d) of std ~1: attention far from uniform
    config = tiny_config(
        attention_type="nystrom", hidden_size=hidden, num_attention_heads=heads, qkv_bias=False,
        nystrom_num_landmarks=landmarks, nystrom_pinv_iterations=iterations,
        nystrom_residual_conv_kernel=conv_kernel, **vix_options,
    )
    mixer = build_mixer(config).eval()
    with torch.no_grad():
        q, k, v = reference.to_qkv.weight.chunk(3, dim=0)
        mixer.q_proj.weight.copy_(q)
        mixer.k_proj.weight.copy_(k)
        mixer.v_proj.weight.copy_(v)
        mixer.o_proj.weight.copy_(reference.to_out[0].weight)
        mixer.o_proj.bias.copy_(reference.to_out[0].bias)
        mixer.kernel.residual_conv.weight.copy_(reference.res_conv.weight)
    return reference, mixer


NYSTROM_CASES = {
    # name: (batch, tokens, hidden, heads, landmarks, conv kernel, ViX options)
    "N64_m16_global": (3, 64, 32, 4, 16, 5, dict(nystrom_pinv_scale="global")),
    "paper_N1024_m64_global": (2, 1024, 128, 4, 64, 33, dict(nystrom_pinv_scale="global")),
    "N64_m16_per_head_single_matrix": (1, 64, 32, 1, 16, 5, dict(nystrom_pinv_scale="per_head")),
    "paper_N1024_m64_per_head_single_matrix": (1, 1024, 32, 1, 64, 33, dict(nystrom_pinv_scale="per_head")),
    "N1025_m64_zeros_front_global": (
        2, 1025, 128, 4, 64, 33, dict(nystrom_padding="zeros_front", nystrom_pinv_scale="global")
    ),
    "N70_m16_zeros_front_global": (
        2, 70, 32, 4, 16, 5, dict(nystrom_padding="zeros_front", nystrom_pinv_scale="global")
    ),
}


@pytest.mark.parametrize("case", list(NYSTROM_CASES))
@torch.no_grad()
def test_nystrom_mixer_matches_nystrom_attention_package(case):
    batch, tokens, hidden, heads, landmarks, kernel, options = NYSTROM_CASES[case]
    reference, mixer = nystrom_pair(hidden, heads, landmarks, conv_kernel=kernel, **options)
    hidden_states = torch.randn(batch, tokens, hidden)
    expected = reference(hidden_states)
    actual, weights = mixer(hidden_states)  # the fused (sdpa) path
    assert weights is None
    assert_close(actual, expected, 1e-5, f"nystrom {case}")
    # the map path (eager) computes the same output as the fused path
    mixer.kernel.config._attn_implementation = "eager"
    with_map, weights = mixer(hidden_states, output_attentions=True)
    assert weights.shape == (batch, heads, tokens, tokens)
    assert_close(with_map, expected, 1e-5, f"nystrom {case}, output_attentions path")


@pytest.mark.parametrize("case", ["N64_m16_global", "N70_m16_zeros_front_global"])
@pytest.mark.parametrize("backend", ["fused", "math"])
def test_nystrom_gradients_match_nystrom_attention_package(case, backend):
    """ViX's Nystrom node has a hand-written backward: its gradients (inputs and every weight) must be autograd's
    through the package's forward, on both of its attention paths (fused CPU kernel, matmul + softmax)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    batch, tokens, hidden, heads, landmarks, kernel, options = NYSTROM_CASES[case]
    reference, mixer = nystrom_pair(hidden, heads, landmarks, conv_kernel=kernel, **options)
    reference, mixer = reference.double().train(), mixer.double().train()
    hidden_states = torch.randn(batch, tokens, hidden, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(batch, tokens, hidden, dtype=torch.float64)
    reference_inputs = {"input": hidden_states, **dict(reference.named_parameters())}
    grads = torch.autograd.grad(reference(hidden_states), list(reference_inputs.values()), upstream)
    expected = dict(zip(reference_inputs, grads, strict=True))
    backends = [SDPBackend.MATH] if backend == "math" else [SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]
    with sdpa_kernel(backends):
        output, _ = mixer(hidden_states)
    mixer_inputs = {"input": hidden_states, **dict(mixer.named_parameters())}
    got = dict(zip(mixer_inputs, torch.autograd.grad(output, list(mixer_inputs.values()), upstream), strict=True))
    # the package packs q, k, v into one Linear: its gradient is ViX's three stacked
    got["to_qkv.weight"] = torch.cat([got.pop(f"{name}_proj.weight") for name in "qkv"])
    renamed = {"o_proj.weight": "to_out.0.weight", "o_proj.bias": "to_out.0.bias",
               "kernel.residual_conv.weight": "res_conv.weight"}
    got = {renamed.get(name, name): grad for name, grad in got.items()}
    assert got.keys() == expected.keys()
    for name, want in expected.items():
        assert_close(got[name], want, 1e-9 * max(1.0, want.abs().max().item()), f"{case} {backend}: d/d {name}")


@torch.no_grad()
def test_nystrom_per_head_scale_makes_samples_independent_of_batch():
    """per_head: a sample's output does not depend on the batch; global (the package) does, measurably."""
    outputs = {}
    for scale in ("per_head", "global"):
        _, mixer = nystrom_pair(32, 4, 16, iterations=6, conv_kernel=5, nystrom_pinv_scale=scale)
        sample = torch.randn(1, 64, 32, generator=torch.Generator().manual_seed(1))
        other = 5 * torch.randn(1, 64, 32, generator=torch.Generator().manual_seed(2))
        alone, _ = mixer(sample)
        in_batch, _ = mixer(torch.cat([sample, other]))
        outputs[scale] = max_diff(alone[0], in_batch[0])
    print(f"batch dependence: {outputs}")
    assert outputs["per_head"] < 1e-5
    assert outputs["global"] > 1e-4


# ---------------------------------------------------------------------------------------------------------
# 3. nystrom quality against exact softmax attention
# ---------------------------------------------------------------------------------------------------------


def softmax_twin(mixer: VixAttention, config: VixConfig) -> VixAttention:
    """Exact softmax attention with another mixer's q/k/v/o weights (and its attn_implementation, so the same
    path)."""
    softmax_config = copy.deepcopy(config)
    softmax_config.attention_type = "softmax"
    softmax_config._attn_implementation = config._attn_implementation
    exact = VixAttention(softmax_config, layer_shape(softmax_config)).eval()
    exact.load_state_dict({k: v for k, v in mixer.state_dict().items() if not k.startswith("kernel.")}, strict=True)
    return exact


@torch.no_grad()
def test_nystrom_with_all_tokens_as_landmarks_is_exact_softmax():
    config = tiny_config(
        attention_type="nystrom", hidden_size=32, num_attention_heads=4, nystrom_num_landmarks=17,
        nystrom_pinv_iterations=30, nystrom_residual_conv_kernel=0,
    )
    nystrom = build_mixer(config, "eager").eval()  # eager: both mixers return their maps
    randomize_(nystrom, std=0.15)
    assert nystrom.kernel.residual_conv is None
    exact = softmax_twin(nystrom, config)
    hidden_states = torch.randn(2, 17, 32)
    expected, weights = exact(hidden_states, output_attentions=True)
    assert weights.amax(-1).mean() > 0.12  # far from uniform (1/17 = 0.06)
    actual, nystrom_weights = nystrom(hidden_states, output_attentions=True)
    assert_close(actual, expected, 1e-4, "nystrom m=N vs softmax")
    assert_close(nystrom_weights, weights, 1e-4, "nystrom m=N attention map vs softmax")


def image_tokens(cifar_pixels, hidden=32):
    """(16, 65, hidden) smooth, real tokens: a cls token plus 64 linear 4x4-patch embeddings of each real CIFAR
    image, layer-normalized."""
    generator = torch.Generator().manual_seed(3)
    projection = torch.randn(hidden, 3 * 4 * 4, generator=generator) / math.sqrt(48)
    patches = nn.functional.unfold(cifar_pixels, kernel_size=4, stride=4).transpose(1, 2)  # (16, 64, 48)
    tokens = patches @ projection.T
    cls = torch.randn(1, 1, hidden, generator=generator).expand(len(tokens), -1, -1)
    tokens = torch.cat([cls, tokens], dim=1)
    return nn.functional.layer_norm(tokens, (hidden,))


@torch.no_grad()
def test_nystrom_uneven_segments_beat_zero_padding(cifar_pixels):
    """65 tokens, 8 landmarks: runs of 8 or 9 real tokens approximate softmax better than 7 zero tokens in front.

    Not for every single image (about 80% of (image, weights) pairs), so the errors are pooled over the 16 real
    images and four random weight draws.
    """
    hidden_states = image_tokens(cifar_pixels)  # (16, 65, 32)
    per_image = {"none": [], "zeros_front": []}
    for seed in range(4):
        errors = {}
        for padding in ("none", "zeros_front"):
            config = tiny_config(
                attention_type="nystrom", nystrom_num_landmarks=8, nystrom_pinv_iterations=6,
                nystrom_residual_conv_kernel=0, nystrom_padding=padding,
            )
            nystrom = build_mixer(config).eval()
            randomize_(nystrom, std=0.15, seed=seed)
            exact = softmax_twin(nystrom, config)
            approx, expected = nystrom(hidden_states)[0], exact(hidden_states)[0]
            per_image[padding].append((approx - expected).flatten(1).norm(dim=1) / expected.flatten(1).norm(dim=1))
            errors[padding] = per_image[padding][-1].mean().item()
        print(f"nystrom mean relative error vs softmax, N=65 m=8, weights seed {seed}: {errors}")
        assert errors["none"] < 0.2  # an approximation, not noise
    none, zeros = torch.cat(per_image["none"]), torch.cat(per_image["zeros_front"])
    print(f"overall mean error: none {none.mean():.4f}, zeros_front {zeros.mean():.4f}; "
          f"none better on {(none < zeros).float().mean():.0%} of 64 (image, weights) pairs")
    assert none.mean() < 0.9 * zeros.mean()
    assert (none < zeros).float().mean() > 0.6


def test_segment_means_uneven_runs_by_hand():
    x = torch.randn(2, 3, 10, 5, dtype=torch.float64)
    runs = [[] for _ in range(4)]
    for token in range(10):  # token j belongs to run floor(j * m / N)
        runs[token * 4 // 10].append(token)
    assert [len(run) for run in runs] == [3, 2, 3, 2]
    assert sum(runs, []) == list(range(10))  # contiguous, in order, each token once
    expected = torch.zeros(2, 3, 4, 5, dtype=torch.float64)
    for segment, run in enumerate(runs):
        total = torch.zeros(2, 3, 5, dtype=torch.float64)
        for token in run:
            total += x[:, :, token]
        expected[:, :, segment] = total / len(run)
    actual = segment_means(x, 4)
    assert actual.shape == (2, 3, 4, 5)
    assert max_diff(actual, expected) < 1e-12


def test_segment_means_even_runs():
    x = torch.randn(1, 2, 12, 3)
    expected = torch.stack([x[:, :, 3 * s:3 * s + 3].mean(dim=2) for s in range(4)], dim=2)
    assert max_diff(segment_means(x, 4), expected) < 1e-6


# ---------------------------------------------------------------------------------------------------------
# 4. performer mixer == performer-pytorch FastAttention (same projection matrix)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
@torch.no_grad()
def test_performer_mixer_matches_performer_pytorch(kernel):
    from performer_pytorch import FastAttention

    config = tiny_config(attention_type="performer", performer_kernel=kernel)
    mixer = build_mixer(config).eval()
    randomize_(mixer, std=0.3)
    mixer.kernel.redraw_projection()
    assert mixer.kernel.projection_matrix.shape == (int(8 * math.log(8)), 8)  # default int(d ln d) features
    assert mixer.kernel.projection_matrix.abs().sum() > 0
    if kernel == "relu":
        reference = FastAttention(mixer.head_dim, mixer.kernel.num_features, generalized_attention=True,
                                  kernel_fn=nn.ReLU())
    else:
        reference = FastAttention(mixer.head_dim, mixer.kernel.num_features)
    assert reference.projection_matrix.shape == mixer.kernel.projection_matrix.shape
    reference.projection_matrix.copy_(mixer.kernel.projection_matrix)

    hidden_states = torch.randn(2, 65, 32)
    query, key, value = (mixer.split_heads(projection(hidden_states))  # (B, H, N, D)
                         for projection in (mixer.q_proj, mixer.k_proj, mixer.v_proj))
    expected = mixer.o_proj(reference(query, key, value).transpose(1, 2).flatten(2))
    actual, weights = mixer(hidden_states)  # the fused (sdpa) path: no map
    assert weights is None
    assert_close(actual, expected, 1e-5, f"performer {kernel}")
    # the attention map the eager path returns is the package's linear attention written out: map @ V gives the
    # package's output (row sums of 1 would hold by construction; this would not for a wrong map)
    mixer.kernel.config._attn_implementation = "eager"
    with_map, weights = mixer(hidden_states, output_attentions=True)
    assert_close(with_map, expected, 1e-5, f"performer {kernel}, output_attentions path")
    from_map = mixer.o_proj((weights @ value).transpose(1, 2).flatten(2))
    assert_close(from_map, expected, 1e-5, f"performer {kernel}, its map applied to V")


@pytest.mark.parametrize("kernel", ["softmax", "relu"])
def test_performer_gradients_match_performer_pytorch(kernel):
    """ViX's FAVOR+ node has a hand-written backward: the gradients for q, k and v must be autograd's through
    performer-pytorch's FastAttention with the same projection matrix."""
    from performer_pytorch import FastAttention

    config = tiny_config(attention_type="performer", performer_kernel=kernel)
    mixer = build_mixer(config).double().train()
    mixer.kernel.redraw_projection()
    options = dict(generalized_attention=True, kernel_fn=nn.ReLU()) if kernel == "relu" else {}
    reference = FastAttention(mixer.head_dim, mixer.kernel.num_features, **options).double()
    reference.projection_matrix.copy_(mixer.kernel.projection_matrix)
    query, key, value = (torch.randn(2, 4, 65, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    upstream = torch.randn(2, 4, 65, 8, dtype=torch.float64)
    expected = torch.autograd.grad(reference(query, key, value), (query, key, value), upstream)
    context, _ = mixer.kernel(query, key, value)
    actual = torch.autograd.grad(context, (query, key, value), upstream)
    for name, got, want in zip("qkv", actual, expected, strict=True):
        assert_close(got, want, 1e-9 * max(1.0, want.abs().max().item()), f"performer {kernel}: d/d {name}")


def favor_map(mixer: VixAttention, query, key):
    """FAVOR+'s estimate of the (B, H, N, N) softmax attention map, from the mixer's own feature map."""
    features = mixer.kernel.feature_map
    scores = features(query, is_query=True) @ features(key, is_query=False).transpose(-1, -2)
    return scores / scores.sum(-1, keepdim=True)


def performer_with_features(num_features: int) -> VixAttention:
    config = tiny_config(attention_type="performer", performer_num_features=num_features)
    mixer = build_mixer(config).eval()
    mixer.kernel.redraw_projection()
    return mixer


@torch.no_grad()
def test_favor_plus_with_many_features_approximates_softmax():
    generator = torch.Generator().manual_seed(4)
    query, key = (0.5 * torch.randn(2, 4, 65, 8, generator=generator) for _ in range(2))  # small-norm q, k
    value = torch.randn(2, 4, 65, 8, generator=generator)
    many, few = performer_with_features(4096), performer_with_features(8)
    exact, exact_map = eager_attention_forward(many, query, key, value, None, many.kernel.scaling)
    exact = exact.transpose(1, 2)  # (B, H, N, D)
    uniform_map = torch.full_like(exact_map, 1 / 65)
    errors = {
        "map 4096": relative_error(favor_map(many, query, key), exact_map),
        "map 8": relative_error(favor_map(few, query, key), exact_map),
        "map uniform": relative_error(uniform_map, exact_map),
        "out 4096": relative_error(favor_map(many, query, key) @ value, exact),
        "out uniform": relative_error(uniform_map @ value, exact),
    }
    print(f"FAVOR+ relative errors vs exact softmax: {errors}")
    assert errors["map 4096"] < 0.15 and errors["out 4096"] < 0.15
    # better than the trivial answer (uniform attention) by a wide margin, and than few features
    assert errors["map 4096"] < 0.5 * errors["map uniform"]
    assert errors["out 4096"] < 0.5 * errors["out uniform"]
    assert errors["map 8"] > 2 * errors["map 4096"]

    # the whole mixer against the softmax mixer with the same q/k/v/o weights
    config = tiny_config(attention_type="performer", performer_num_features=4096)
    mixer = build_mixer(config).eval()
    randomize_(mixer, std=0.1)
    mixer.kernel.redraw_projection()
    exact_mixer = softmax_twin(mixer, config)
    hidden_states = nn.functional.layer_norm(torch.randn(2, 65, 32, generator=generator), (32,))
    exact_out, _ = exact_mixer(hidden_states)
    mixer_error = relative_error(mixer(hidden_states)[0], exact_out)
    mean_out = exact_mixer.o_proj(exact_mixer.v_proj(hidden_states).mean(1, keepdim=True)).expand_as(exact_out)
    uniform_error = relative_error(mean_out, exact_out)
    print(f"FAVOR+ mixer relative error {mixer_error:.3e}; uniform attention {uniform_error:.3e}")
    assert mixer_error < 0.15 and mixer_error < 0.5 * uniform_error


@torch.no_grad()
def test_favor_plus_converges_with_more_features():
    """Positive random features are unbiased only if every row is marginally N(0, I) (Choromanski et al. 2020,
    Lemma 1 and the orthogonal-features theorem): the orthogonal blocks must be Haar-distributed.

    Q from torch.linalg.qr without the sign fix Q * sign(diag R) (as performer-pytorch and Google's code do) is
    not: the first row of each block leans to -e_1, the mean row direction is ~0.035 per entry at head dim 8,
    and the map error stalls at ~4.3e-2 however many features (Haar blocks: ~4e-3 at 16384)."""
    mixer = performer_with_features(16384)
    unit_rows = mixer.kernel.projection_matrix / mixer.kernel.projection_matrix.norm(dim=1, keepdim=True)
    mean_direction = unit_rows.mean(0)
    print(f"mean unit row direction over 16384 rows: {mean_direction}")  # Haar: each entry ~ +-0.003
    generator = torch.Generator().manual_seed(4)
    query, key = (0.3 * torch.randn(2, 4, 65, 8, generator=generator) for _ in range(2))
    _, exact_map = eager_attention_forward(mixer, query, key, key, None, mixer.kernel.scaling)
    error = relative_error(favor_map(mixer, query, key), exact_map)
    print(f"FAVOR+ map relative error with 16384 features: {error:.3e} (Haar-random blocks give ~4e-3)")
    assert mean_direction.abs().max() < 0.015
    assert error < 0.01


@torch.no_grad()
def test_performer_projection_rows_orthogonal_within_blocks():
    config = tiny_config(attention_type="performer", hidden_size=128, num_attention_heads=4)  # head dim 32
    mixer = build_mixer(config)
    mixer.kernel.redraw_projection()
    matrix = mixer.kernel.projection_matrix
    assert matrix.shape == (int(32 * math.log(32)), 32) == (110, 32)
    norms = matrix.norm(dim=1)
    assert norms.std() > 0.1  # rows rescaled by chi-distributed norms, not all sqrt(d)
    for start in range(0, matrix.shape[0], 32):
        block = matrix[start:start + 32]
        unit = block / block.norm(dim=1, keepdim=True)
        gram = unit @ unit.T
        assert max_diff(gram, torch.eye(len(block))) < 1e-5, f"rows {start}..{start + len(block)} not orthogonal"
    # across blocks rows are independent draws, not orthogonal
    unit = matrix / norms[:, None]
    assert (unit[:32] @ unit[32:64].T).abs().max() > 0.1


# ---------------------------------------------------------------------------------------------------------
# 5. linformer mixer == linformer package
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["separate_kv", "one_kv_head_shared"])
@torch.no_grad()
def test_linformer_mixer_matches_linformer_package(variant):
    from linformer import LinformerSelfAttention

    if variant == "separate_kv":
        package_options = dict(one_kv_head=False, share_kv=False)
        vix_options = dict(linformer_share_kv=False)
    else:  # the paper's ViL: the package with one key/value head and E = F, V = K
        package_options = dict(one_kv_head=True, share_kv=True)
        vix_options = dict(linformer_one_kv_head=True, linformer_values_from_keys=True, linformer_share_kv=True)
    config = tiny_config(attention_type="linformer", qkv_bias=False, linformer_k=16, **vix_options)
    assert config.num_tokens == 65
    reference = LinformerSelfAttention(
        dim=32, seq_len=65, k=16, heads=4, dim_head=8, **package_options
    ).eval()
    randomize_(reference, std=0.15)
    mixer = build_mixer(config).eval()
    mapping = {"to_q.weight": "q_proj.weight", "to_k.weight": "k_proj.weight", "to_v.weight": "v_proj.weight",
               "to_out.weight": "o_proj.weight", "to_out.bias": "o_proj.bias",
               "proj_k": "kernel.seq_proj_k", "proj_v": "kernel.seq_proj_v"}
    renamed = {mapping[key]: value for key, value in reference.state_dict().items()}
    print(f"linformer {variant}: package keys {sorted(reference.state_dict())} -> {sorted(mixer.state_dict())}")
    mixer.load_state_dict(renamed, strict=True)

    hidden_states = torch.randn(3, 65, 32)
    expected = reference(hidden_states)
    actual, weights = mixer(hidden_states)  # the fused (sdpa) path
    assert weights is None
    assert_close(actual, expected, 1e-5, f"linformer {variant}")
    mixer.kernel.config._attn_implementation = "eager"
    with_map, weights = mixer(hidden_states, output_attentions=True)
    assert weights.shape == (3, 4, 65, 16)
    assert_close(with_map, expected, 1e-5, f"linformer {variant}, output_attentions path")


# ---------------------------------------------------------------------------------------------------------
# 6. whole-model consistency: eager vs sdpa, attention maps
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_softmax_model_eager_equals_sdpa(cifar_pixels):
    model = VixForImageClassification(tiny_config(attention_type="softmax")).eval()
    randomize_(model)
    model.set_attn_implementation("eager")
    eager = model(cifar_pixels).logits
    model.set_attn_implementation("sdpa")
    sdpa = model(cifar_pixels).logits
    assert eager.std() > 0.1
    assert_close(sdpa, eager, 1e-5, "ViX eager vs sdpa")


@torch.no_grad()
def test_softmax_attentions_are_row_stochastic(cifar_pixels):
    model = VixForImageClassification(tiny_config(attention_type="softmax")).eval()
    randomize_(model)
    model.set_attn_implementation("eager")  # v5: only eager builds attention maps
    outputs = model(cifar_pixels[:4], output_attentions=True)
    assert len(outputs.attentions) == 2
    for weights in outputs.attentions:
        assert weights.shape == (4, 4, 65, 65)
        assert weights.min() >= 0
        assert_close(weights.sum(-1), torch.ones(4, 4, 65), 1e-5, "softmax attention rows sum")
    assert_close(outputs.logits, model(cifar_pixels[:4]).logits, 1e-5, "logits with / without output_attentions")


@torch.no_grad()
def test_linformer_model_attentions_shape(cifar_pixels):
    model = VixForImageClassification(tiny_config(attention_type="linformer", linformer_k=16)).eval()
    model.set_attn_implementation("eager")
    outputs = model(cifar_pixels[:4], output_attentions=True)
    assert len(outputs.attentions) == 2
    for weights in outputs.attentions:
        assert weights.shape == (4, 4, 65, 16)
        assert_close(weights.sum(-1), torch.ones(4, 4, 65), 1e-5, "linformer attention rows sum")
    assert_close(outputs.logits, model(cifar_pixels[:4]).logits, 1e-5, "linformer logits with / without map")
