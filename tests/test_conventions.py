"""The transformers-v5 conventions ViX follows, each checked by what it promises (each test fails without it):

(a) config modules import no modeling code (a config, and its checks, work where no mixer is loaded);
(b) what each mixer can do is data (`MIXER_CAPABILITIES`), and each mixer class declares and lives up to it;
(c) `_can_compile_fullgraph`: every mixer on the ViT, CCT and PiT compiles as one graph, loss included (so no
    host sync on the labels), and matches the eager model;
(d) the Performer's redraw count is a saved buffer: a resumed run keeps the redraw schedule;
(e) RoPE tables come from a module on the model's device, equal to the closed form, and its non-persistent
    frequencies are refilled after from_pretrained's meta-device build;
(f) value checks on the shared mixer fields and the inputs name the field.
"""

import json
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub.errors import StrictDataclassFieldValidationError
from safetensors.torch import load_file

import modeling_vix
from conftest import (
    run_without_package,
    tiny_cct_config,
    tiny_config,
    tiny_cvt_config,
    tiny_levit_config,
    tiny_pit_config,
)
from modeling_vix import (
    BACKBONE_CONFIGS,
    BACKBONES,
    MIXER_CAPABILITIES,
    VixCctConfig,
    VixCctForImageClassification,
    VixConfig,
    VixForImageClassification,
    VixPitConfig,
    VixPitForImageClassification,
)
from modeling_vix.embeddings_vix import VixRotaryEmbedding
from modeling_vix.kernels_vix import ATTENTION_KERNELS, PerformerKernel
from modeling_vix.mixers_vix import TOKEN_MIXERS


PACKAGE_DIR = Path(modeling_vix.__file__).resolve().parent


def pixels(batch=2, height=32, width=32, seed=0):
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------------------------
# (a) Config modules import no modeling code
# --------------------------------------------------------------------------------------------------------------

# `import modeling_vix.configuration_vix` would run the package __init__, which imports every modeling file, so it
# cannot show what the config modules themselves import. Instead the child loads the three files from the package
# folder as submodules of a synthetic package whose __init__ is empty: exactly how the Hub's remote-code loader
# sees them (flat files in a `transformers_modules.<folder>` package), so `from .configuration_vix import ...`
# resolves and anything else a config file imports shows up in sys.modules. The real package is hidden, so an
# absolute `import modeling_vix...` in a config file fails loudly.
CONFIG_ONLY_SCRIPT = """
import importlib, json, sys, types

package = types.ModuleType("vix_configs_only")
package.__path__ = [sys.argv[1]]
sys.modules["vix_configs_only"] = package
configs = {name: importlib.import_module("vix_configs_only." + name) for name in json.loads(sys.argv[2])}
def package_modules():  # (the hidden `modeling_vix` sits in sys.modules as None)
    return sorted(name for name, module in sys.modules.items()
                  if module is not None and name.startswith(("vix_configs_only", "modeling_vix")))


report = {"loaded": package_modules()}

# The configs' checks work without any mixer: capabilities are data.
VixConfig = configs["configuration_vix"].VixConfig
VixCctConfig = configs["configuration_vix_cct"].VixCctConfig
VixPitConfig = configs["configuration_vix_pit"].VixPitConfig
for make in (lambda: VixConfig(attention_type="fnet", position_embedding_type="rope_1d"),
             lambda: VixCctConfig(attention_type="mixer", position_embedding_type="rope_2d")):
    try:
        make()
        report.setdefault("refusals", []).append(None)
    except ValueError as error:
        report.setdefault("refusals", []).append(str(error))
# Every config class of every config module builds with its defaults.
from transformers import PreTrainedConfig
report["built"] = sorted(
    value().model_type for module in configs.values() for value in vars(module).values()
    if isinstance(value, type) and issubclass(value, PreTrainedConfig) and value.__module__ == module.__name__
    and value.model_type
)
report["after_checks"] = package_modules()
print(json.dumps(report))
"""


