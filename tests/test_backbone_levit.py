"""LeViT (`vix_levit`): the backbone with every attention mixer, and its converter from transformers.

- parity with transformers' LevitForImageClassificationWithTeacher and LevitForImageClassification, converted from
  randomised instances (weights, BatchNorm statistics and attention-bias tables), on real images: logits of both
  heads, and every hidden state;
- every attention mixer (softmax, nystrom and linformer with the attention bias, performer without) trains one step
  with a finite gradient for every parameter, gives each sample the same output alone as in a batch, and compiles as
  one graph;
- a saved model reloads identically (the non-persistent bias index refilled), also through remote code in a fresh
  process without the package;
- the config's refusals; the converter carries every projection and bias table into nystrom / linformer unchanged
  (and drops the tables for performer, saying so);
- Nystrom with a landmark per token adds the bias exactly as softmax does.
"""

import json

import pytest
import torch
from torch import nn

import modeling_vix
from conftest import IMPLEMENTATIONS, SHARED_MODELING_FILES, run_without_package, tiny_levit_config
from conversion.common import ConversionError
from conversion.from_transformers_levit import convert_transformers_levit
from modeling_vix import VixLevitConfig, VixLevitForImageClassification, VixLevitModel
from modeling_vix.modeling_vix_levit import VixLevitAttentionBase


NUM_LABELS = 10
ATTENTION_MIXERS = ("softmax", "nystrom", "linformer", "performer")
PARITY_ATOL = 1e-5


def mixer_settings(attention: str) -> dict:
    """Performer cannot add LeViT's attention bias; every other attention mixer keeps it."""
    return {"attention_type": attention, "attention_bias": attention != "performer"}


def pixels(batch=2, seed=0, size=32):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0, gain: float = 1.0) -> nn.Module:
    """Every weight at a scale that keeps activations O(1) (logits of order one, peaked attention), BatchNorm
    statistics and affine parameters away from their identity init, and the attention-bias tables non-zero: so a
    parity check cannot pass on an all-but-trivial model."""
    generator = torch.Generator().manual_seed(seed)

    def normal(tensor, std, mean=0.0):
        tensor.copy_(torch.randn(tensor.shape, generator=generator) * std + mean)

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            normal(module.weight, gain * module.weight[0].numel() ** -0.5)
            if module.bias is not None:
                normal(module.bias, 0.2)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            normal(module.weight, 0.2, mean=1.0)
            normal(module.bias, 0.2)
            normal(module.running_mean, 0.3)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) * 1.5 + 0.5)
        if getattr(module, "attention_biases", None) is not None:
            normal(module.attention_biases, 1.0)
    return model


# --------------------------------------------------------------------------------------------------------------
# (a) Parity with transformers' LeViT
# --------------------------------------------------------------------------------------------------------------


def transformers_levit(with_teacher: bool, seed: int = 0):
    """A small randomised transformers LeViT: 96x96 -> 6x6 tokens (4 stem convs), shrunk to 3x3 and 2x2."""
    from transformers import LevitConfig, LevitForImageClassification, LevitForImageClassificationWithTeacher

    config = LevitConfig(image_size=96, patch_size=16, hidden_sizes=[16, 32, 48], num_attention_heads=[2, 2, 3],
                         depths=[1, 2, 1], key_dim=[8, 8, 8], mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2],
                         num_labels=5)
    torch.manual_seed(seed)
    model_class = LevitForImageClassificationWithTeacher if with_teacher else LevitForImageClassification
    return randomize(model_class(config), seed).eval()


def assert_max_diff(actual, expected, what, atol=PARITY_ATOL, relative=None):
    assert actual.shape == expected.shape, f"{what}: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    diff = (actual - expected).abs().max().item()
    bound = atol if relative is None else max(atol, relative * expected.abs().max().item())
    print(f"{what}: max abs diff {diff:.2e} (bound {bound:.1e})")
    assert diff <= bound, f"{what}: max abs diff {diff:.3e} > {bound:.1e}"


