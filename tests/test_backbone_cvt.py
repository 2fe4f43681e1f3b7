"""ViX CvT (`vix_cvt`): parity with transformers' CvtForImageClassification, every attention mixer, save / load and
remote code, the config's refusals, and the converter (`conversion.from_transformers_cvt`).

- converted from random-weight transformers CvTs (dw_bn with a cls token in the last stage, avg projections, no cls
  token), softmax: logits within 1e-5 and every stage's output close, in eval mode on real images;
- softmax, nystrom, performer, linformer: one training step gives every parameter a finite gradient;
- save_pretrained / from_pretrained and AutoModelForImageClassification with trust_remote_code in a process without
  the package give the same logits;
- fnet / mixer, impossible stage lists, grids and projections are refused at config time, naming what to change;
- the converter carries every tensor (q/k/v/o projections included) into nystrom / performer / linformer.
"""

import json
import time

import pytest
import torch
from torch import nn
from transformers import CvtConfig, CvtForImageClassification

import modeling_vix
from conftest import IMPLEMENTATIONS, SHARED_MODELING_FILES, implementation_of, run_without_package, tiny_cvt_config
from conversion.common import ConversionError
from conversion.from_transformers_cvt import convert_transformers_cvt, cvt_config_from_transformers
from modeling_vix import MIXER_CAPABILITIES, VixCvtConfig, VixCvtForImageClassification


ATOL = 1e-5
ATTENTION_MIXERS = [name for name, can in MIXER_CAPABILITIES.items() if can.supports_rope]
NUM_LABELS = 10


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one intra-op thread is faster here, above all when other processes hold the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pixels(batch=2, seed=0, size=32):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------------
# Parity with transformers' CvT
# --------------------------------------------------------------------------------------------------------------