def test_config_modules_import_no_modeling_code(tmp_path):
    config_modules = sorted(path.stem for path in PACKAGE_DIR.glob("configuration_vix*.py"))
    assert len(config_modules) == len(BACKBONE_CONFIGS)  # one per backbone, every one of them checked here
    proc = run_without_package(CONFIG_ONLY_SCRIPT, [PACKAGE_DIR, json.dumps(config_modules)], tmp_path, timeout=120)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    expected = ["vix_configs_only", *(f"vix_configs_only.{name}" for name in config_modules)]
    # Nothing else of the package: no kernels_vix, embeddings_vix, modeling_*, image processor, nor `modeling_vix`.
    assert report["loaded"] == expected
    assert report["after_checks"] == expected
    assert report["built"] == sorted(BACKBONE_CONFIGS)
    for refusal in report["refusals"]:
        assert refusal is not None and "RoPE" in refusal


# --------------------------------------------------------------------------------------------------------------
# (b) Capabilities are data, and the mixers live up to them
# --------------------------------------------------------------------------------------------------------------


def test_every_mixer_declares_its_registry_capabilities():
    implementations = {**ATTENTION_KERNELS, **TOKEN_MIXERS}
    assert sorted(implementations) == sorted(MIXER_CAPABILITIES)
    assert not set(ATTENTION_KERNELS) & set(TOKEN_MIXERS)  # one implementation per attention_type
    for name, implementation in implementations.items():
        assert implementation.capabilities == MIXER_CAPABILITIES[name], name
    # Kernels are exactly the mixers with queries and keys.
    assert sorted(ATTENTION_KERNELS) == sorted(n for n, can in MIXER_CAPABILITIES.items() if can.supports_rope)
    # A config reads the same entry without importing the mixers.
    for name in MIXER_CAPABILITIES:
        assert VixConfig(attention_type=name).mixer_capabilities is MIXER_CAPABILITIES[name]


@pytest.mark.parametrize("name", list(MIXER_CAPABILITIES))
def test_capabilities_describe_what_the_mixer_does(name):
    """Each flag checked against behaviour: maps with eager, RoPE accepted by every backbone config that has it,
    and a fixed sequence length refusing another input size."""
    can = MIXER_CAPABILITIES[name]
    model = VixForImageClassification(tiny_config(attention_type=name, position_embedding_type="none")).eval()
    model.set_attn_implementation("eager")
    with torch.no_grad():
        maps = model(pixels(), output_attentions=True).attentions
    assert bool(maps) == can.returns_attention_weights
    if can.returns_attention_weights:
        assert all(isinstance(weights, torch.Tensor) for weights in maps)

    for make in (lambda **kw: tiny_config(**kw), lambda **kw: tiny_cct_config(**kw)):
        for position in ("rope_1d", "rope_2d"):
            if can.supports_rope:
                make(attention_type=name, position_embedding_type=position)
            else:
                with pytest.raises(ValueError, match="RoPE"):
                    make(attention_type=name, position_embedding_type=position)

    with torch.no_grad():
        if can.fixed_sequence_length:
            with pytest.raises(ValueError, match="exactly 65 tokens"):
                model(pixels(height=48, width=48))
        else:
            assert model(pixels(height=48, width=48)).logits.shape == (2, 10)


# --------------------------------------------------------------------------------------------------------------
# (c) torch.compile(fullgraph=True)
# --------------------------------------------------------------------------------------------------------------