@pytest.mark.parametrize("with_teacher", [True, False], ids=["with-teacher", "plain"])
@torch.no_grad()
def test_converted_levit_matches_transformers(tmp_path, with_teacher, cifar_images):
    source = transformers_levit(with_teacher)
    if with_teacher:  # through a saved folder: the converter picks the WithTeacher class from `architectures`
        source.save_pretrained(tmp_path / "source")
        result = convert_transformers_levit(str(tmp_path / "source"), images=cifar_images[0][:8], atol=PARITY_ATOL)
    else:
        result = convert_transformers_levit(source, images=cifar_images[0][:8], atol=PARITY_ATOL)
    model, config = result.model, result.model.config
    assert isinstance(model, VixLevitForImageClassification) and config.use_distillation_head is with_teacher
    assert config.num_stem_convs == 4 and config.grid_size == (6, 6) and config.attention_bias
    heads = ["", " (cls head)", " (distillation head)"] if with_teacher else [""]
    assert [entry["reference"] for entry in result.parity] == [
        f"transformers {type(source).__name__}{head}" for head in heads]
    for entry in result.parity:
        assert entry["expected_exact"] and entry["max_abs_logit_diff"] <= PARITY_ATOL, entry

    # Independently of the converter's check: the same real images, every output.
    images = result.processor(cifar_images[0][:8], return_tensors="pt")["pixel_values"]
    assert images.shape == (8, 3, 96, 96)
    expected = source(images, output_hidden_states=True)
    actual = model(images, output_hidden_states=True)
    assert expected.logits.abs().max() > 0.5  # randomised weights: not a trivial model
    assert_max_diff(actual.logits, expected.logits, "logits")
    if with_teacher:
        assert_max_diff(actual.cls_logits, expected.cls_logits, "cls head")
        assert_max_diff(actual.distillation_logits, expected.distillation_logits, "distillation head")
    else:
        assert actual.cls_logits is None and actual.distillation_logits is None
    assert len(actual.hidden_states) == len(expected.hidden_states) == 4  # embeddings, then each stage
    for index, (mine, theirs) in enumerate(zip(actual.hidden_states, expected.hidden_states, strict=True)):
        assert_max_diff(mine, theirs, f"hidden state {index}", relative=2e-6)
    base = model.levit(images)
    assert_max_diff(base.pooler_output, expected.hidden_states[-1].mean(1), "mean-pooled features", relative=2e-6)


