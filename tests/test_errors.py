"""Bad configs and bad inputs raise an error whose message names the problem (and the fix, where given).

Unknown choices (`Literal` fields) are refused by huggingface_hub's strict dataclass validation, at construction
and at attribute assignment, with `StrictDataclassFieldValidationError` listing the valid choices. Values and
combinations are checked by `validate_architecture`: a ValueError at construction and when a model is built from a
config changed since, wrapped in `StrictDataclassClassValidationError` by `config.validate()` (and so at save time).
"""

import re

import pytest
import torch
from huggingface_hub.errors import StrictDataclassClassValidationError, StrictDataclassFieldValidationError

from conftest import tiny_config
from modeling_vix import VixConfig, VixForImageClassification, VixModel


def pixels(batch=2, channels=3, height=32, width=32):
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(0))


# --------------------------------------------------------------------------------------------------------------
# VixConfig
# --------------------------------------------------------------------------------------------------------------

UNKNOWN_VALUES = [
    ("attention_type", "flash", ["softmax", "performer", "linformer", "nystrom", "fnet", "mixer"]),
    ("embedding_type", "patchify", ["linear", "conv"]),
    ("position_embedding_type", "sinusoidal", ["learned", "rope_1d", "rope_2d", "none"]),
    ("pooling", "max", ["cls", "mean"]),
    ("performer_kernel", "tanh", ["softmax", "relu"]),
    ("performer_key_stabilizer", "batch", ["per_head", "global"]),
    ("nystrom_padding", "zeros_back", ["none", "zeros_front"]),
    ("nystrom_pinv_scale", "batch", ["per_head", "global"]),
    ("conv_stem_activation", "tanh", ["none", "relu", "gelu"]),
    ("conv_stem_downsampling", "avg_pool", ["last_conv", "max_pool"]),
    ("hidden_act", "bogus", ["gelu", "relu", "silu"]),
]


def assert_names_choices(message, field, value, choices):
    assert f"'{field}'" in message and f"got {value}" in message, message
    for choice in choices:  # says what to use instead
        assert repr(choice) in message, f"{choice!r} missing from: {message}"


@pytest.mark.parametrize("field,value,choices", UNKNOWN_VALUES, ids=[case[0] for case in UNKNOWN_VALUES])
def test_unknown_choice_is_rejected_with_the_valid_choices(field, value, choices):
    with pytest.raises(StrictDataclassFieldValidationError) as error:
        tiny_config(**{field: value})
    assert_names_choices(str(error.value), field, value, choices)


@pytest.mark.parametrize("field,value,choices", UNKNOWN_VALUES, ids=[case[0] for case in UNKNOWN_VALUES])
def test_unknown_choice_assigned_after_construction_fails_at_assignment(field, value, choices):
    """Assignment itself refuses an unknown choice, and the config keeps its valid value (a model still builds)."""
    config = tiny_config()
    before = getattr(config, field)
    with pytest.raises(StrictDataclassFieldValidationError) as error:
        setattr(config, field, value)
    assert_names_choices(str(error.value), field, value, choices)
    assert getattr(config, field) == before
    VixForImageClassification(config)

@pytest.mark.parametrize("attention", ["fnet", "mixer"])
@pytest.mark.parametrize("position", ["rope_1d", "rope_2d"])
def test_rope_needs_queries_and_keys(attention, position):
    with pytest.raises(ValueError) as error:
        tiny_config(attention_type=attention, position_embedding_type=position)
    message = str(error.value)
    assert attention in message and "RoPE" in message
    assert "'learned'" in message and "'none'" in message  # the alternatives
    # The same mixers are fine with learned or no positions.
    for ok_position in ("learned", "none"):
        tiny_config(attention_type=attention, position_embedding_type=ok_position)


def test_rope_2d_needs_head_dim_multiple_of_4():
    # hidden 24 / 4 heads = head dim 6: even (fine for rope_1d) but not a multiple of 4
    with pytest.raises(ValueError, match=r"rope_2d.*head dim \(6\).*multiple of 4"):
        tiny_config(hidden_size=24, position_embedding_type="rope_2d")
    tiny_config(hidden_size=24, position_embedding_type="rope_1d")


def test_rope_1d_needs_even_head_dim():
    # hidden 20 / 4 heads = head dim 5
    with pytest.raises(ValueError, match=r"rope_1d.*head dim \(5\).*even"):
        tiny_config(hidden_size=20, position_embedding_type="rope_1d")


def test_hidden_size_must_divide_into_heads():
    with pytest.raises(ValueError, match=r"hidden_size \(30\).*multiple of num_attention_heads \(4\)"):
        tiny_config(hidden_size=30)