# Graph breaks (a host sync such as a label range check, a Python branch on a tensor value) are found by dynamo
# before any backend runs, so every case is traced with fullgraph=True and the "aot_eager" backend (dynamo +
# AOTAutograd, about 1 s a case here). Inductor's C++ code generation takes 5-20 s a case on 2 shared cores
# (measured, one layer: ViT softmax 3-21 s depending on the cache, nystrom 15 s; CCT 6-16 s; PiT 6-22 s; all 18
# cases about 3 minutes), so it runs on three cases that cover different kernels and backbones (38 s together with a
# cold inductor cache, 13 s warm; the 18 aot_eager cases about 30 s).
COMPILE_BUILDERS = {
    "vit": lambda attention: VixForImageClassification(tiny_config(attention_type=attention, num_hidden_layers=1)),
    "cct": lambda attention: VixCctForImageClassification(tiny_cct_config(attention_type=attention,
                                                                          num_hidden_layers=1)),
    "pit": lambda attention: VixPitForImageClassification(tiny_pit_config(attention_type=attention)),
}
COMPILE_CASES = [
    pytest.param(backbone, attention, "aot_eager", id=f"{backbone}-{attention}-aot_eager")
    for backbone in COMPILE_BUILDERS for attention in MIXER_CAPABILITIES
] + [
    pytest.param("vit", "softmax", "inductor", id="vit-softmax-inductor"),
    pytest.param("cct", "performer", "inductor", id="cct-performer-inductor"),
    pytest.param("pit", "fnet", "inductor", id="pit-fnet-inductor"),
]
# CvT: the attention mixers only (its config refuses fnet and mixer), traced with aot_eager.
COMPILE_BUILDERS["cvt"] = lambda attention: modeling_vix.VixCvtForImageClassification(
    tiny_cvt_config(attention_type=attention, depths=[1, 1, 1]))
COMPILE_CASES += [pytest.param("cvt", attention, "aot_eager", id=f"cvt-{attention}-aot_eager")
                  for attention in ("softmax", "performer", "linformer", "nystrom")]