# 3 stages on 32x32 images: 16x16, 8x8 and 4x4 tokens. transformers' CvT gives layer j of stage s the s-th drop-path
# rate of the stage, so it cannot build a stage s with fewer than s + 1 layers: depths 1, 2, 3 (not 1, 1, 2).
SOURCE_COMMON = dict(
    embed_dim=[16, 32, 48], num_heads=[1, 2, 3], depth=[1, 2, 3], patch_sizes=[3, 3, 3], patch_stride=[2, 2, 2],
    patch_padding=[1, 1, 1], mlp_ratio=[2.0, 2.0, 2.0], drop_path_rate=[0.0, 0.0, 0.1], num_labels=NUM_LABELS,
)
SOURCE_CASES = {
    "dw_bn-cls": dict(cls_token=[False, False, True]),
    # stride-1 keys in the first stage; a 5x5 projection; no qkv bias
    "dw_bn-cls-kernel5": dict(cls_token=[False, False, True], stride_kv=[1, 2, 2], kernel_qkv=[5, 5, 5],
                              padding_q=[2, 2, 2], padding_kv=[2, 2, 2], qkv_bias=[False, False, False]),
    # average-pooled keys and values (ceil mode: 16 -> 9, 8 -> 5, 4 -> 3 keys a side)
    "avg-cls": dict(cls_token=[False, False, True], qkv_projection_method=["avg", "avg", "avg"]),
    "dw_bn-no-cls": dict(cls_token=[False, False, False]),
}


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0, gain: float = 1.0) -> nn.Module:
    """Weights and BatchNorm statistics far from the init, so that a wrong conversion shows in the logits:
    norm gains ~1, biases ~0.1, matrices and convs std 1.5 / sqrt(fan_in), tokens std 0.5, running means ~0.1 and
    running variances in [0.5, 1.5]."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=generator)
        if param.ndim == 1 and name.endswith("weight"):
            param.copy_(1 + 0.2 * noise)
        elif name.endswith("bias"):
            param.copy_(0.1 * noise)
        elif "token" in name:
            param.copy_(0.5 * noise)
        else:
            param.copy_(noise * gain / param[0].numel() ** 0.5)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.copy_(0.1 * torch.randn(buffer.shape, generator=generator))
        elif name.endswith("running_var"):
            buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
    return model


def original_cvt_projections(source: CvtForImageClassification) -> CvtForImageClassification:
    """transformers' CvT builds no layer for "avg" (its forward fails); give it the original CvT's (microsoft/CvT
    `_build_projection`): AvgPool2d(kernel, stride, padding, ceil_mode=True) for keys and values, the grid itself
    for the queries."""
    from transformers.models.cvt.modeling_cvt import CvtSelfAttention

    c = source.config
    for name, module in source.named_modules():
        if isinstance(module, CvtSelfAttention):
            stage = int(name.split("stages.")[1].split(".")[0])
            module.convolution_projection_query.convolution_projection = nn.Identity()
            for projection in (module.convolution_projection_key, module.convolution_projection_value):
                projection.convolution_projection = nn.AvgPool2d(
                    c.kernel_qkv[stage], stride=c.stride_kv[stage], padding=c.padding_kv[stage], ceil_mode=True)
    return source


def build_source(case: str, seed: int = 0, gain: float = 1.0) -> CvtForImageClassification:
    torch.manual_seed(seed)
    source = CvtForImageClassification(CvtConfig(**SOURCE_COMMON, **SOURCE_CASES[case]))
    source = randomize(source, seed, gain).eval()
    if "avg" in case:
        original_cvt_projections(source)
    return source


def assert_max_diff(actual, expected, what, atol=ATOL, relative=2e-6):
    """Max abs difference <= max(atol, relative * the largest |expected|): residual streams grow, and fp32 rounding
    with them."""
    assert actual.shape == expected.shape, f"{what}: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    diff = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    bound = max(atol, relative * scale)
    print(f"{what}: max abs diff {diff:.2e} (scale {scale:.2f}, bound {bound:.1e})")
    assert diff <= bound, f"{what}: max abs diff {diff:.3e} > {bound:.1e}"


@pytest.mark.parametrize("case", list(SOURCE_CASES))
@torch.no_grad()
def test_converted_cvt_matches_transformers(case, cifar_images, cifar_pixels):
    source = build_source(case)
    result = convert_transformers_cvt(source, images=cifar_images[0][:4], config_overrides={"image_size": 32},
                                      atol=ATOL)
    parity = result.parity[0]
    assert parity["expected_exact"] and parity["max_abs_logit_diff"] <= ATOL, parity
    assert parity["inputs"].startswith("4 real images")
    model = result.model
    config = model.config
    assert isinstance(model, VixCvtForImageClassification) and config.attention_type == "softmax"
    assert config.depths == [1, 2, 3] and config.cls_token == SOURCE_CASES[case]["cls_token"]
    assert config.qkv_bias is SOURCE_CASES[case].get("qkv_bias", [True])[0]

    # Independently of the converter's check: both models on the 16 fixture images, logits and every stage.
    expected = source(cifar_pixels, output_hidden_states=True)
    assert expected.logits.abs().max() > 0.5  # random weights, not a trivial model
    outputs = model(cifar_pixels, output_hidden_states=True)
    assert_max_diff(outputs.logits, expected.logits, f"CvT {case} logits", relative=0)
    assert len(outputs.hidden_states) == sum(config.depths) + 1  # the first stage's embeddings, then every layer
    ends = torch.tensor(config.depths).cumsum(0).tolist()
    for stage, end in enumerate(ends):
        tokens = outputs.hidden_states[end][:, int(config.cls_token[stage]) :]  # (B, h*w, C)
        grid = expected.hidden_states[stage]  # (B, C, h, w)
        assert_max_diff(tokens.transpose(1, 2).reshape(grid.shape), grid, f"CvT {case} stage {stage} output")
    source_base = source.cvt(cifar_pixels)
    if config.cls_token[-1]:
        assert_max_diff(outputs.hidden_states[-1][:, :1], source_base.cls_token_value, f"CvT {case} cls token")
        assert_max_diff(model.cvt(cifar_pixels).pooler_output, source.layernorm(source_base.cls_token_value)[:, 0],
                        f"CvT {case} normed cls token")
    # In float64 the two agree to rounding: the fp32 differences above are rounding, not a near miss.
    pixels64 = cifar_pixels.double()
    expected64 = source.double()(pixels64, output_hidden_states=True).logits
    assert_max_diff(model.double()(pixels64).logits, expected64, f"CvT {case} float64 logits", atol=1e-10, relative=0)


def test_default_config_is_cvt_13():
    """VixCvtConfig's defaults are transformers' CvtConfig defaults (CvT-13), field by field through the converter."""
    converted = cvt_config_from_transformers(CvtConfig(), "softmax", (224, 224), {})
    defaults = VixCvtConfig()
    for name in ("image_size", "hidden_sizes", "depths", "num_attention_heads", "patch_sizes", "patch_stride",
                 "patch_padding", "mlp_ratio", "drop_path_rate", "cls_token", "qkv_projection_method", "kernel_qkv",
                 "padding_kv", "stride_kv", "padding_q", "stride_q", "qkv_bias", "hidden_dropout_prob",
                 "attention_probs_dropout_prob", "layer_norm_eps", "initializer_range"):
        assert getattr(converted, name) == getattr(defaults, name), name
    assert defaults.stage_num_tokens == [56 * 56, 28 * 28, 14 * 14 + 1]
    assert defaults.stage_num_key_tokens == [28 * 28, 14 * 14, 7 * 7 + 1]


# --------------------------------------------------------------------------------------------------------------
# Into the other mixers
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["nystrom", "performer", "linformer"])
@torch.no_grad()
def test_converter_carries_every_projection_into_another_mixer(attention, cifar_images):
    source = build_source("dw_bn-cls-kernel5")  # stride-1 keys in stage 0: Nystrom's residual conv exists there
    overrides = {"image_size": 32, "nystrom_num_landmarks": 8, "nystrom_residual_conv_kernel": 5, "linformer_k": 8}
    softmax = convert_transformers_cvt(source, images=cifar_images[0][:4], config_overrides=overrides, atol=ATOL)
    carried = convert_transformers_cvt(source, images=cifar_images[0][:4], config_overrides=overrides,
                                       attention_type=attention, atol=ATOL)
    model = carried.model
    assert model.config.attention_type == attention
    kernels = [layer.attention.kernel for stage in model.cvt.stages for layer in stage.layers]
    assert len(kernels) == 6 and all(type(kernel) is IMPLEMENTATIONS[attention] for kernel in kernels)
    softmax_state, carried_state = softmax.model.state_dict(), model.state_dict()
    projections = [key for key in softmax_state if key.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj")]
    assert len(projections) == 6 * 5  # 6 layers x (q, k, v weights without bias, o weight and bias)
    for key, tensor in softmax_state.items():  # every softmax tensor, the projections included, carried over
        assert torch.equal(carried_state[key], tensor), key
    new = sorted(set(carried_state) - set(softmax_state))
    if attention == "nystrom":  # only where queries and keys are equally many (stage 0), and zero
        assert new == ["cvt.stages.0.layers.0.attention.kernel.residual_conv.weight"]
        assert not carried_state[new[0]].any()
    elif attention == "performer":
        assert len(new) == 6 and all(key.endswith("attention.kernel.projection_matrix") for key in new)
    else:
        assert len(new) == 6 and all(key.endswith("attention.kernel.seq_proj_k") for key in new)
        # sized by the key tokens: 16x16 at stride 1; 8x8 -> 4x4 and 4x4 -> 2x2 + cls at stride 2 (kernel 5)
        assert [carried_state[key].shape[0] for key in new] == [256, 16, 16, 5, 5, 5]
    drift = carried.parity[-1]
    assert drift["attention_type"] == attention and drift["expected_exact"] is False
    print(f"{attention}: logit change from the softmax source {drift['max_abs_logit_diff']:.3e} "
          f"(scale {drift['reference_logit_scale']:.2f}), top-1 agreement {drift['top1_agreement']:.0%}")


def test_converter_refuses_another_architecture():
    from transformers import ViTConfig, ViTForImageClassification

    vit = ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                              num_attention_heads=2, intermediate_size=32, num_labels=3))
    with pytest.raises(ConversionError, match=r"Unsupported source ViTForImageClassification \(model_type 'vit'\).*"
                                              r"CvtForImageClassification"):
        convert_transformers_cvt(vit)


def test_converter_refuses_mixed_qkv_bias_and_mixers_without_queries():
    config = CvtConfig(**{**SOURCE_COMMON, "qkv_bias": [True, False, True]})
    with pytest.raises(ConversionError, match=r"qkv_bias differs between stages \(\[True, False, True\]\)"):
        cvt_config_from_transformers(config, "softmax", (32, 32), {})
    for attention in ("fnet", "mixer"):
        with pytest.raises(ConversionError, match=rf"attention_type='{attention}' has no queries, keys or values"):
            cvt_config_from_transformers(CvtConfig(**SOURCE_COMMON), attention, (32, 32), {})


# --------------------------------------------------------------------------------------------------------------
# Every attention mixer trains
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["dw_bn", "avg"])
@pytest.mark.parametrize("attention", ATTENTION_MIXERS)
def test_training_step_gives_every_parameter_a_finite_gradient(attention, method):
    config = tiny_cvt_config(attention_type=attention, qkv_projection_method=[method] * 3)
    model = VixCvtForImageClassification(config).train()
    assert all(type(implementation_of(layer.attention)) is IMPLEMENTATIONS[attention]
               for stage in model.cvt.stages for layer in stage.layers)
    if attention == "nystrom":  # the residual conv where keys are as many as queries (stage 0, stride 1) only
        assert [layer.attention.kernel.residual_conv is not None
                for stage in model.cvt.stages for layer in stage.layers] == [True, False, False, False]
    parameters = dict(model.named_parameters())
    outputs = model(pixels(4), labels=torch.arange(4) % NUM_LABELS, output_hidden_states=True)
    assert outputs.logits.shape == (4, NUM_LABELS) and torch.isfinite(outputs.loss)
    assert [tuple(state.shape) for state in outputs.hidden_states] == [
        (4, 256, 16), (4, 256, 16), (4, 64, 32), (4, 17, 48), (4, 17, 48)]
    outputs.loss.backward()
    missing = [name for name, p in parameters.items() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [name for name, p in parameters.items() if not torch.isfinite(p.grad).all()]
    assert not bad, f"parameters with non-finite gradient: {bad}"


def test_weights_start_as_transformers_cvt_initialises_them():
    """Truncated normal (std initializer_range) for every Linear and conv, zero biases, cls tokens as the weights,
    norms at identity with fresh BatchNorm statistics."""
    model = VixCvtForImageClassification(tiny_cvt_config(initializer_range=0.05))
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            assert module.bias is None or not module.bias.any(), name
            if module.weight.numel() >= 500:
                assert 0.04 < module.weight.std().item() < 0.06, name
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            assert torch.equal(module.weight, torch.ones_like(module.weight)) and not module.bias.any(), name
            if isinstance(module, nn.BatchNorm2d):
                assert not module.running_mean.any() and torch.equal(module.running_var, torch.ones_like(module.bias))
    cls_token = model.cvt.stages[2].embeddings.cls_token
    assert 0.02 < cls_token.std().item() < 0.1 and cls_token.abs().max() < 2
    assert [stage.embeddings.cls_token is not None for stage in model.cvt.stages] == [False, False, True]
    # stochastic depth rising linearly within each stage (0.1 in the last stage's second layer)
    assert [layer.drop_path.drop_prob for stage in model.cvt.stages for layer in stage.layers] == [
        0.0, 0.0, 0.0, pytest.approx(0.1)]


def test_attention_maps_have_the_strided_key_count():
    model = VixCvtForImageClassification(tiny_cvt_config()).eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        maps = model(pixels(2), output_attentions=True).attentions
    # (B, heads, queries, keys): stride 1 in stage 0, then stride-2 keys; the cls token in the last stage.
    assert [tuple(weights.shape) for weights in maps] == [(2, 1, 256, 256), (2, 2, 64, 16), (2, 3, 17, 5),
                                                          (2, 3, 17, 5)]


def test_other_image_sizes_run_except_linformer():
    for attention in ("softmax", "nystrom", "performer"):
        model = VixCvtForImageClassification(tiny_cvt_config(attention_type=attention)).eval()
        with torch.no_grad():
            assert model(pixels(1, size=48)).logits.shape == (1, NUM_LABELS)
    model = VixCvtForImageClassification(tiny_cvt_config(attention_type="linformer")).eval()
    with pytest.raises(ValueError, match="Linformer projects exactly 256 tokens of keys"):
        model(pixels(1, size=48))


# --------------------------------------------------------------------------------------------------------------
# Save / load, and remote code without the package
# --------------------------------------------------------------------------------------------------------------

REMOTE_SCRIPT = """
import json, sys
import torch
from transformers import AutoModel, AutoModelForImageClassification