# --------------------------------------------------------------------------------------------------------------
# (b) Every attention mixer on the tiny config (32x32, patch 4)
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ATTENTION_MIXERS)
def test_training_step_gives_every_parameter_a_finite_gradient(attention):
    config = tiny_levit_config(**mixer_settings(attention), use_distillation_head=True, drop_path_rate=0.1,
                               hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = VixLevitForImageClassification(config).train()
    kernels = [module.kernel for module in model.modules() if isinstance(module, VixLevitAttentionBase)]
    assert len(kernels) == 3 + 2  # blocks, shrinks
    assert all(type(kernel) is IMPLEMENTATIONS[attention] for kernel in kernels)
    assert config.stage_num_tokens == [64, 16, 4] and config.shrink_num_tokens == [(16, 64), (4, 16)]
    parameters = dict(model.named_parameters())
    assert any("attention_biases" in name for name in parameters) is (attention != "performer")
    outputs = model(pixels(4), labels=torch.arange(4) % NUM_LABELS, output_hidden_states=True)
    assert outputs.logits.shape == (4, NUM_LABELS) and outputs.cls_logits.shape == (4, NUM_LABELS)
    assert outputs.loss.ndim == 0 and torch.isfinite(outputs.loss)
    assert [tuple(h.shape) for h in outputs.hidden_states] == [(4, 64, 16), (4, 16, 24), (4, 4, 32), (4, 4, 32)]
    outputs.loss.backward()
    missing = [name for name, p in parameters.items() if p.grad is None]
    assert not missing, f"parameters without gradient: {missing}"
    bad = [name for name, p in parameters.items() if not torch.isfinite(p.grad).all()]
    assert not bad, f"parameters with non-finite gradient: {bad}"


@pytest.mark.parametrize("attention", ATTENTION_MIXERS)
@torch.no_grad()
def test_eager_attention_maps_and_batching_equivalence(attention):
    model = randomize(VixLevitForImageClassification(tiny_levit_config(**mixer_settings(attention)))).eval()
    batch = pixels(4, seed=3) * torch.tensor([0.25, 1.0, 3.0, 8.0])[:, None, None, None]
    # In float64, so that only a statistic shared across the batch could show (fp32 rounding reaches 6e-4 on the
    # scale-8 sample's logits of ~30); eval-mode BatchNorm and the per-sample mixers share none.
    model.double()
    batched = model(batch.double()).logits
    for index in range(4):
        alone = model(batch[index : index + 1].double()).logits[0]
        torch.testing.assert_close(alone, batched[index], rtol=0, atol=1e-9)
    model.float()
    batched = model(batch).logits
    model.set_attn_implementation("eager")
    eager = model(batch, output_attentions=True)
    # Three blocks (heads 2, 3, 4 on 64, 16, 4 tokens) and two shrink attentions (16 <- 64, 4 <- 16 tokens); over
    # Linformer's linformer_k = 8 projected keys.
    keys = (lambda n: 8) if attention == "linformer" else (lambda n: n)
    assert [tuple(m.shape) for m in eager.attentions] == [
        (4, 2, 64, keys(64)), (4, 2, 16, keys(64)), (4, 3, 16, keys(16)), (4, 3, 4, keys(16)), (4, 4, 4, keys(4))]
    # The two paths contract in different orders (Nystrom: the map, then V; fused: V first) through an fp32
    # pseudo-inverse: they differ by up to 5e-5 of the logits' scale on some CPUs (an Intel Xeon with AMX).
    assert_max_diff(eager.logits, batched, f"{attention} eager vs fused", relative=1e-4)


@pytest.mark.parametrize("attention", ["softmax", "nystrom"])
def test_fullgraph_compile_matches_eager(attention):
    model = randomize(VixLevitForImageClassification(tiny_levit_config(**mixer_settings(attention)))).eval()
    assert type(model)._can_compile_fullgraph is True
    inputs, labels = pixels(2), torch.tensor([3, 7])
    with torch.no_grad():
        expected = model(inputs, labels=labels)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        actual = compiled(inputs, labels=labels)  # raises on any graph break
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# (c) Save / load, and remote code without the package
# --------------------------------------------------------------------------------------------------------------

REMOTE_SCRIPT = """
import json, sys
import torch
from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

folder, pixels_path, outputs_path = sys.argv[1:4]
try:
    import modeling_vix  # noqa: F401
    hidden = False
except ImportError:
    hidden = True
config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
pixels = torch.load(pixels_path, weights_only=True)
with torch.no_grad():
    torch.save({"logits": model(pixels).logits, "hidden": base(pixels).last_hidden_state}, outputs_path)
print(json.dumps({"hidden": hidden, **{kind: type(obj).__module__ + "." + type(obj).__qualname__
                                       for kind, obj in (("config", config), ("model", model), ("base", base))}}))
"""


@torch.no_grad()
def test_save_load_round_trip_and_remote_code_without_the_package(tmp_path, cifar_pixels):
    from transformers import AutoModelForImageClassification

    # Linformer (parameters sized by the token counts) with the bias tables and both heads.
    config = tiny_levit_config(attention_type="linformer", use_distillation_head=True)
    model = randomize(VixLevitForImageClassification(config)).eval()
    expected = model(cifar_pixels).logits
    expected_hidden = model.levit(cifar_pixels).last_hidden_state
    folder = tmp_path / "levit"
    model.save_pretrained(folder)
    saved = json.loads((folder / "config.json").read_text())
    assert saved["model_type"] == "vix_levit"
    assert saved["auto_map"]["AutoModelForImageClassification"] == (
        "modeling_vix_levit.VixLevitForImageClassification")
    package_dir = modeling_vix.__file__.rsplit("/", 1)[0]
    for filename in ("configuration_vix_levit.py", "modeling_vix_levit.py", *SHARED_MODELING_FILES):
        assert (folder / filename).read_bytes() == open(f"{package_dir}/{filename}", "rb").read(), filename

    torch.manual_seed(1234)  # a reload must not depend on the global RNG
    for loader in (VixLevitForImageClassification, AutoModelForImageClassification):
        reloaded = loader.from_pretrained(folder).eval()
        assert type(reloaded) is VixLevitForImageClassification
        torch.testing.assert_close(reloaded(cifar_pixels).logits, expected, rtol=0, atol=0)
        # The bias index is not saved (as in transformers): refilled, not left as meta-device garbage.
        for (name, buffer), (_, again) in zip(model.named_buffers(), reloaded.named_buffers(), strict=True):
            assert torch.equal(buffer, again), name
    assert isinstance(VixLevitModel.from_pretrained(folder), VixLevitModel)

    torch.save(cifar_pixels, tmp_path / "pixels.pt")
    proc = run_without_package(REMOTE_SCRIPT, [folder, tmp_path / "pixels.pt", tmp_path / "outputs.pt"], tmp_path)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report.pop("hidden"), "`import modeling_vix` worked in the child: remote code was not exercised"
    for kind, suffix in (("config", "configuration_vix_levit.VixLevitConfig"),
                         ("model", "modeling_vix_levit.VixLevitForImageClassification"),
                         ("base", "modeling_vix_levit.VixLevitModel")):
        assert report[kind].startswith("transformers_modules.") and report[kind].endswith(suffix), report
    outputs = torch.load(tmp_path / "outputs.pt", weights_only=True)
    assert torch.equal(outputs["logits"], expected) and torch.equal(outputs["hidden"], expected_hidden)


# --------------------------------------------------------------------------------------------------------------
# (d) Refusals
# --------------------------------------------------------------------------------------------------------------


CONFIG_ONLY_SCRIPT = """
import importlib, json, sys, types

package = types.ModuleType("vix_configs_only")
package.__path__ = [sys.argv[1]]
sys.modules["vix_configs_only"] = package
module = importlib.import_module("vix_configs_only.configuration_vix_levit")
try:
    module.VixLevitConfig(attention_type="performer")
    refusal = None
except ValueError as error:
    refusal = str(error)
config = module.VixLevitConfig(image_size=32, patch_size=4)
print(json.dumps({"loaded": sorted(name for name, m in sys.modules.items()
                                   if m is not None and name.startswith(("vix_configs_only", "modeling_vix"))),
                  "refusal": refusal, "tokens": config.stage_num_tokens}))
"""


def test_config_module_imports_no_modeling_code(tmp_path):
    """As the Hub's remote-code loader sees it (flat files in a synthetic package; see test_conventions)."""
    package_dir = modeling_vix.__file__.rsplit("/", 1)[0]
    proc = run_without_package(CONFIG_ONLY_SCRIPT, [package_dir], tmp_path, timeout=120)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["loaded"] == ["vix_configs_only", "vix_configs_only.configuration_vix",
                                "vix_configs_only.configuration_vix_levit"]
    assert "set attention_bias=False" in report["refusal"] and report["tokens"] == [64, 16, 4]


@pytest.mark.parametrize("attention", ["fnet", "mixer"])
def test_mixers_without_queries_and_keys_are_refused(attention):
    with pytest.raises(ValueError, match="LeViT needs an attention mixer"):
        tiny_levit_config(attention_type=attention, attention_bias=False)


def test_performer_with_the_attention_bias_is_refused():
    with pytest.raises(ValueError, match="set attention_bias=False"):
        tiny_levit_config(attention_type="performer")
    tiny_levit_config(attention_type="performer", attention_bias=False)


@pytest.mark.parametrize("patch_size", [1, 3, 6, 12])
def test_patch_size_must_be_a_power_of_two(patch_size):
    with pytest.raises(ValueError, match="patch_size must be a power of the stem's stride"):
        tiny_levit_config(patch_size=patch_size)
    assert tiny_levit_config(patch_size=2).num_stem_convs == 1
    assert VixLevitConfig().num_stem_convs == 4 and VixLevitConfig().stem_channels == [16, 32, 64, 128]


@pytest.mark.parametrize("overrides,message", [
    ({"qkv_bias": True}, "leave qkv_bias=False"),
    ({"depths": [1, 1]}, "one entry per stage"),
    ({"hidden_sizes": [4, 24, 32], "patch_size": 16}, r"hidden_sizes\[0\] \(4\) must be at least 8"),  # 4 convs
    ({"key_dim": [32, 8, 8]}, r"must be at least key_dim\[0\]"),
    ({"drop_path_rate": 1.0}, "drop_path_rate"),
    ({"nystrom_padding": "zeros_front"}, "reproduce the authors' ViT code only"),
], ids=["qkv_bias", "stage-lists", "stem-width", "shrink-heads", "drop_path", "compatibility"])
def test_impossible_settings_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny_levit_config(**overrides)


@torch.no_grad()
def test_other_image_sizes_are_refused_at_call_time():
    model = VixLevitForImageClassification(tiny_levit_config()).eval()
    with pytest.raises(ValueError, match=r"Input image size \(48\*48\) doesn't match model \(32\*32\)"):
        model(pixels(1, size=48))


def test_converter_refuses_mixers_without_queries_and_keys():
    with pytest.raises(ConversionError, match="has no queries, keys or values"):
        convert_transformers_levit(transformers_levit(with_teacher=False), attention_type="fnet")


# --------------------------------------------------------------------------------------------------------------
# (e) Into another mixer: every projection and bias table carries over
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attention", ["nystrom", "linformer", "performer"])
@torch.no_grad()
def test_converter_carries_every_projection_and_bias_table(attention, cifar_images):
    source = transformers_levit(with_teacher=True)
    images = cifar_images[0][:4]
    softmax = convert_transformers_levit(source, images=images)
    overrides = {"nystrom_num_landmarks": 4, "linformer_k": 8}
    carried = convert_transformers_levit(source, attention_type=attention, config_overrides=overrides, images=images)
    softmax_state, carried_state = softmax.model.state_dict(), carried.model.state_dict()
    biases = [key for key in softmax_state if key.endswith("attention_biases")]
    projections = [key for key in softmax_state if key.endswith(".linear.weight") and ".attention." in key]
    assert len(biases) == 4 + 2 and len(projections) == 2 * 4 + 3 * 2  # 4 blocks, 2 shrinks
    for key, tensor in softmax_state.items():
        if attention == "performer" and key in biases:
            assert key not in carried_state
        else:
            assert torch.equal(carried_state[key], tensor), key
    new = sorted(set(carried_state) - set(softmax_state))
    assert all(".kernel." in key for key in new), new
    if attention == "nystrom":  # the residual conv only where queries and keys are the same tokens: the 4 blocks
        assert len(new) == 4 and all(not carried_state[key].any() for key in new)
    assert carried.model.config.attention_bias is (attention != "performer")
    assert any("attention-bias tables (6) were dropped" in note for note in carried.notes) is (attention == "performer")
    drift = carried.parity[0]
    assert drift["attention_type"] == attention and drift["expected_exact"] is False
    print(f"{attention}: logit drift from softmax {drift['max_abs_logit_diff']:.3e}, new tensors {new}")


# --------------------------------------------------------------------------------------------------------------
# (f) Nystrom with a landmark per token = softmax, attention bias included
# --------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def test_nystrom_with_a_landmark_per_token_adds_the_bias_as_softmax_does():
    """With as many landmarks as tokens each landmark is one token, so Nystrom's three softmaxes (each with its
    landmarks' bias) reproduce softmax(QK^T + B) up to the pseudo-inverse iteration: this checks the
    bias-through-landmarks rule on every attention, the shrink attentions included."""
    softmax = randomize(VixLevitForImageClassification(tiny_levit_config())).eval().double()
    nystrom_config = tiny_levit_config(attention_type="nystrom", nystrom_num_landmarks=64,
                                       nystrom_pinv_iterations=20, nystrom_residual_conv_kernel=0)
    nystrom = VixLevitForImageClassification(nystrom_config).eval().double()
    nystrom.load_state_dict(softmax.state_dict(), strict=True)
    inputs = pixels(4).double()
    expected = softmax(inputs, output_hidden_states=True)
    actual = nystrom(inputs, output_hidden_states=True)
    assert expected.logits.abs().max() > 0.5
    # Nystrom forms its m x m kernel and pseudo-inverse in fp32 (whatever the model's dtype): ~5e-6 is that rounding,
    # while leaving the bias out of the landmarks moves the logits by ~5e-2 (below).
    for index, (mine, theirs) in enumerate(zip(actual.hidden_states, expected.hidden_states, strict=True)):
        assert_max_diff(mine, theirs, f"hidden state {index}", atol=2e-5)
    assert_max_diff(actual.logits, expected.logits, "logits", atol=2e-5)
    # Without the bias on the landmarks the same check fails: the bias matters at this scale.
    unbiased = VixLevitForImageClassification(tiny_levit_config(attention_bias=False)).eval().double()
    unbiased.load_state_dict({k: v for k, v in softmax.state_dict().items() if "attention_biases" not in k})
    assert (unbiased(inputs).logits - expected.logits).abs().max() > 1e-2
