"""CCT and PiT (`vix_cct`, `vix_pit`) with every mixer of the registry, on tiny configs (CvT and LeViT have their
own test files; the remote-code round trip below covers all four backbones).

- every (backbone, mixer, positions) the configs accept: one training step (finite loss, every parameter a finite
  gradient), save_pretrained / from_pretrained round trip (identical logits and state), batching equivalence;
- saved CCT and PiT folders load with trust_remote_code=True in a fresh process without the package;
- the configs' refusals (RoPE without queries and keys, PiT widths and per-stage lists, a tokenizer with no tokens);
- parity with the references they convert from: vit-pytorch's CCT (the official CCT code) and PiT, softmax, logits
  and hidden states on real images; a softmax CCT carried into the linear-attention mixers keeps every projection.
"""

import importlib.util
import json

import pytest
import torch
from huggingface_hub.errors import StrictDataclassFieldValidationError
from torch import nn

import modeling_vix
from conftest import (
    IMPLEMENTATIONS,
    SHARED_MODELING_FILES,
    implementation_of,
    run_without_package,
    tiny_cct_config,
    tiny_cvt_config,
    tiny_levit_config,
    tiny_pit_config,
)
from modeling_vix import (
    MIXER_CAPABILITIES,
    VixCctForImageClassification,
    VixCvtForImageClassification,
    VixLevitForImageClassification,
    VixPitForImageClassification,
)


NUM_LABELS = 10
BACKBONE = {
    "cct": (tiny_cct_config, VixCctForImageClassification, "cct"),
    "pit": (tiny_pit_config, VixPitForImageClassification, "pit"),
}
CCT_POSITIONS = ("learned", "sine", "none")
ROPE_POSITIONS = ("rope_1d", "rope_2d")
PIT_POSITIONS = ("learned", "none")

CASES = []
for attention, can in MIXER_CAPABILITIES.items():
    # RoPE only where the mixer has queries and keys (the config refuses the rest: test_cct_refuses_rope_...).
    for position in CCT_POSITIONS + (ROPE_POSITIONS if can.supports_rope else ()):
        CASES.append(pytest.param("cct", attention, position, {}, id=f"cct-{attention}-{position}"))
    CASES.append(pytest.param("cct", attention, "learned", {"pooling": "mean"}, id=f"cct-{attention}-learned-mean"))
    for position in PIT_POSITIONS:
        CASES.append(pytest.param("pit", attention, position, {}, id=f"pit-{attention}-{position}"))
PIT_THREE_STAGES = dict(hidden_sizes=[8, 16, 32], depths=[1, 2, 1], num_attention_heads=[1, 2, 4])
CASES += [pytest.param("pit", attention, "learned", PIT_THREE_STAGES, id=f"pit3-{attention}")
          for attention in MIXER_CAPABILITIES]


def make_model(backbone, attention, position, overrides=None):
    make_config, model_class, _ = BACKBONE[backbone]
    return model_class(make_config(attention_type=attention, position_embedding_type=position, **(overrides or {})))


def base_of(model):
    return getattr(model, model.base_model_prefix)  # model.cct / model.pit


def pixels(batch=2, seed=0):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_cases_cover_every_registered_mixer_on_both_backbones():
    covered = {(case.values[0], case.values[1]) for case in CASES}
    assert covered == {(backbone, attention) for backbone in BACKBONE for attention in IMPLEMENTATIONS}


