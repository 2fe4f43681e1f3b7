"""Tier-1 matrix: every (attention, embedding, position) combination VixConfig accepts, on tiny configs.

Shapes, finiteness, gradients, save/load, batching, determinism, dropout, activation checkpointing,
hidden states / attention maps, half precision, other input sizes, Performer redraws, pooling.
"""

import copy

import pytest
import torch

from conftest import ATTENTION_TYPES, allowed_combinations, logged_warnings, tiny_config
from modeling_vix import MIXER_CAPABILITIES, VixForImageClassification


COMBOS = allowed_combinations()
COMBO_IDS = ["-".join(combo) for combo in COMBOS]
# From the registry's capabilities (tests/test_conventions.py checks that the mixers live up to them).
ATTENTION_MIXERS = tuple(n for n, can in MIXER_CAPABILITIES.items() if can.returns_attention_weights)
MAPLESS_MIXERS = tuple(n for n, can in MIXER_CAPABILITIES.items() if not can.returns_attention_weights)
# No parameter sized by the token count: any input size runs.
VARIABLE_LENGTH_MIXERS = tuple(n for n, can in MIXER_CAPABILITIES.items() if not can.fixed_sequence_length)
VARIABLE_LENGTH_ROPE_MIXERS = tuple(n for n in VARIABLE_LENGTH_MIXERS if MIXER_CAPABILITIES[n].supports_rope)
NUM_LABELS = 10
HIDDEN = 32
LAYERS = 2
HEADS = 4


def make_model(attention="softmax", embedding="linear", position="learned", **overrides):
    config = tiny_config(
        attention_type=attention, embedding_type=embedding, position_embedding_type=position, **overrides
    )
    return VixForImageClassification(config)


def pixels(batch=2, height=32, width=32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, height, width, generator=generator)


def labels_for(batch):
    return torch.arange(batch) % NUM_LABELS