spec = json.loads(sys.argv[1])
try:
    import modeling_vix  # noqa: F401
    hidden = False
except ImportError:
    hidden = True
report, outputs = {"hidden": hidden}, {}
pixels = torch.load(spec["pixels"], weights_only=True)
for name, folder in spec["folders"].items():
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    report[name] = [type(model).__module__ + "." + type(model).__qualname__,
                    type(base).__module__ + "." + type(base).__qualname__]
    with torch.no_grad():
        outputs[name] = {"logits": model(pixels).logits, "hidden": base(pixels).last_hidden_state}
torch.save(outputs, spec["outputs"])
print(json.dumps(report))
"""
REMOTE_FOLDERS = {
    # performer's saved features, BatchNorm statistics; linformer's key-count-sized projections with avg pooling;
    # nystrom's residual conv in stage 0 and mean pooling without a cls token
    "performer_dw_bn": dict(attention_type="performer"),
    "linformer_avg": dict(attention_type="linformer", qkv_projection_method=["avg", "avg", "avg"]),
    "nystrom_no_cls": dict(attention_type="nystrom", cls_token=[False, False, False]),
}


def test_save_load_and_remote_code_without_the_package(tmp_path, cifar_pixels):
    from transformers import AutoModelForImageClassification

    package_dir = modeling_vix.__file__.rsplit("/", 1)[0]
    folders, expected = {}, {}
    for index, (name, overrides) in enumerate(REMOTE_FOLDERS.items()):
        torch.manual_seed(index)
        model = randomize(VixCvtForImageClassification(tiny_cvt_config(**overrides)), seed=index).eval()
        folder = tmp_path / name
        model.save_pretrained(folder)
        folders[name] = str(folder)
        with torch.no_grad():
            expected[name] = (model(cifar_pixels).logits, model.cvt(cifar_pixels).last_hidden_state)
        torch.manual_seed(1234)  # a reload must not depend on (or draw from) the global RNG
        for loader in (VixCvtForImageClassification, AutoModelForImageClassification):
            reloaded = loader.from_pretrained(folder).eval()
            assert type(reloaded) is VixCvtForImageClassification
            with torch.no_grad():
                assert torch.equal(reloaded(cifar_pixels).logits, expected[name][0]), name
            reloaded_state = reloaded.state_dict()
            for key, tensor in model.state_dict().items():
                assert torch.equal(tensor, reloaded_state[key]), key
        for filename in ("configuration_vix_cvt.py", "modeling_vix_cvt.py", *SHARED_MODELING_FILES):
            assert (folder / filename).read_bytes() == open(f"{package_dir}/{filename}", "rb").read(), filename
        config = json.loads((folder / "config.json").read_text())
        assert config["model_type"] == "vix_cvt"
        assert config["auto_map"]["AutoConfig"] == "configuration_vix_cvt.VixCvtConfig"
        assert config["auto_map"]["AutoModel"] == "modeling_vix_cvt.VixCvtModel"
        assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_vix_cvt.VixCvtForImageClassification"
    torch.save(cifar_pixels, tmp_path / "pixels.pt")
    spec = {"folders": folders, "pixels": str(tmp_path / "pixels.pt"), "outputs": str(tmp_path / "outputs.pt")}
    start = time.perf_counter()
    proc = run_without_package(REMOTE_SCRIPT, [json.dumps(spec)], tmp_path)
    print(f"remote-code child: {time.perf_counter() - start:.1f} s")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    outputs = torch.load(tmp_path / "outputs.pt", weights_only=True)
    assert report.pop("hidden"), "`import modeling_vix` worked in the child: remote code was not exercised"
    for name in REMOTE_FOLDERS:
        model_class, base_class = report[name]
        assert model_class.startswith("transformers_modules.") and base_class.startswith("transformers_modules.")
        assert model_class.endswith("modeling_vix_cvt.VixCvtForImageClassification")
        assert base_class.endswith("modeling_vix_cvt.VixCvtModel")
        assert torch.equal(outputs[name]["logits"], expected[name][0]), name
        assert torch.equal(outputs[name]["hidden"], expected[name][1]), name


# --------------------------------------------------------------------------------------------------------------
# Config refusals
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", [name for name in MIXER_CAPABILITIES if name not in ATTENTION_MIXERS])
def test_mixers_without_queries_and_keys_are_refused(attention):
    with pytest.raises(ValueError, match=rf"CvT needs an attention mixer.*convolutional projections.*"
                                         rf"attention_type='{attention}'"):
        tiny_cvt_config(attention_type=attention)


@pytest.mark.parametrize("overrides,match", [
    (dict(depths=[1, 1]), r"one entry per stage.*'depths': 2"),
    (dict(cls_token=[True]), r"one entry per stage.*'cls_token': 1"),
    (dict(num_attention_heads=[1, 3, 3]), r"Stage 1: hidden size 32 must be a multiple of its 3 heads"),
    (dict(image_size=4, patch_padding=[0, 0, 0]), r"image_size 4x4 leaves stage 1 without tokens \(token grid"),
    (dict(image_size=[4, 8], padding_kv=[0, 0, 0]), r"4x8 leaves stage 0 without tokens.*key grid \(0, 2\)"),
    (dict(patch_stride=[0, 2, 2]), r"patch_stride must be positive"),
    (dict(stride_q=[2, 1, 1]), r"Stage 0: the query projection must keep the token grid.*stride_q=1"),
    (dict(padding_q=[0, 1, 1]), r"Stage 0: the query projection must keep the token grid.*padding_q"),
    (dict(qkv_projection_method=["dw_bn", "max", "dw_bn"]), r"qkv_projection_method must be one of dw_bn, avg, "
                                                            r"linear.*'max' in stage 1"),
    (dict(qkv_projection_method=["avg"] * 3, padding_kv=[2, 1, 1]), r"padding_kv of at most half its kernel"),
    (dict(drop_path_rate=[0.0, 1.0, 0.0]), r"drop_path_rate must lie in \[0, 1\)"),
    (dict(nystrom_padding="zeros_front"), r"nystrom_padding.*CvT keeps their defaults"),
], ids=["depths", "cls_token", "heads", "image_too_small", "no_keys", "patch_stride", "stride_q", "padding_q", "method",
        "avg_padding", "drop_path", "compatibility"])
def test_impossible_settings_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        tiny_cvt_config(**overrides)


def test_token_counts_match_what_the_mixers_see():
    config = tiny_cvt_config(image_size=[32, 48], qkv_projection_method=["dw_bn", "avg", "linear"],
                             cls_token=[True, False, True])
    assert config.stage_num_tokens == [16 * 24 + 1, 8 * 12, 4 * 6 + 1]
    # stride 1 conv; avg pool with ceil mode (8 -> 5, 12 -> 7); linear keeps the grid
    assert config.stage_num_key_tokens == [16 * 24 + 1, 5 * 7, 4 * 6 + 1]
    model = VixCvtForImageClassification(config.__class__(**{**config.to_dict(), "attention_type": "linformer"}))
    with torch.no_grad():  # Linformer checks the key count of every layer against the config's
        assert model(torch.randn(1, 3, 32, 48)).logits.shape == (1, NUM_LABELS)


CONFIG_ONLY_SCRIPT = """
import importlib, json, sys, types

package = types.ModuleType("vix_configs_only")
package.__path__ = [sys.argv[1]]
sys.modules["vix_configs_only"] = package
module = importlib.import_module("vix_configs_only.configuration_vix_cvt")
config = module.VixCvtConfig(image_size=64)
try:
    module.VixCvtConfig(attention_type="fnet")
    refusal = None
except ValueError as error:
    refusal = str(error)
print(json.dumps({"loaded": sorted(name for name, m in sys.modules.items()
                                   if m is not None and name.startswith(("vix_configs_only", "modeling_vix"))),
                  "tokens": config.stage_num_tokens, "refusal": refusal}))
"""


def test_config_module_imports_no_modeling_code(tmp_path):
    proc = run_without_package(CONFIG_ONLY_SCRIPT, [modeling_vix.__file__.rsplit("/", 1)[0]], tmp_path, timeout=120)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["loaded"] == ["vix_configs_only", "vix_configs_only.configuration_vix",
                                "vix_configs_only.configuration_vix_cvt"]
    assert report["tokens"] == [16 * 16, 8 * 8, 4 * 4 + 1]
    assert "CvT needs an attention mixer" in report["refusal"]