@pytest.mark.parametrize("image_size", [30, [32, 30], (30, 32)])
def test_image_size_must_divide_by_patch_size(image_size):
    with pytest.raises(ValueError) as error:
        tiny_config(image_size=image_size)
    message = str(error.value)
    assert "not divisible by patch_size 4" in message
    assert "choose a patch size" in message


@pytest.mark.parametrize("kernel", [2, 4, 32, -1])
def test_nystrom_residual_conv_kernel_must_be_odd_or_zero(kernel):
    with pytest.raises(ValueError, match=rf"nystrom_residual_conv_kernel must be odd.*or 0.*got {kernel}"):
        tiny_config(attention_type="nystrom", nystrom_residual_conv_kernel=kernel)
    tiny_config(attention_type="nystrom", nystrom_residual_conv_kernel=0)
    tiny_config(attention_type="nystrom", nystrom_residual_conv_kernel=3)


def test_negative_performer_redraw_interval():
    with pytest.raises(ValueError, match=r"performer_redraw_interval must be >= 0 \(0 = never redraw\)"):
        tiny_config(attention_type="performer", performer_redraw_interval=-1)


@pytest.mark.parametrize(
    "overrides,pattern",
    [
        (dict(performer_num_features=0), r"performer_num_features must be at least 1"),
        (dict(mixer_token_expansion=0), r"mixer_token_expansion must be positive"),
        (dict(hidden_dropout_prob=1.0), r"Dropout probabilities must lie in \[0, 1\)"),
        (dict(attention_probs_dropout_prob=-0.1), r"Dropout probabilities"),
        (dict(conv_stem_channels=[8, 0]), r"conv_stem_channels must be positive"),
        (dict(image_size=[32, 32, 32]), r"image_size must be an int or \[height, width\]"),
        (dict(patch_size=0), r"patch_size must be at least 1"),
        (dict(linformer_k=0), r"linformer_k must be at least 1"),
        (dict(nystrom_num_landmarks=0), r"nystrom_num_landmarks must be at least 1"),
    ],
    ids=["performer_num_features", "mixer_token_expansion", "hidden_dropout", "attention_dropout", "conv_stem",
         "image_size_rank", "patch_size", "linformer_k", "nystrom_num_landmarks"],
)
def test_other_out_of_range_values(overrides, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny_config(**overrides)


@pytest.mark.parametrize(
    "mutation,pattern",
    [
        (dict(attention_type="fnet", position_embedding_type="rope_2d"), r"attention_type='fnet'.*RoPE"),
        (dict(attention_type="mixer", position_embedding_type="rope_1d"), r"attention_type='mixer'.*RoPE"),
        (dict(hidden_size=30), r"hidden_size \(30\) must be a multiple"),
        (dict(image_size=30), r"not divisible by patch_size"),
        (dict(position_embedding_type="rope_2d", hidden_size=24), r"multiple of 4"),
        (dict(nystrom_residual_conv_kernel=4), r"must be odd"),
        (dict(performer_redraw_interval=-2), r"performer_redraw_interval"),
        (dict(rope_theta=0), r"rope_theta.*positive"),
        (dict(layer_norm_eps=0.0), r"layer_norm_eps must be positive"),
    ],
)
@pytest.mark.parametrize("model_class", [VixModel, VixForImageClassification])
def test_config_mutated_after_construction_is_rejected_when_building(model_class, mutation, pattern):
    config = tiny_config()
    for field, value in mutation.items():
        setattr(config, field, value)  # each value passes the field's type check; the combination is checked later
    with pytest.raises(ValueError, match=pattern):
        model_class(config)
    # strict's own entry point (also run by save_pretrained) reports the same check, wrapped.
    with pytest.raises(StrictDataclassClassValidationError, match=pattern) as error:
        config.validate()
    assert isinstance(error.value.__cause__, ValueError)


def test_valid_config_mutation_still_builds():
    config = tiny_config()
    config.attention_type = "nystrom"
    config.position_embedding_type = "rope_2d"
    model = VixForImageClassification(config).eval()
    assert model(pixels()).logits.shape == (2, 10)


# --------------------------------------------------------------------------------------------------------------
# Model inputs
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def softmax_model():
    return VixForImageClassification(tiny_config()).eval()


def test_wrong_channel_count(softmax_model):
    with pytest.raises(ValueError, match=r"pixel_values have 1 channels but the model expects 3.*RGB"):
        softmax_model(pixels(channels=1))
    with pytest.raises(ValueError, match=r"have 4 channels"):
        softmax_model(pixels(channels=4))


def test_wrong_image_size_with_learned_positions(softmax_model):
    with pytest.raises(ValueError) as error:
        softmax_model(pixels(height=48, width=48))
    message = str(error.value)
    assert "48*48" in message and "32*32" in message
    assert "interpolate_pos_encoding=True" in message  # the fix
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        softmax_model(pixels(height=32, width=64), interpolate_pos_encoding=False)


@pytest.mark.parametrize("position", ["learned", "rope_2d", "none"])
@pytest.mark.parametrize("size", [(30, 30), (32, 34)])
def test_image_not_divisible_by_patch_size(position, size):
    model = VixForImageClassification(tiny_config(position_embedding_type=position)).eval()
    height, width = size
    with pytest.raises(ValueError) as error:
        model(pixels(height=height, width=width), interpolate_pos_encoding=True)
    message = str(error.value)
    assert f"{height}x{width}" in message and "not divisible by the patch size 4" in message


def test_pixel_values_none(softmax_model):
    with pytest.raises(ValueError, match=r"specify pixel_values"):
        softmax_model(None)
    with pytest.raises(ValueError, match=r"specify pixel_values"):
        softmax_model(labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"specify pixel_values"):
        softmax_model.vix()


@pytest.mark.parametrize("shape", [(3, 32, 32), (2, 1, 3, 32, 32), (32, 32)])
def test_pixel_values_with_wrong_rank(softmax_model, shape):
    with pytest.raises(ValueError) as error:
        softmax_model(torch.randn(*shape))
    message = str(error.value)
    assert "(batch, channels, height, width)" in message and str(tuple(shape)) in message


@pytest.mark.parametrize("attention", ["linformer", "mixer"])
@pytest.mark.parametrize("size", [(48, 48), (32, 64), (16, 16)])
def test_fixed_length_mixers_reject_other_lengths(attention, size):
    model = VixForImageClassification(tiny_config(attention_type=attention, position_embedding_type="none")).eval()
    height, width = size
    tokens = (height // 4) * (width // 4) + 1
    with pytest.raises(ValueError) as error:
        model(pixels(height=height, width=width))
    message = str(error.value)
    assert "exactly 65 tokens" in message and f"got {tokens}" in message
    assert "Resize images" in message


@pytest.mark.parametrize("attention", ["linformer", "mixer"])
@pytest.mark.parametrize("position", ["learned", "none"])
def test_fixed_length_mixers_with_interpolate_pos_encoding(attention, position):
    """The flag cannot make a token-count-sized mixer run at another size: same clear error as without it;
    at the configured size it changes nothing."""
    model = VixForImageClassification(tiny_config(attention_type=attention, position_embedding_type=position)).eval()
    with pytest.raises(ValueError, match=r"exactly 65 tokens.*got 145.*Resize images"):
        model(pixels(height=48, width=48), interpolate_pos_encoding=True)
    native = pixels()
    assert torch.equal(model(native, interpolate_pos_encoding=True).logits, model(native).logits)


@pytest.mark.parametrize("attention", ["linformer", "mixer"])
def test_fixed_length_mixers_reject_other_lengths_with_rope_or_mean_pooling(attention):
    overrides = dict(attention_type=attention, pooling="mean")
    if attention == "linformer":
        overrides["position_embedding_type"] = "rope_2d"
    else:
        overrides["position_embedding_type"] = "none"
    model = VixForImageClassification(tiny_config(**overrides)).eval()
    with pytest.raises(ValueError, match=r"exactly 64 tokens.*got 144"):
        model(pixels(height=48, width=48))


def test_labels_in_range_are_fine(softmax_model):
    outputs = softmax_model(pixels(), labels=torch.tensor([0, 9]))
    assert torch.isfinite(outputs.loss)


def test_ignore_index_label_is_allowed_and_ignored(softmax_model):
    """-100 is cross-entropy's ignore index in transformers: the sample is left out of the loss."""
    inputs = pixels()
    with_ignored = softmax_model(inputs, labels=torch.tensor([3, -100])).loss
    first_only = softmax_model(inputs[:1], labels=torch.tensor([3])).loss
    torch.testing.assert_close(with_ignored, first_only, rtol=1e-5, atol=1e-6)


def test_model_from_dict_with_bad_value_is_rejected():
    config_dict = tiny_config().to_dict()
    config_dict["attention_type"] = "bogus"
    with pytest.raises(StrictDataclassFieldValidationError, match=re.escape("'attention_type' expected one of")):
        VixConfig.from_dict(config_dict)
    # A bad combination in a saved config is refused on load with the construction-time ValueError.
    config_dict.update(attention_type="fnet", position_embedding_type="rope_1d")
    with pytest.raises(ValueError, match=r"attention_type='fnet'.*RoPE"):
        VixConfig.from_dict(config_dict)