@pytest.mark.parametrize("backbone,attention,backend", COMPILE_CASES)
def test_fullgraph_compile_matches_eager(backbone, attention, backend):
    torch.manual_seed(0)
    model = COMPILE_BUILDERS[backbone](attention).eval()
    assert type(model)._can_compile_fullgraph is True  # the claim under test
    inputs, labels = pixels(2), torch.tensor([3, 7])
    with torch.no_grad():
        expected = model(inputs, labels=labels)  # also settles config.problem_type (else a recompile)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    start = time.perf_counter()
    with torch.no_grad():
        actual = compiled(inputs, labels=labels)  # raises on any graph break
        without_labels = compiled(inputs)
    print(f"{backbone} {attention} {backend}: compile + 2 calls {time.perf_counter() - start:.1f} s")
    torch.testing.assert_close(actual.logits, expected.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(actual.loss, expected.loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(without_labels.logits, expected.logits, rtol=0, atol=1e-5)
    assert without_labels.loss is None


# --------------------------------------------------------------------------------------------------------------
# (d) Performer redraws resume after a reload
# --------------------------------------------------------------------------------------------------------------


def performer_state(model):
    mixers = [module for module in model.modules() if isinstance(module, PerformerKernel)]
    return ([mixer.projection_matrix.clone() for mixer in mixers],
            [int(mixer.steps_since_redraw) for mixer in mixers])


def test_performer_redraw_count_is_saved_and_resumed(tmp_path):
    model = VixForImageClassification(tiny_config(attention_type="performer", performer_redraw_interval=3)).train()
    inputs, labels = pixels(2), torch.tensor([1, 2])
    start, counts = performer_state(model)
    assert counts == [0, 0]
    for _ in range(2):
        model(inputs, labels=labels).loss.backward()
    after_two, counts = performer_state(model)
    assert counts == [2, 2]
    assert all(torch.equal(old, new) for old, new in zip(start, after_two, strict=True))  # interval 3: not yet

    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    assert [int(saved[f"vix.layers.{i}.attention.kernel.steps_since_redraw"]) for i in range(2)] == [2, 2]

    torch.manual_seed(1234)  # a reload must not draw a new matrix from the global RNG
    reloaded = VixForImageClassification.from_pretrained(tmp_path)
    projections, counts = performer_state(reloaded)
    assert counts == [2, 2], "the count since the last redraw was not restored"
    for saved_matrix, loaded in zip(after_two, projections, strict=True):
        assert torch.equal(saved_matrix, loaded), "the reloaded projection is not the saved one"

    # A control from the same folder with the count reset: one more training forward does not redraw...
    control = VixForImageClassification.from_pretrained(tmp_path).train()
    for module in control.modules():
        if isinstance(module, PerformerKernel):
            module.steps_since_redraw.zero_()
    control(inputs, labels=labels)
    assert all(torch.equal(old, new) for old, new in zip(after_two, performer_state(control)[0], strict=True))

    # ...while the resumed model, like the original, redraws at its third training forward.
    reloaded.train()
    reloaded(inputs, labels=labels)
    model(inputs, labels=labels)
    for model_after in (reloaded, model):
        redrawn, counts = performer_state(model_after)
        assert counts == [0, 0]
        assert all(not torch.equal(old, new) for old, new in zip(after_two, redrawn, strict=True))


# --------------------------------------------------------------------------------------------------------------
# (e) RoPE: a module on the model's device, the closed form, refilled after a meta-device load
# --------------------------------------------------------------------------------------------------------------


def closed_form_rope(kind, head_dim, num_prefix_tokens, base, height, width):
    """(cos, sin), each (N, head_dim), in float64, from the formulas. Channel pair (2i, 2i+1) shares one angle.

    rope_1d (RoFormer over the raster order, prefix tokens first): token p, pair i -> p * base^(-2i / D).
    rope_2d (axial): pairs 0 .. D/4-1 rotate with the patch row r, pairs D/4 .. D/2-1 with the column c, both at
    frequencies base^(-4j / D), j = 0 .. D/4-1; prefix tokens are not rotated (angle 0).
    """
    pairs = head_dim // 2
    angles = torch.zeros(num_prefix_tokens + height * width, pairs, dtype=torch.float64)
    if kind == "rope_1d":
        for p in range(angles.shape[0]):
            for i in range(pairs):
                angles[p, i] = p * base ** (-2 * i / head_dim)
    else:
        quarter = head_dim // 4
        for r in range(height):
            for c in range(width):
                token = num_prefix_tokens + r * width + c
                for j in range(quarter):
                    angles[token, j] = r * base ** (-4 * j / head_dim)
                    angles[token, quarter + j] = c * base ** (-4 * j / head_dim)
    angles = angles.repeat_interleave(2, dim=-1)
    return angles.cos(), angles.sin()


@pytest.mark.parametrize("kind", ["rope_1d", "rope_2d"])
@pytest.mark.parametrize("head_dim,num_prefix_tokens,base,grid", [
    (8, 1, 10000.0, (4, 4)), (16, 0, 10000.0, (3, 5)), (8, 2, 100.0, (5, 2)), (32, 1, 500.0, (8, 8)),
])
def test_rope_tables_equal_the_closed_form(kind, head_dim, num_prefix_tokens, base, grid):
    rope = VixRotaryEmbedding(kind, head_dim, num_prefix_tokens, base)
    cos, sin = rope(*grid)
    expected_cos, expected_sin = closed_form_rope(kind, head_dim, num_prefix_tokens, base, *grid)
    assert cos.dtype == sin.dtype == torch.float32
    # fp32 angles of up to ~70 rad are exact to a few 1e-6; a wrong frequency or position is off by O(1).
    torch.testing.assert_close(cos.double(), expected_cos, rtol=0, atol=1e-5)
    torch.testing.assert_close(sin.double(), expected_sin, rtol=0, atol=1e-5)
    # Computed on the device of the module's buffer (here the meta device), not built on the CPU and copied.
    meta_cos, meta_sin = rope.to("meta")(*grid)
    assert meta_cos.device.type == meta_sin.device.type == "meta"
    assert meta_cos.shape == cos.shape


@pytest.mark.parametrize("kind", ["rope_1d", "rope_2d"])
def test_model_passes_the_closed_form_tables_to_every_mixer(kind):
    model = VixForImageClassification(tiny_config(position_embedding_type=kind)).eval()
    received = []
    for layer in model.vix.layers:
        layer.attention.register_forward_pre_hook(
            lambda module, args, kwargs: received.append(kwargs["position_embeddings"]), with_kwargs=True
        )
    with torch.no_grad():
        model(pixels(1, 32, 64))  # another grid than the configured one: 8 x 16 patches + cls
    expected_cos, expected_sin = closed_form_rope(kind, 8, 1, 10000.0, 8, 16)
    assert len(received) == 2
    for cos, sin in received:
        torch.testing.assert_close(cos.double(), expected_cos, rtol=0, atol=1e-5)
        torch.testing.assert_close(sin.double(), expected_sin, rtol=0, atol=1e-5)


ROPE_MODELS = {
    "vit-rope_1d": lambda: VixForImageClassification(tiny_config(position_embedding_type="rope_1d", rope_theta=500.0)),
    "vit-rope_2d": lambda: VixForImageClassification(tiny_config(position_embedding_type="rope_2d")),
    "cct-rope_2d": lambda: VixCctForImageClassification(tiny_cct_config(position_embedding_type="rope_2d")),
}


@pytest.mark.parametrize("name", list(ROPE_MODELS))
def test_rope_frequencies_are_refilled_after_from_pretrained(tmp_path, name):
    """from_pretrained builds the model on the meta device; the non-persistent `inv_freq` is not in the checkpoint,
    so it must be recomputed (transformers' init), not left as uninitialised memory."""
    model = ROPE_MODELS[name]().eval()
    model.save_pretrained(tmp_path)
    assert not any(key.endswith("inv_freq") for key in load_file(tmp_path / "model.safetensors"))
    reloaded = type(model).from_pretrained(tmp_path).eval()
    config = model.config
    rotary = [module for module in reloaded.modules() if isinstance(module, VixRotaryEmbedding)]
    assert len(rotary) == 1
    (module,) = rotary
    fresh = VixRotaryEmbedding(module.kind, module.head_dim, module.num_prefix_tokens, config.rope_theta)
    assert module.inv_freq.dtype == torch.float32 and torch.isfinite(module.inv_freq).all()
    torch.testing.assert_close(module.inv_freq, fresh.inv_freq, rtol=0, atol=0)
    pairs = module.head_dim // 2 if module.kind == "rope_1d" else module.head_dim // 4
    closed = config.rope_theta ** (-torch.arange(pairs, dtype=torch.float64) / pairs)
    torch.testing.assert_close(module.inv_freq.double(), closed, rtol=1e-6, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(pixels()).logits, model(pixels()).logits, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------------------------
# (f) Value checks name the field
# --------------------------------------------------------------------------------------------------------------

CONFIG_CLASSES = {"vix": VixConfig, "vix_cct": VixCctConfig, "vix_pit": VixPitConfig,
                  "vix_levit": modeling_vix.VixLevitConfig, "vix_cvt": modeling_vix.VixCvtConfig}
BAD_VALUES = [
    ("rope_theta", 0), ("rope_theta", -1.0),
    ("layer_norm_eps", 0.0), ("layer_norm_eps", -1.0), ("layer_norm_eps", 0), ("layer_norm_eps", -1),
    ("initializer_range", -1.0), ("initializer_range", -1),
    ("image_size", 0),
    ("hidden_act", "bogus"),
]

@pytest.mark.parametrize("model_type", list(CONFIG_CLASSES))
@pytest.mark.parametrize("field,value", BAD_VALUES + [("num_labels", -1)], ids=lambda item: str(item))
def test_bad_value_is_refused_naming_the_field(model_type, field, value):
    config_class = CONFIG_CLASSES[model_type]
    config_class()  # the defaults are fine
    with pytest.raises((ValueError, StrictDataclassFieldValidationError)) as error:
        config_class(**{field: value})
    assert field in str(error.value), str(error.value)


@pytest.mark.parametrize("model_type", list(BACKBONES))
def test_empty_batch_is_refused_naming_pixel_values(model_type):
    configs = {"vix": tiny_config, "vix_cct": tiny_cct_config, "vix_pit": tiny_pit_config,
               "vix_levit": tiny_levit_config, "vix_cvt": tiny_cvt_config}
    model = BACKBONES[model_type][2](configs[model_type]()).eval()
    with pytest.raises(ValueError, match=r"pixel_values is an empty batch \(0 images\)"):
        model(torch.empty(0, 3, 32, 32))