def num_tokens(pooling, height=32, width=32, patch=4):
    return (height // patch) * (width // patch) + int(pooling == "cls")


def assert_finite(tensor, what="tensor"):
    assert torch.isfinite(tensor.float()).all(), f"{what} has NaN or inf"


# --------------------------------------------------------------------------------------------------------------
# The full matrix (pooling="cls", the default) and a smaller mean-pooling matrix
# --------------------------------------------------------------------------------------------------------------

MEAN_COMBOS = [(attention, "linear", "learned") for attention in ATTENTION_TYPES] + [
    (attention, "conv", "rope_2d") for attention in ATTENTION_TYPES if MIXER_CAPABILITIES[attention].supports_rope
]
ALL_CASES = [pytest.param(*combo, "cls", id=f"{name}-cls") for combo, name in zip(COMBOS, COMBO_IDS, strict=True)] + [
    pytest.param(*combo, "mean", id="-".join(combo) + "-mean") for combo in MEAN_COMBOS
]


@pytest.mark.parametrize("attention,embedding,position,pooling", ALL_CASES)
def test_output_shapes_and_finite(attention, embedding, position, pooling):
    model = make_model(attention, embedding, position, pooling=pooling).eval()
    with torch.no_grad():
        outputs = model(pixels(3), output_hidden_states=True)
        base = model.vix(pixels(3))
    tokens = num_tokens(pooling)
    assert tokens == (65 if pooling == "cls" else 64)
    assert outputs.logits.shape == (3, NUM_LABELS)
    assert base.last_hidden_state.shape == (3, tokens, HIDDEN)
    assert base.pooler_output.shape == (3, HIDDEN)
    assert_finite(outputs.logits, "logits")
    assert_finite(base.last_hidden_state, "last_hidden_state")
    assert len(outputs.hidden_states) == LAYERS + 1
    for state in outputs.hidden_states:
        assert state.shape == (3, tokens, HIDDEN)
        assert_finite(state, "hidden state")
    if pooling == "cls":
        torch.testing.assert_close(base.pooler_output, base.last_hidden_state[:, 0])
    else:
        torch.testing.assert_close(base.pooler_output, base.last_hidden_state.mean(dim=1))


@pytest.mark.parametrize("attention,embedding,position,pooling", ALL_CASES)
def test_training_step_gives_every_parameter_a_finite_gradient(attention, embedding, position, pooling):
    model = make_model(attention, embedding, position, pooling=pooling).train()
    parameters = dict(model.named_parameters())
    assert parameters and all(p.requires_grad for p in parameters.values())
    outputs = model(pixels(2), labels=labels_for(2))
    assert outputs.loss is not None and outputs.loss.ndim == 0
    assert_finite(outputs.loss, "loss")
    outputs.loss.backward()
    missing = [name for name, p in parameters.items() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [name for name, p in parameters.items() if not torch.isfinite(p.grad).all()]
    assert not bad, f"parameters with non-finite gradient: {bad}"
    # The Performer projection is a buffer, never a parameter.
    assert not any("projection_matrix" in name for name in parameters)


@pytest.mark.parametrize("attention,embedding,position,pooling", ALL_CASES)
def test_save_and_load_round_trip(tmp_path, attention, embedding, position, pooling):
    model = make_model(attention, embedding, position, pooling=pooling).eval()
    inputs = pixels(2)
    with torch.no_grad():
        expected = model(inputs).logits
    model.save_pretrained(tmp_path)
    torch.manual_seed(1234)  # a reload must not depend on (or redraw from) the global RNG
    reloaded = VixForImageClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.to_dict()["attention_type"] == attention
    with torch.no_grad():
        actual = reloaded(inputs).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    original_state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert original_state.keys() == reloaded_state.keys()
    for name, tensor in original_state.items():
        assert torch.equal(tensor, reloaded_state[name]), name
    if attention == "performer":
        buffers = [name for name in original_state if name.endswith("projection_matrix")]
        assert len(buffers) == LAYERS
        for name in buffers:
            assert original_state[name].abs().sum() > 0, f"{name} was never drawn"


@pytest.mark.parametrize("attention,embedding,position,pooling", ALL_CASES)
def test_batching_equivalence(attention, embedding, position, pooling):
    model = make_model(attention, embedding, position, pooling=pooling).eval()
    # Samples of very different scale, so that any statistic shared across the batch would show.
    batch = pixels(4, seed=3) * torch.tensor([0.25, 1.0, 3.0, 8.0])[:, None, None, None]
    with torch.no_grad():
        batched = model(batch)
        batched_hidden = model.vix(batch).last_hidden_state
        for index in range(4):
            alone = model(batch[index : index + 1])
            torch.testing.assert_close(alone.logits[0], batched.logits[index], rtol=1e-4, atol=1e-5)
            alone_hidden = model.vix(batch[index : index + 1]).last_hidden_state
            torch.testing.assert_close(alone_hidden[0], batched_hidden[index], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attention,embedding,position,pooling", ALL_CASES)
def test_eval_is_deterministic_and_train_dropout_is_not(attention, embedding, position, pooling):
    model = make_model(
        attention, embedding, position, pooling=pooling, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1
    )
    inputs = pixels(2)
    model.eval()
    with torch.no_grad():
        first, second = model(inputs).logits, model(inputs).logits
    assert torch.equal(first, second)
    model.train()
    with torch.no_grad():
        first, second = model(inputs).logits, model(inputs).logits
    assert not torch.allclose(first, second), "dropout > 0 in train mode should make two calls differ"
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs).logits, model(inputs).logits)


@pytest.mark.parametrize("attention,embedding,position,pooling", ALL_CASES)
def test_activation_checkpointing_matches_plain_training(attention, embedding, position, pooling):
    plain = make_model(attention, embedding, position, pooling=pooling).train()
    checkpointed = copy.deepcopy(plain)
    assert hasattr(checkpointed, "activation_checkpointing_enable")  # transformers 5.x name
    checkpointed.activation_checkpointing_enable()
    assert all(layer.gradient_checkpointing for layer in checkpointed.vix.layers)

    calls = []
    checkpointed.vix.layers[0].attention.register_forward_hook(lambda *_: calls.append(1))

    inputs, labels = pixels(2), labels_for(2)
    plain_loss = plain(inputs, labels=labels).loss
    plain_loss.backward()
    checkpointed_loss = checkpointed(inputs, labels=labels).loss
    assert len(calls) == 1
    checkpointed_loss.backward()
    assert len(calls) == 2, "the layer should be recomputed in backward when checkpointing is on"

    torch.testing.assert_close(checkpointed_loss, plain_loss, rtol=0, atol=0)
    plain_params = dict(plain.named_parameters())
    for name, parameter in checkpointed.named_parameters():
        assert parameter.grad is not None, name
        torch.testing.assert_close(parameter.grad, plain_params[name].grad, rtol=1e-5, atol=1e-7, msg=name)


# --------------------------------------------------------------------------------------------------------------
# Hidden states and attention maps
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention,embedding,position", COMBOS, ids=COMBO_IDS)
def test_output_hidden_states_for_every_mixer(attention, embedding, position):
    model = make_model(attention, embedding, position).eval()
    with torch.no_grad():
        outputs = model(pixels(2), output_hidden_states=True)
        plain = model(pixels(2))
    assert isinstance(outputs.hidden_states, tuple)
    assert len(outputs.hidden_states) == LAYERS + 1
    assert plain.hidden_states is None
    # The first state is the embedding output, the last one the final layer's output before the layernorm.
    with torch.no_grad():
        embedded, _ = model.vix.embeddings(pixels(2))
        from_last_state = model.classifier(model.vix.layernorm(outputs.hidden_states[-1])[:, 0])
    torch.testing.assert_close(outputs.hidden_states[0], embedded)
    torch.testing.assert_close(from_last_state, outputs.logits)
    torch.testing.assert_close(outputs.logits, plain.logits)


@pytest.mark.parametrize("attention,embedding,position", [c for c in COMBOS if c[0] in ATTENTION_MIXERS],
                         ids=[n for c, n in zip(COMBOS, COMBO_IDS, strict=True) if c[0] in ATTENTION_MIXERS])
def test_output_attentions_returns_real_maps(attention, embedding, position):
    """transformers v5's rule for every attention mixer: the default fused path ("sdpa") builds no maps (an empty
    tuple and a warning that says to use eager), attn_implementation="eager" returns real ones."""
    model = make_model(attention, embedding, position).eval()
    assert model.config._attn_implementation == "sdpa"  # the default
    inputs = pixels(2)
    with torch.no_grad():
        plain = model(inputs)
        with logged_warnings() as warnings:
            fused = model(inputs, output_attentions=True)
    assert fused.attentions == ()
    assert any("output_attentions" in m or "attention maps" in m for m in warnings), warnings
    assert any("eager" in m for m in warnings), warnings  # says how to get them
    torch.testing.assert_close(fused.logits, plain.logits, rtol=0, atol=0)

    model.set_attn_implementation("eager")
    with torch.no_grad():
        outputs = model(inputs, output_attentions=True)
    tokens = num_tokens("cls")
    keys = model.config.linformer_k if attention == "linformer" else tokens
    assert isinstance(outputs.attentions, tuple) and len(outputs.attentions) == LAYERS
    for attention_map in outputs.attentions:
        assert isinstance(attention_map, torch.Tensor)
        assert attention_map.shape == (2, HEADS, tokens, keys)
        assert_finite(attention_map, "attention map")
        row_sums = attention_map.float().sum(-1)
        if attention in ("softmax", "linformer", "performer"):
            assert (attention_map >= 0).all()
            torch.testing.assert_close(row_sums, torch.ones_like(row_sums), rtol=0, atol=1e-4)
        else:  # nystrom: product of two row-stochastic softmaxes and an approximate inverse
            torch.testing.assert_close(row_sums, torch.ones_like(row_sums), rtol=0, atol=0.1)
    # The map path computes the same attention as the fused path.
    torch.testing.assert_close(outputs.logits, plain.logits, rtol=1e-4, atol=1e-5)


def rotate_pairs_as_complex(x, positions, base=10000.0):
    """RoFormer's rotation written with complex numbers, as an independent reference: channel pair (2i, 2i+1) of the
    token at position p is the complex number x_2i + i x_2i+1, multiplied by exp(i p base^(-2i/d))."""
    head_dim = x.shape[-1]
    theta = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = positions.to(torch.float64)[:, None] * theta  # (N, D/2)
    rotated = torch.view_as_complex(x.double().unflatten(-1, (-1, 2)).contiguous()) * torch.polar(
        torch.ones_like(angles), angles
    )
    return torch.view_as_real(rotated).flatten(-2).to(x.dtype)


@pytest.mark.parametrize("position", ["learned", "rope_1d"])
def test_softmax_eager_maps_equal_independent_maps_and_sdpa_warns(position):
    """The eager model's maps are softmax(q k^T / sqrt(d)) computed here from each layer's input and the q/k
    weights (with RoPE written independently); the sdpa model (the default) returns none and warns."""
    sdpa_model = make_model("softmax", position=position).eval()
    _scale_projections(sdpa_model, "q_proj", 10.0)  # peaked maps (the init's are near-uniform)
    _scale_projections(sdpa_model, "k_proj", 10.0)
    eager_model = VixForImageClassification(copy.deepcopy(sdpa_model.config))
    eager_model.load_state_dict(sdpa_model.state_dict())
    eager_model.set_attn_implementation("eager")
    eager_model.eval()
    assert sdpa_model.config._attn_implementation == "sdpa"
    inputs = pixels(2)

    layer_inputs = []
    handles = [layer.attention.register_forward_pre_hook(lambda module, args: layer_inputs.append(args[0]))
               for layer in eager_model.vix.layers]
    with torch.no_grad():
        from_eager = eager_model(inputs, output_attentions=True).attentions
    for handle in handles:
        handle.remove()
    with torch.no_grad(), logged_warnings() as warnings:
        from_sdpa = sdpa_model(inputs, output_attentions=True).attentions
    assert from_sdpa == ()
    assert any("sdpa" in m and "eager" in m for m in warnings), warnings

    head_dim = HIDDEN // HEADS
    assert len(from_eager) == len(layer_inputs) == LAYERS
    for layer, hidden, attention_map in zip(eager_model.vix.layers, layer_inputs, from_eager, strict=True):
        mixer = layer.attention
        query = (hidden @ mixer.q_proj.weight.T).unflatten(-1, (HEADS, head_dim)).transpose(1, 2)  # (B, H, N, D)
        key = (hidden @ mixer.k_proj.weight.T).unflatten(-1, (HEADS, head_dim)).transpose(1, 2)
        if position == "rope_1d":  # raster positions, cls first at 0
            positions = torch.arange(query.shape[-2])
            query, key = rotate_pairs_as_complex(query, positions), rotate_pairs_as_complex(key, positions)
        expected = torch.softmax(query @ key.transpose(-1, -2) / head_dim**0.5, dim=-1)
        assert expected.amax(-1).mean() > 2 / expected.shape[-1]  # far from uniform: the comparison can fail
        torch.testing.assert_close(attention_map, expected, rtol=1e-4, atol=1e-6)



@pytest.mark.parametrize("attention", MAPLESS_MIXERS)
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_output_attentions_warns_for_mapless_mixers(attention, attn_implementation):
    """FNet and MLP-Mixer have no attention map in any mode: output_attentions gives an empty tuple and a warning
    that says why (no error: a generic caller may ask every model for maps)."""
    model = make_model(attention).eval()
    model.set_attn_implementation(attn_implementation)
    inputs = pixels(2)
    with torch.no_grad():
        plain = model(inputs)
        for forward in (model, model.vix):
            with logged_warnings() as warnings:
                outputs = forward(inputs, output_attentions=True)
            assert outputs.attentions == ()
            assert any(attention in m and "attention" in m for m in warnings), warnings
        torch.testing.assert_close(model(inputs, output_attentions=True).logits, plain.logits, rtol=0, atol=0)
        # output_hidden_states still works, and output_attentions=False asks for nothing and warns of nothing
        with logged_warnings() as warnings:
            outputs = model(inputs, output_hidden_states=True, output_attentions=False)
    assert not warnings
    assert len(outputs.hidden_states) == LAYERS + 1
    assert not outputs.attentions  # None, never maps


# --------------------------------------------------------------------------------------------------------------
# Half precision
# --------------------------------------------------------------------------------------------------------------


def _relative_error(actual, expected):
    return ((actual.float() - expected.float()).norm() / expected.float().norm()).item()


@pytest.mark.parametrize("attention", ATTENTION_TYPES)
@pytest.mark.parametrize("mode", ["bf16", "autocast_bf16", "fp16"])
def test_half_precision_forward(attention, mode):
    reference = make_model(attention).eval()
    inputs = pixels(2)
    with torch.no_grad():
        expected = reference.vix(inputs).last_hidden_state
        expected_logits = reference(inputs).logits
    model = copy.deepcopy(reference)
    with torch.no_grad():
        if mode == "bf16":
            model.to(torch.bfloat16)
            hidden, logits = model.vix(inputs).last_hidden_state, model(inputs).logits
            assert logits.dtype == torch.bfloat16
        elif mode == "fp16":
            model.half()
            hidden, logits = model.vix(inputs).last_hidden_state, model(inputs).logits
            assert logits.dtype == torch.float16
        else:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                hidden, logits = model.vix(inputs).last_hidden_state, model(inputs).logits
    assert_finite(hidden, f"{mode} last_hidden_state")
    assert_finite(logits, f"{mode} logits")
    assert _relative_error(hidden, expected) < 0.05
    torch.testing.assert_close(logits.float(), expected_logits, rtol=0.1, atol=0.02)


def _scale_projections(model, attribute, factor):
    with torch.no_grad():
        for layer in model.vix.layers:
            getattr(layer.attention, attribute).weight.mul_(factor)


@pytest.mark.parametrize("scale", [20.0, 40.0])
@pytest.mark.parametrize("mode", ["bf16", "autocast_bf16", "fp16"])
def test_performer_large_logits_stay_finite_in_half_precision(mode, scale):
    """Queries and keys large enough that exp() of the random-feature logits overflows fp16: the feature
    maps must run in fp32 (and stabilised), so outputs stay finite and the attention maps match fp32."""
    reference = make_model("performer").eval()
    reference.set_attn_implementation("eager")  # the maps are compared too; eager builds them
    _scale_projections(reference, "q_proj", scale)
    _scale_projections(reference, "k_proj", scale)
    inputs = pixels(2)

    # Check the regime: in the first layer, exp of the query feature logits (w.q, or -|q|^2 / 2) leaves
    # fp16's range, so a feature map computed naively in half precision would give inf or 0.
    captured = {}
    first = reference.vix.layers[0].attention
    def keep_mixer_input(module, args, output):  # returns None: a hook's return value would replace the output
        captured.setdefault("mixer_input", args[0])

    handle = first.register_forward_hook(keep_mixer_input)
    with torch.no_grad():
        expected = reference.vix(inputs, output_attentions=True)
        expected_logits = reference(inputs).logits
        query = first.split_heads(first.q_proj(captured["mixer_input"])) * first.head_dim**-0.25
    handle.remove()
    projected = query @ first.kernel.projection_matrix.T
    half_norm = 0.5 * query.square().sum(-1)
    overflows = torch.isinf(projected.half().exp()).any()
    underflows = (torch.exp(-half_norm.half()) == 0).any()
    assert overflows or underflows, "test input is not large enough to leave fp16's range"
    assert_finite(expected.last_hidden_state, "fp32 output")

    model = copy.deepcopy(reference)
    with torch.no_grad():
        if mode == "bf16":
            model.to(torch.bfloat16)
        elif mode == "fp16":
            model.half()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast_bf16"):
            outputs = model.vix(inputs, output_attentions=True)
            logits = model(inputs).logits
    for attention_map in outputs.attentions:
        assert_finite(attention_map, f"{mode} performer attention map")
    assert_finite(outputs.last_hidden_state, f"{mode} performer output")
    assert_finite(logits, f"{mode} performer logits")
    for actual_map, expected_map in zip(outputs.attentions, expected.attentions, strict=True):
        torch.testing.assert_close(actual_map.float(), expected_map, rtol=0, atol=0.03)
    assert _relative_error(outputs.last_hidden_state, expected.last_hidden_state) < 0.02
    torch.testing.assert_close(logits.float(), expected_logits, rtol=0.1, atol=0.02)


@pytest.mark.parametrize("attention", ATTENTION_TYPES)
def test_half_precision_backward_is_finite(attention):
    model = make_model(attention).to(torch.bfloat16).train()
    loss = model(pixels(2), labels=labels_for(2)).loss
    loss.backward()
    assert_finite(loss, "bf16 loss")
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad.float()).all(), name