# --------------------------------------------------------------------------------------------------------------
# Every mixer on both backbones
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone,attention,position,overrides", CASES)
def test_training_step_gives_every_parameter_a_finite_gradient(backbone, attention, position, overrides):
    model = make_model(backbone, attention, position, overrides).train()
    for layer in (m for m in model.modules() if isinstance(m, IMPLEMENTATIONS[attention])):
        assert layer.capabilities == MIXER_CAPABILITIES[attention]
    assert any(isinstance(m, IMPLEMENTATIONS[attention]) for m in model.modules())
    parameters = dict(model.named_parameters())
    outputs = model(pixels(4), labels=torch.arange(4) % NUM_LABELS, output_hidden_states=True)
    assert outputs.logits.shape == (4, NUM_LABELS)
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    num_layers = model.config.num_hidden_layers if backbone == "cct" else sum(model.config.depths)
    assert len(outputs.hidden_states) == num_layers + 1  # the embeddings, then every layer
    outputs.loss.backward()
    missing = [name for name, p in parameters.items() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [name for name, p in parameters.items() if not torch.isfinite(p.grad).all()]
    assert not bad, f"parameters with non-finite gradient: {bad}"
    assert not any("projection_matrix" in name or "sine_positions" in name for name in parameters)


@pytest.mark.parametrize("backbone,attention,position,overrides", CASES)
def test_save_and_load_round_trip(tmp_path, backbone, attention, position, overrides):
    from transformers import AutoModelForImageClassification

    model = make_model(backbone, attention, position, overrides).eval()
    inputs = pixels(2)
    with torch.no_grad():
        expected = model(inputs).logits
    model.save_pretrained(tmp_path)
    torch.manual_seed(1234)  # a reload must not depend on (or draw from) the global RNG
    for loader in (type(model), AutoModelForImageClassification):
        reloaded = loader.from_pretrained(tmp_path).eval()
        assert type(reloaded) is type(model)
        assert reloaded.config.attention_type == attention
        assert reloaded.config.position_embedding_type == position
        with torch.no_grad():
            torch.testing.assert_close(reloaded(inputs).logits, expected, rtol=0, atol=0)
        state, reloaded_state = model.state_dict(), reloaded.state_dict()
        assert state.keys() == reloaded_state.keys()
        for name, tensor in state.items():
            assert torch.equal(tensor, reloaded_state[name]), name
        # Non-persistent buffers (CCT's sine table, RoPE frequencies) are refilled, not left as meta-device garbage.
        for (name, buffer), (_, reloaded_buffer) in zip(model.named_buffers(), reloaded.named_buffers(), strict=True):
            assert torch.equal(buffer, reloaded_buffer), name


BATCHING_ATOL = 5e-5


def batch_dependence(model) -> float:
    """Max |logits of a sample alone - its logits in the batch| over a batch of samples of very different scale
    (so that any statistic shared across the batch shows)."""
    batch = pixels(4, seed=3) * torch.tensor([0.25, 1.0, 3.0, 8.0])[:, None, None, None]
    with torch.no_grad():
        batched = model(batch).logits
        return max((model(batch[i : i + 1]).logits[0] - batched[i]).abs().max().item() for i in range(4))


@pytest.mark.parametrize("backbone,attention,position,overrides", CASES)
def test_batching_equivalence(backbone, attention, position, overrides):
    """With the default (per-sample) settings no mixer shares a statistic across the batch, so a sample gives the
    same output alone as in a batch of very different samples. Weights are randomized (peaked attention): at the
    init's near-uniform attention even a batch-wide statistic hardly moves the outputs (< 1e-6). Not too peaked
    either: the sharper the softmax, the more it amplifies fp32 rounding (in float64 the difference is 0)."""
    model = randomize(make_model(backbone, attention, position, overrides), gain=1.0).eval()
    batch = pixels(4, seed=3) * torch.tensor([0.25, 1.0, 3.0, 8.0])[:, None, None, None]
    with torch.no_grad():
        batched = model(batch).logits
        batched_hidden = base_of(model)(batch).last_hidden_state
        for index in range(4):
            # fp32 rounding only, up to ~2.5e-5 here (FNet's FFT over 256 tokens x 32 channels sums 8192 terms and
            # its batched and single-sample kernels round differently); a statistic shared across the batch moves
            # these logits by 5e-4 or more (test_batch_wide_settings_fail_the_batching_check).
            alone = model(batch[index : index + 1]).logits
            torch.testing.assert_close(alone[0], batched[index], rtol=0, atol=BATCHING_ATOL)
            alone_hidden = base_of(model)(batch[index : index + 1]).last_hidden_state
            torch.testing.assert_close(alone_hidden[0], batched_hidden[index], rtol=0, atol=BATCHING_ATOL)


@pytest.mark.parametrize("backbone", list(BACKBONE))
@pytest.mark.parametrize("attention,setting", [
    ("nystrom", {"nystrom_pinv_scale": "global"}), ("performer", {"performer_key_stabilizer": "global"}),
], ids=["nystrom-global-pinv-scale", "performer-global-key-stabilizer"])
def test_batch_wide_settings_fail_the_batching_check(backbone, attention, setting):
    """The compatibility settings that take a maximum over the whole batch (as the authors' packages do) make a
    sample depend on its batch, by far more than the tolerance above: the check can fail."""
    per_sample = batch_dependence(randomize(make_model(backbone, attention, "learned"), gain=1.0).eval())
    batch_wide = batch_dependence(randomize(make_model(backbone, attention, "learned", setting), gain=1.0).eval())
    print(f"{backbone} {attention}: batch dependence {per_sample:.1e} per sample, {batch_wide:.1e} with {setting}")
    assert per_sample < BATCHING_ATOL and batch_wide > 4 * BATCHING_ATOL


# --------------------------------------------------------------------------------------------------------------
# Remote code: a fresh process without the package
# --------------------------------------------------------------------------------------------------------------

REMOTE_FOLDERS = {
    # (backbone, config overrides): buffers (performer), refilled RoPE frequencies and the sine table,
    # token-count-sized parameters (linformer), stages with pooling.
    "cct_nystrom_rope2d": ("cct", dict(attention_type="nystrom", position_embedding_type="rope_2d")),
    "cct_linformer_sine": ("cct", dict(attention_type="linformer", position_embedding_type="sine")),
    "pit_performer_learned": ("pit", dict(attention_type="performer")),
    "pit3_mixer_none": ("pit", dict(attention_type="mixer", position_embedding_type="none", **PIT_THREE_STAGES)),
}
# ... and every other backbone x mixer combination at its defaults, so that each round-trips through remote code
# (CvT and LeViT take the attention mixers only; LeViP has no attention bias).
REMOTE_BACKBONES = {
    **BACKBONE,
    "cvt": (tiny_cvt_config, VixCvtForImageClassification, "cvt"),
    "levit": (tiny_levit_config, VixLevitForImageClassification, "levit"),
}
for _backbone in REMOTE_BACKBONES:
    _covered = {overrides["attention_type"] for name, (b, overrides) in REMOTE_FOLDERS.items() if b == _backbone}
    _attention_mixers = [name for name, can in MIXER_CAPABILITIES.items() if can.supports_rope]
    _mixers = IMPLEMENTATIONS if _backbone in BACKBONE else _attention_mixers
    for _mixer in sorted(set(_mixers) - _covered):
        _bias = {"attention_bias": False} if (_backbone, _mixer) == ("levit", "performer") else {}
        REMOTE_FOLDERS[f"{_backbone}_{_mixer}"] = (_backbone, dict(attention_type=_mixer, **_bias))
MODELING_FILES = {name: (f"configuration_vix_{name}.py", f"modeling_vix_{name}.py") for name in REMOTE_BACKBONES}
SHARED_FILES = SHARED_MODELING_FILES

REMOTE_SCRIPT = """
import json, sys
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

spec = json.loads(sys.argv[1])
try:
    import modeling_vix  # noqa: F401
    hidden = False
except ImportError:
    hidden = True
report, outputs = {"hidden": hidden}, {}
pixels = torch.load(spec["pixels"], weights_only=True)
for name, folder in spec["folders"].items():
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    report[name] = {kind: type(obj).__module__ + "." + type(obj).__qualname__
                    for kind, obj in (("config", config), ("model", model), ("base", base))}
    with torch.no_grad():
        outputs[name] = {"logits": model(pixels).logits, "hidden": base(pixels).last_hidden_state}
torch.save(outputs, spec["outputs"])
print(json.dumps(report))
"""


def test_saved_backbones_load_with_remote_code_without_the_package(tmp_path, cifar_pixels):
    package_dir = modeling_vix.__file__.rsplit("/", 1)[0]
    folders, expected = {}, {}
    for index, (name, (backbone, overrides)) in enumerate(REMOTE_FOLDERS.items()):
        torch.manual_seed(index)
        make_config, model_class, prefix = REMOTE_BACKBONES[backbone]
        model = model_class(make_config(**overrides)).eval()
        folder = tmp_path / name
        model.save_pretrained(folder)
        folders[name] = str(folder)
        with torch.no_grad():
            expected[name] = (model(cifar_pixels).logits, getattr(model, prefix)(cifar_pixels).last_hidden_state)
        # The folder is self-contained: the backbone's own files and the shared ones, current copies.
        for filename in MODELING_FILES[backbone] + SHARED_FILES:
            assert (folder / filename).read_bytes() == open(f"{package_dir}/{filename}", "rb").read(), filename
        config = json.loads((folder / "config.json").read_text())
        module = f"modeling_vix_{backbone}"
        assert config["model_type"] == f"vix_{backbone}"
        assert config["auto_map"]["AutoConfig"] == f"configuration_vix_{backbone}.Vix{backbone.title()}Config"
        assert config["auto_map"]["AutoModel"] == f"{module}.Vix{backbone.title()}Model"
        assert config["auto_map"]["AutoModelForImageClassification"] == (
            f"{module}.Vix{backbone.title()}ForImageClassification")
    torch.save(cifar_pixels, tmp_path / "pixels.pt")
    spec = {"folders": folders, "pixels": str(tmp_path / "pixels.pt"), "outputs": str(tmp_path / "outputs.pt")}
    proc = run_without_package(REMOTE_SCRIPT, [json.dumps(spec)], tmp_path)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    outputs = torch.load(tmp_path / "outputs.pt", weights_only=True)
    assert report.pop("hidden"), "`import modeling_vix` worked in the child: remote code was not exercised"
    for name, (backbone, _) in REMOTE_FOLDERS.items():
        title = backbone.title()
        for kind, suffix in (("config", f"configuration_vix_{backbone}.Vix{title}Config"),
                             ("model", f"modeling_vix_{backbone}.Vix{title}ForImageClassification"),
                             ("base", f"modeling_vix_{backbone}.Vix{title}Model")):
            assert report[name][kind].startswith("transformers_modules."), report[name]
            assert report[name][kind].endswith(suffix), report[name]
        logits, hidden = expected[name]
        assert torch.equal(outputs[name]["logits"], logits), name
        assert torch.equal(outputs[name]["hidden"], hidden), name


# --------------------------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", [name for name, can in MIXER_CAPABILITIES.items() if not can.supports_rope])
@pytest.mark.parametrize("position", ROPE_POSITIONS)
def test_cct_refuses_rope_for_mixers_without_queries_and_keys(attention, position):
    with pytest.raises(ValueError) as error:
        tiny_cct_config(attention_type=attention, position_embedding_type=position)
    message = str(error.value)
    assert "RoPE" in message and repr(attention) in message
    assert "'learned'" in message  # what to use instead


def test_pit_has_no_rope():
    with pytest.raises(StrictDataclassFieldValidationError, match=r"'position_embedding_type' expected one of"):
        tiny_pit_config(position_embedding_type="rope_2d")


def test_pit_widths_must_multiply_at_each_pooling():
    with pytest.raises(ValueError, match=r"24 must be a multiple of 16"):
        tiny_pit_config(hidden_sizes=[16, 24])
    tiny_pit_config(hidden_sizes=[16, 48])  # any multiple (PiT doubles)


@pytest.mark.parametrize("overrides", [
    dict(hidden_sizes=[16, 32, 64]),
    dict(depths=[1]),
    dict(num_attention_heads=[2, 4, 8]),
    dict(intermediate_sizes=[32]),
], ids=["hidden_sizes", "depths", "num_attention_heads", "intermediate_sizes"])
def test_pit_per_stage_lists_must_have_one_entry_per_stage(overrides):
    with pytest.raises(ValueError, match=r"one entry per stage") as error:
        tiny_pit_config(**overrides)
    assert next(iter(overrides)) in str(error.value)


def test_pit_hidden_size_must_divide_into_heads():
    with pytest.raises(ValueError, match=r"Stage 1: hidden size 32 must be a multiple of its 3 heads"):
        tiny_pit_config(num_attention_heads=[2, 3])
    assert tiny_pit_config(num_attention_heads=[2, 3], head_dim=8).stage_head_dims == [8, 8]


def test_cct_tokenizer_that_makes_no_tokens_is_refused():
    with pytest.raises(ValueError, match=r"tokenizer turns a 4x4 image into no tokens"):
        tiny_cct_config(image_size=4, tokenizer_padding=0, tokenizer_pooling_padding=0)
    with pytest.raises(ValueError, match=r"tokenizer_stride must be a positive int or one per tokenizer layer \(3\)"):
        tiny_cct_config(tokenizer_stride=[2, 1])


# --------------------------------------------------------------------------------------------------------------
# Parity with vit-pytorch's CCT and PiT
# --------------------------------------------------------------------------------------------------------------

needs_vit_pytorch = pytest.mark.skipif(
    importlib.util.find_spec("vit_pytorch") is None,
    reason="vit-pytorch is not installed (pip install --no-deps vit-pytorch==1.26.11)",
)
ATOL = 1e-5

CCT_TOKENIZERS = {
    # two conv layers 3x3 stride 1, each with a 3x3 stride-2 max pool: 32 -> 16 -> 8 (64 tokens)
    "conv3x2": dict(n_conv_layers=2, kernel_size=3, stride=1, padding=1, pooling_kernel_size=3, pooling_stride=2,
                    pooling_padding=1),
    # one 7x7 stride-2 conv and a stride-2 pool (CCT's ImageNet tokenizer): 32 -> 16 -> 8
    "conv7x1": dict(n_conv_layers=1, kernel_size=7, stride=2, padding=3, pooling_kernel_size=3, pooling_stride=2,
                    pooling_padding=1),
}
CCT_SOURCE_CASES = {
    "learnable-conv3x2": dict(positional_embedding="learnable", **CCT_TOKENIZERS["conv3x2"]),
    "sine-conv3x2": dict(positional_embedding="sine", **CCT_TOKENIZERS["conv3x2"]),
    "none-conv7x1": dict(positional_embedding="none", **CCT_TOKENIZERS["conv7x1"]),
    "learnable-conv7x1": dict(positional_embedding="learnable", **CCT_TOKENIZERS["conv7x1"]),
}
CCT_COMMON = dict(img_size=32, embedding_dim=32, num_layers=2, num_heads=4, mlp_ratio=2, num_classes=NUM_LABELS,
                  n_input_channels=3)
PIT_SOURCE_CASES = {
    # one head as wide as the model in the first stage: vit-pytorch has no output projection there
    "one-head-full-width": dict(image_size=32, patch_size=4, num_classes=NUM_LABELS, dim=16, depth=(1, 1), heads=1,
                                dim_head=16, mlp_dim=32),
    "three-stages": dict(image_size=32, patch_size=4, num_classes=NUM_LABELS, dim=16, depth=(1, 2, 1),
                         heads=(2, 4, 8), dim_head=8, mlp_dim=48),
}


@torch.no_grad()
def randomize(module: nn.Module, seed: int = 0, gain: float = 1.5) -> nn.Module:
    """Weights far from the near-uniform-attention init, so that a wrong conversion shows in the logits: LayerNorm
    gains around 1, biases ~0.1, matrices and convs std gain/sqrt(fan_in), learned positions and tokens std 0.5.
    Fixed (requires_grad=False) tables such as CCT's sine positions are left alone."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        noise = torch.randn(param.shape, generator=generator)
        if param.ndim == 1 and name.endswith("weight"):
            param.copy_(1 + 0.2 * noise)
        elif name.endswith("bias"):
            param.copy_(0.1 * noise)
        elif "pos" in name or "token" in name:
            param.copy_(0.5 * noise)
        else:
            param.copy_(noise * gain / (param[0].numel() ** 0.5))
    return module


def build_source(architecture, kwargs):
    from conversion.vit_pytorch_backbones import load_vit_pytorch_module

    module = load_vit_pytorch_module(architecture)
    return randomize(module.CCT(**kwargs) if architecture == "cct" else module.PiT(**kwargs)).eval()


def capture(hooks):
    """Register (module, kind) hooks; returns (the captured tensors per name, the handles)."""
    captured, handles = {}, []
    for name, (module, kind) in hooks.items():
        if kind == "input":
            handles.append(module.register_forward_pre_hook(
                lambda m, args, name=name: captured.__setitem__(name, args[0].clone())))
        else:
            handles.append(module.register_forward_hook(
                lambda m, args, output, name=name: captured.__setitem__(name, output.clone())))
    return captured, handles


def assert_max_diff(actual, expected, what, atol=ATOL, relative=None):
    """Max abs difference <= atol, or <= relative * the largest |expected| when given (residual streams grow to
    tens, where fp32 rounding alone is a few 1e-6)."""
    assert actual.shape == expected.shape, f"{what}: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    diff = (actual - expected).abs().max().item()
    scale = expected.abs().max().item()
    bound = atol if relative is None else max(atol, relative * scale)
    print(f"{what}: max abs diff {diff:.2e} (scale {scale:.2f}, bound {bound:.1e})")
    assert diff <= bound, f"{what}: max abs diff {diff:.3e} > {bound:.1e}"


def assert_hidden_close(actual, expected, what):
    assert_max_diff(actual, expected, what, relative=2e-6)


@needs_vit_pytorch
@pytest.mark.parametrize("case", list(CCT_SOURCE_CASES))
@torch.no_grad()
def test_converted_cct_matches_vit_pytorch(case, cifar_images, cifar_pixels):
    from conversion.vit_pytorch_backbones import convert_backbone

    kwargs = {**CCT_COMMON, **CCT_SOURCE_CASES[case]}
    source = build_source("cct", kwargs)
    result, converter_pixels, _ = convert_backbone("cct", source.state_dict(), kwargs, images=cifar_images[0],
                                                   atol=ATOL)
    assert result.parity[0]["max_abs_logit_diff"] <= ATOL
    # The converter measured on the real images (its first 8), through the folder's own processor.
    assert torch.equal(converter_pixels, result.processor(cifar_images[0][:8], return_tensors="pt")["pixel_values"])
    model = result.model
    expected_position = {"learnable": "learned", "sine": "sine", "none": "none"}[kwargs["positional_embedding"]]
    assert isinstance(model, VixCctForImageClassification)
    assert model.config.position_embedding_type == expected_position and model.config.attention_type == "softmax"
    assert model.config.num_tokens == 64

    # Independently of the converter's own check: both models on the fixture's pixels, logits and hidden states.
    classifier = source.classifier
    hooks = {"embedded": (classifier.blocks[0], "input"), "normed": (classifier.norm, "output"),
             "pooled": (classifier.fc, "input"),
             **{f"block{i}": (block, "output") for i, block in enumerate(classifier.blocks)}}
    captured, handles = capture(hooks)
    expected = source(cifar_pixels)
    for handle in handles:
        handle.remove()
    assert expected.abs().max() > 0.5  # random weights, not a trivial model
    outputs = model(cifar_pixels, output_hidden_states=True)
    assert_max_diff(outputs.logits, expected, f"CCT {case} logits")
    assert_hidden_close(outputs.hidden_states[0], captured["embedded"], f"CCT {case} tokens + positions")
    for i in range(len(classifier.blocks)):
        assert_hidden_close(outputs.hidden_states[i + 1], captured[f"block{i}"], f"CCT {case} block {i}")
    base = model.cct(cifar_pixels)
    assert_hidden_close(base.last_hidden_state, captured["normed"], f"CCT {case} final norm")
    assert_hidden_close(base.pooler_output, captured["pooled"], f"CCT {case} sequence pooling")


@needs_vit_pytorch
@pytest.mark.parametrize("case", list(PIT_SOURCE_CASES))
@torch.no_grad()
def test_converted_pit_matches_vit_pytorch(case, cifar_images, cifar_pixels):
    from conversion.vit_pytorch_backbones import convert_backbone

    kwargs = PIT_SOURCE_CASES[case]
    source = build_source("pit", kwargs)
    result, _, _ = convert_backbone("pit", source.state_dict(), kwargs, images=cifar_images[0], atol=ATOL)
    assert result.parity[0]["max_abs_logit_diff"] <= ATOL
    model = result.model
    assert isinstance(model, VixPitForImageClassification)
    depths = list(kwargs["depth"])
    assert model.config.depths == depths and model.config.num_stages == len(depths)
    if case == "one-head-full-width":  # the missing output projection became an identity o_proj
        o_proj = model.pit.stages[0].layers[0].attention.o_proj
        assert torch.equal(o_proj.weight, torch.eye(16)) and torch.equal(o_proj.bias, torch.zeros(16))
        assert any("identity" in note for note in result.notes)

    stages = [module for module in source.layers if hasattr(module, "layers")]  # the Transformer of each stage
    hooks = {"embedded": (source.layers[0], "input"), "cls_normed": (source.mlp_head[0], "output"),
             **{f"stage{s}": (stage, "output") for s, stage in enumerate(stages)}}
    captured, handles = capture(hooks)
    expected = source(cifar_pixels)
    for handle in handles:
        handle.remove()
    assert expected.abs().max() > 0.5
    outputs = model(cifar_pixels, output_hidden_states=True)
    assert_max_diff(outputs.logits, expected, f"PiT {case} logits")
    # cls token + position: vit-pytorch adds the cls position after concatenating, ViX folded it into the token.
    assert_hidden_close(outputs.hidden_states[0], captured["embedded"], f"PiT {case} embeddings")
    ends = torch.tensor(depths).cumsum(0).tolist()  # hidden_states[k] is the output of the k-th layer overall
    for s, end in enumerate(ends):
        assert_hidden_close(outputs.hidden_states[end], captured[f"stage{s}"], f"PiT {case} end of stage {s}")
    assert_hidden_close(model.pit(cifar_pixels).pooler_output, captured["cls_normed"], f"PiT {case} normed cls token")


@needs_vit_pytorch
@pytest.mark.parametrize("attention", ["nystrom", "performer", "linformer"])
@torch.no_grad()
def test_softmax_cct_carries_every_projection_into_another_mixer(attention, cifar_images):
    from conversion.vit_pytorch_backbones import convert_backbone

    kwargs = {**CCT_COMMON, **CCT_SOURCE_CASES["learnable-conv3x2"]}
    state = build_source("cct", kwargs).state_dict()
    softmax, _, _ = convert_backbone("cct", state, kwargs, images=cifar_images[0][:4], atol=ATOL)
    carried, pixels, logits = convert_backbone("cct", state, kwargs, attention_type=attention,
                                               images=cifar_images[0][:4], atol=ATOL)
    model = carried.model
    assert model.config.attention_type == attention
    mixers = [implementation_of(layer.attention) for layer in model.cct.layers]
    assert mixers and all(type(mixer) is IMPLEMENTATIONS[attention] for mixer in mixers)
    softmax_state, carried_state = softmax.model.state_dict(), model.state_dict()
    projections = [key for key in softmax_state if key.split(".")[-2] in ("q_proj", "k_proj", "v_proj", "o_proj")]
    assert len(projections) == 2 * 5  # 2 layers x (q, k, v weights + o weight and bias)
    for key, tensor in softmax_state.items():  # every softmax tensor, the projections included, carried over
        assert torch.equal(carried_state[key], tensor), key
    new = sorted(set(carried_state) - set(softmax_state))
    print(f"{attention}: new tensors {new}")
    # The drift from the source is measured and reported, not hidden.
    drift = carried.parity[-1]
    assert drift["attention_type"] == attention and drift["expected_exact"] is False
    assert torch.isfinite(logits).all() and drift["max_abs_logit_diff"] == pytest.approx(
        (logits - softmax.model(pixels).logits).abs().max().item(), abs=2 * ATOL)