# --------------------------------------------------------------------------------------------------------------
# Other input sizes
# --------------------------------------------------------------------------------------------------------------

OTHER_SIZES = [(48, 48), (32, 64)]


@pytest.mark.parametrize("position", ["rope_1d", "rope_2d"])
@pytest.mark.parametrize("attention", VARIABLE_LENGTH_ROPE_MIXERS)
@pytest.mark.parametrize("size", OTHER_SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_rope_accepts_other_input_sizes_without_a_flag(position, attention, size, pooling):
    model = make_model(attention, "linear", position, pooling=pooling).eval()
    height, width = size
    with torch.no_grad():
        outputs = model.vix(pixels(2, height, width))
        logits = model(pixels(2, height, width)).logits
    assert outputs.last_hidden_state.shape == (2, num_tokens(pooling, height, width), HIDDEN)
    assert logits.shape == (2, NUM_LABELS)
    assert_finite(outputs.last_hidden_state)
    # The flag is accepted and changes nothing for RoPE
    with torch.no_grad():
        flagged = model(pixels(2, height, width), interpolate_pos_encoding=True).logits
    torch.testing.assert_close(flagged, logits, rtol=0, atol=0)


@pytest.mark.parametrize("attention", VARIABLE_LENGTH_MIXERS)
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_learned_positions_interpolate(attention, pooling):
    model = make_model(attention, "linear", "learned", pooling=pooling).eval()
    with torch.no_grad():
        unflagged = model(pixels(2)).logits
        flagged = model(pixels(2), interpolate_pos_encoding=True).logits
        torch.testing.assert_close(flagged, unflagged, rtol=0, atol=0)
        for height, width in OTHER_SIZES:
            outputs = model.vix(pixels(2, height, width), interpolate_pos_encoding=True)
            assert outputs.last_hidden_state.shape == (2, num_tokens(pooling, height, width), HIDDEN)
            assert_finite(outputs.last_hidden_state)


@pytest.mark.parametrize("attention", VARIABLE_LENGTH_MIXERS)
def test_no_positions_accept_other_input_sizes(attention):
    model = make_model(attention, "conv", "none").eval()
    with torch.no_grad():
        outputs = model.vix(pixels(2, 48, 48))
    assert outputs.last_hidden_state.shape == (2, num_tokens("cls", 48, 48), HIDDEN)


def test_rope_2d_attention_maps_follow_the_grid():
    model = make_model("softmax", "linear", "rope_2d", pooling="mean").eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        outputs = model(pixels(1, 32, 64), output_attentions=True)
    assert outputs.attentions[0].shape == (1, HEADS, 8 * 16, 8 * 16)


def test_rope_2d_scores_depend_on_relative_grid_position_at_other_sizes():
    """At a non-square, non-configured grid, q.k after axial RoPE depends only on (row, col) offsets."""
    from modeling_vix.attention_vix import apply_rotary

    model = make_model("softmax", "linear", "rope_2d", pooling="mean").eval()
    head_dim = HIDDEN // HEADS
    with torch.no_grad():
        tokens, rope = model.vix.embeddings(pixels(1, 32, 64))
    assert tokens.shape == (1, 8 * 16, HIDDEN)  # an 8 x 16 grid, no cls token
    assert all(table.shape == (8 * 16, head_dim) for table in rope)
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(head_dim, generator=generator).expand(1, 1, 8 * 16, head_dim)
    key = torch.randn(head_dim, generator=generator).expand(1, 1, 8 * 16, head_dim)
    scores = apply_rotary(query, *rope)[0, 0] @ apply_rotary(key, *rope)[0, 0].T

    def index(row, col):
        return row * 16 + col

    for (r1, c1), (r2, c2), (dr, dc) in [((0, 0), (2, 5), (3, 7)), ((1, 9), (4, 2), (2, 4)), ((5, 0), (0, 15), (2, 0))]:
        torch.testing.assert_close(
            scores[index(r1 + dr, c1 + dc), index(r2 + dr, c2 + dc)], scores[index(r1, c1), index(r2, c2)]
        )
    # Rows and columns are distinct axes (not one raster position): a step right != a step down.
    assert not torch.allclose(scores[index(0, 0), index(0, 1)], scores[index(0, 0), index(1, 0)])


# --------------------------------------------------------------------------------------------------------------
# Performer redraws
# --------------------------------------------------------------------------------------------------------------


def _projections(model):
    return [layer.attention.kernel.projection_matrix.clone() for layer in model.vix.layers]


def _train_step(model, optimizer):
    optimizer.zero_grad()
    model(pixels(2), labels=labels_for(2)).loss.backward()
    optimizer.step()


def test_performer_without_redraw_keeps_its_projection():
    model = make_model("performer", performer_redraw_interval=0).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _projections(model)
    assert all(p.abs().sum() > 0 for p in before)
    for _ in range(5):
        _train_step(model, optimizer)
    for old, new in zip(before, _projections(model), strict=True):
        assert torch.equal(old, new)


def test_performer_redraws_every_interval_training_calls_only():
    model = make_model("performer", performer_redraw_interval=2)
    start = _projections(model)

    model.eval()
    with torch.no_grad():
        for _ in range(5):
            model(pixels(2))
    for old, new in zip(start, _projections(model), strict=True):
        assert torch.equal(old, new), "eval-mode calls must never redraw"

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _train_step(model, optimizer)
    after_one = _projections(model)
    for old, new in zip(start, after_one, strict=True):
        assert torch.equal(old, new), "redrawn after one training call with interval 2"
    _train_step(model, optimizer)
    after_two = _projections(model)
    for old, new in zip(after_one, after_two, strict=True):
        assert not torch.equal(old, new), "not redrawn after two training calls with interval 2"

    model.eval()
    with torch.no_grad():
        for _ in range(5):
            model(pixels(2))
    for old, new in zip(after_two, _projections(model), strict=True):
        assert torch.equal(old, new), "eval-mode calls must never redraw"

    model.train()
    _train_step(model, optimizer)
    after_three = _projections(model)
    for old, new in zip(after_two, after_three, strict=True):
        assert torch.equal(old, new)
    _train_step(model, optimizer)
    for old, new in zip(after_three, _projections(model), strict=True):
        assert not torch.equal(old, new)


def test_performer_redraw_with_activation_checkpointing():
    plain = make_model("performer", performer_redraw_interval=2).train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.activation_checkpointing_enable()
    inputs, labels = pixels(2), labels_for(2)
    start = _projections(plain)

    torch.manual_seed(5)
    plain(inputs, labels=labels).loss.backward()
    torch.manual_seed(5)
    checkpointed(inputs, labels=labels).loss.backward()

    # One training step with interval 2: no redraw, and the gradients match the plain model's.
    for old, new in zip(start, _projections(checkpointed), strict=True):
        assert torch.equal(old, new), "projection redrawn after one checkpointed training step"
    plain_params = dict(plain.named_parameters())
    for name, parameter in checkpointed.named_parameters():
        torch.testing.assert_close(parameter.grad, plain_params[name].grad, rtol=1e-5, atol=1e-7, msg=name)


# --------------------------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ATTENTION_TYPES)
def test_pooling_decides_the_cls_token(attention):
    mean_model = make_model(attention, pooling="mean")
    cls_model = make_model(attention, pooling="cls")
    assert mean_model.vix.embeddings.cls_token is None
    assert not any("cls_token" in name for name, _ in mean_model.named_parameters())
    assert not any("cls_token" in name for name in mean_model.state_dict())
    assert isinstance(cls_model.vix.embeddings.cls_token, torch.nn.Parameter)
    assert cls_model.vix.embeddings.cls_token.shape == (1, 1, HIDDEN)
    assert any(name.endswith("cls_token") for name, _ in cls_model.named_parameters())
    assert mean_model.config.num_tokens == 64 and cls_model.config.num_tokens == 65
    cls_count = sum(p.numel() for p in cls_model.parameters())
    mean_count = sum(p.numel() for p in mean_model.parameters())
    assert cls_count > mean_count  # cls token (and one more learned position / linformer / mixer row)


def test_cifar_batch_runs_for_every_mixer(cifar_pixels):
    """Real images through every mixer once: finite logits and a finite loss."""
    labels = labels_for(cifar_pixels.shape[0])
    for attention in ATTENTION_TYPES:
        model = make_model(attention).eval()
        with torch.no_grad():
            outputs = model(cifar_pixels[:4], labels=labels[:4])
        assert outputs.logits.shape == (4, NUM_LABELS)
        assert_finite(outputs.logits)
        assert_finite(outputs.loss)
