"""Conversion helpers shared by the three converters (conversion/common.py), and the written folders loading
with trust_remote_code in a fresh interpreter where `modeling_vix` and `conversion` cannot be imported.

Per-source parity tests: test_conversion_vision_xformer.py, test_conversion_vit_pytorch.py,
test_conversion_transformers.py. All source weights are random; inputs are real CIFAR-10 images.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from conversion import common
from conversion.common import (
    ConversionError,
    Rule,
    apply_rules,
    clean_state_dict,
    load_state_dict_file,
    load_strict,
    parse_config_overrides,
    patch_linear_to_conv,
    patch_vector_to_unfold_order,
    rename,
    run_cli,
    split,
)
from model_cards.card import card_tags


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Small tensors: one intra-op thread is faster here, above all when other processes hold the CPUs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@torch.no_grad()
def randomize(module: nn.Module, std: float = 0.3, seed: int = 0) -> nn.Module:
    """Weights far from the near-uniform-attention init (LayerNorm gains around 1, Linear std ~1.5/sqrt(fan_in),
    Linformer projections of unit scale), so that a wrong conversion shows in the logits."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in module.named_parameters():
        if param.numel() == 0:
            continue
        noise = torch.randn(param.shape, generator=generator)
        if param.ndim == 1 and name.endswith("weight"):
            param.copy_(1 + 0.2 * noise)
        elif name.endswith("bias"):
            param.copy_(0.1 * noise)
        elif name.split(".")[-1] in ("proj_k", "proj_v"):
            param.copy_(noise / param.shape[-1] ** 0.5)
        elif param.ndim >= 2 and "embedding" not in name and "token" not in name:
            param.copy_(noise * min(std, 1.5 / param.shape[-1] ** 0.5))
        else:
            param.copy_(std * noise)
    return module


def report(result, what: str) -> dict:
    """Print the parity line (shown with -s / in the CI log) and return the first parity entry."""
    for entry in result.parity:
        print(f"{what}: vs {entry['reference']} [{entry['attention_type']}] max abs logit diff "
              f"{entry['max_abs_logit_diff']:.2e} (logit scale {entry['reference_logit_scale']:.2f}, "
              f"top-1 agreement {entry['top1_agreement']:.0%})")
    return result.parity[0]


def assert_cli_refuses(main, argv, output_dir: Path, capsys, match: str) -> str:
    """The converter's own error: exit status 2, one line on stderr matching `match`, no output folder."""
    capsys.readouterr()
    assert run_cli(lambda: main([*map(str, argv), "--output_dir", str(output_dir)])) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert re.search(match, lines[0]), lines[0]
    assert not output_dir.exists() and not list(output_dir.parent.glob(f".{output_dir.name}.*"))
    return lines[0]


def truncated_copy(path: Path, target: Path) -> Path:
    data = path.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    return target


class WritesAFileWhenUnpickled:
    """Unpickling this runs code (it opens `marker` for writing): proof of whether a loader unpickles."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def assert_nothing_written(path: Path) -> None:
    assert not path.exists() or not any(path.iterdir()), f"{path} was written despite the error"
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.")]
    assert not leftovers, f"staging folders left behind: {leftovers}"


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def test_patch_layout_permutation_matches_einops_linear():
    """The authors' Linear over (p1 p2 c) patches == ViX's Conv2d weight (C, c, p1, p2) after the permutation,
    and the pre-projection LayerNorm's affine vector follows the same permutation."""
    from einops import rearrange

    channels, patch, hidden = 3, 4, 5
    image = torch.randn(2, channels, 8, 8)
    linear = nn.Linear(channels * patch * patch, hidden)
    gain = torch.randn(channels * patch * patch)
    patches = rearrange(image, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch, p2=patch)
    expected = linear(patches * gain)
    conv_weight = patch_linear_to_conv(linear.weight, channels, patch)
    unfolded = nn.functional.unfold(image, patch, stride=patch).transpose(1, 2)  # (c p1 p2) order
    actual = nn.functional.linear(unfolded * patch_vector_to_unfold_order(gain, channels, patch),
                                  conv_weight.flatten(1), linear.bias)
    torch.testing.assert_close(actual, expected)


def test_rules_and_strict_load_report_every_problem():
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(2, 2))
    source = {"qkv.weight": torch.randn(6, 4), "extra": torch.zeros(1), "second.weight": torch.randn(3, 2)}
    rules = [Rule(r"qkv\.weight", split("0.weight", "0.bias_unused", "ignored")),
             Rule(r"second\.(weight)", rename(r"1.\1"))]
    with pytest.raises(ConversionError, match="does not split"):
        apply_rules({"qkv.weight": torch.randn(5, 4)}, rules)
    converted, unused = apply_rules(source, rules)
    assert unused == ["extra"]
    with pytest.raises(ConversionError) as error:
        load_strict(model, converted, unused, "test source")
    message = str(error.value)
    for expected in ("nothing was written", "extra", "0.bias", "1.bias", "0.bias_unused", "shape mismatches",
                     "1.weight (3, 2) vs ViX (2, 2)"):
        assert expected in message, f"{expected!r} not in:\n{message}"
    with pytest.raises(ConversionError, match="map to ViX key"):
        apply_rules({"a": torch.zeros(1), "b": torch.zeros(1)}, [Rule(r"a|b", rename("same"))])


def test_safe_loading(tmp_path):
    model = nn.Linear(3, 2)
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, tmp_path / "wrapped.pt")
    loaded = load_state_dict_file(tmp_path / "wrapped.pt")
    assert set(loaded) == {"weight", "bias"} and torch.equal(loaded["weight"], model.weight)
    torch.save(model, tmp_path / "pickled_module.pt")  # unpickling would run code: refused
    with pytest.raises(ConversionError, match="weights_only"):
        load_state_dict_file(tmp_path / "pickled_module.pt")
    from safetensors.torch import save_file

    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    assert set(load_state_dict_file(tmp_path / "weights.safetensors")) == {"weight", "bias"}
    with pytest.raises(ConversionError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pt")
    with pytest.raises(ConversionError, match="not a tensor"):
        clean_state_dict({"weight": torch.zeros(1), "step": 3})


def test_unreadable_safetensors_files_are_refused_and_never_unpickled(tmp_path):
    """A truncated .safetensors and a torch pickle named .safetensors: a ConversionError naming the file (not a
    SafetensorError traceback), and the pickle is never unpickled (its code would create `marker`)."""
    from safetensors.torch import save_file

    save_file(nn.Linear(30, 20).state_dict(), tmp_path / "weights.safetensors")
    truncated = truncated_copy(tmp_path / "weights.safetensors", tmp_path / "truncated.safetensors")
    with pytest.raises(ConversionError, match=r"truncated\.safetensors is not a readable safetensors file"):
        load_state_dict_file(truncated)
    marker = tmp_path / "unpickled"
    torch.save({"weight": WritesAFileWhenUnpickled(marker)}, tmp_path / "pickle.safetensors")
    with pytest.raises(ConversionError, match=r"pickle\.safetensors is not a readable safetensors file"):
        load_state_dict_file(tmp_path / "pickle.safetensors")
    assert not marker.exists()


def test_a_missing_source_tensor_is_a_conversion_error_naming_it():
    state = clean_state_dict({"cls_token": torch.zeros(1, 1, 4)}, what="vit-pytorch ViT (vit.pt)")
    with pytest.raises(ConversionError, match=r"vit-pytorch ViT \(vit\.pt\) has no 'pos_embedding'"):
        state["pos_embedding"]
    assert "pos_embedding" not in state and state.get("pos_embedding") is None


# ---------------------------------------------------------------------------------------------------------
# Images for the parity check, with or without the offline CIFAR-10 copy
# ---------------------------------------------------------------------------------------------------------


def test_real_images_without_the_cifar10_copy(tmp_path, monkeypatch):
    """A clean clone without ../shared: the test fixture and the converters' default parity images are real
    images (scikit-learn's digits, 32x32 RGB), not a skip and not noise."""
    from conftest import real_test_images

    images, labels = real_test_images(tmp_path / "no-cifar10")
    assert len(images) == len(labels) == 16 and labels[:10] == list(range(10))
    assert all(image.size == (32, 32) and image.mode == "RGB" for image in images)
    low, high = images[0].getextrema()[0]
    assert len({image.tobytes() for image in images}) == 16 and low == 0 and high > 200  # distinct ink on paper

    monkeypatch.setattr(common, "DEFAULT_CIFAR10", tmp_path / "no-cifar10" / "test.parquet")
    loaded, description = common.load_images(None, limit=4)
    assert len(loaded) == 4 and "digits" in description
    from modeling_vix import VixImageProcessor

    pixels, inputs = common.parity_pixels(VixImageProcessor(), None, 3, (32, 32))
    assert pixels.shape == (8, 3, 32, 32) and inputs.startswith("8 real images")


# ---------------------------------------------------------------------------------------------------------
# One CLI style: HfArgumentParser over dataclasses, underscore flags, training's --config_overrides
# ---------------------------------------------------------------------------------------------------------

CONVERTER_MODULES = (
    "conversion.from_vision_xformer", "conversion.from_vit_pytorch", "conversion.from_transformers_vit",
    "conversion.from_transformers",
)


@pytest.mark.parametrize("module_name", CONVERTER_MODULES)
def test_converter_clis_share_the_training_style(module_name, capsys):
    import importlib

    from transformers import HfArgumentParser

    module = importlib.import_module(module_name)
    parser = module.cli_parser()
    assert isinstance(parser, HfArgumentParser)
    flags = [action.option_strings[0] for action in parser._actions if action.option_strings[0] != "-h"]
    assert flags and all(re.fullmatch(r"--[a-z0-9_]+", flag) for flag in flags), flags
    assert "--vix_option" not in flags and "--output_dir" in flags
    required = [value for action in parser._actions if action.required for value in (action.option_strings[0], "x")]
    with pytest.raises(SystemExit) as exit_info:  # an unknown flag is a usage error, not a ValueError traceback
        module.main([*required, "--bogus_flag", "1"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --bogus_flag 1" in capsys.readouterr().err


def test_config_overrides_read_like_update_from_string():
    from modeling_vix import VixConfig

    text = "nystrom_num_landmarks=49,qkv_bias=true,layer_norm_eps=1e-5,nystrom_padding=zeros_front"
    expected = VixConfig()
    expected.update_from_string(text)
    overrides = parse_config_overrides(text)
    assert overrides == {"nystrom_num_landmarks": 49, "qkv_bias": True, "layer_norm_eps": 1e-5,
                         "nystrom_padding": "zeros_front"}
    assert all(getattr(expected, key) == value for key, value in overrides.items())
    assert parse_config_overrides(None) == {} == parse_config_overrides("")
    with pytest.raises(ConversionError, match="isn't in the original config"):
        parse_config_overrides("not_a_field=1")
    with pytest.raises(ConversionError, match="true or false"):
        parse_config_overrides("qkv_bias=maybe")


def test_readme_conversion_commands_parse():
    """Every `python -m conversion.*` command of docs/conversion.md parses with that converter's own parser."""
    import importlib
    import shlex

    readme = (Path(__file__).resolve().parents[1] / "docs" / "conversion.md").read_text()
    commands = re.findall(r"^python -m (conversion\.\w+) (.*)$", readme, flags=re.M)
    assert len(commands) >= 3
    for module_name, rest in commands:
        parser = importlib.import_module(module_name).cli_parser()
        common.parse_arguments(parser, shlex.split(rest.split("#")[0]))


# ---------------------------------------------------------------------------------------------------------
# Written folders load with trust_remote_code where neither modeling_vix nor conversion is importable
# ---------------------------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["modeling_vix"] = None
    sys.modules["conversion"] = None
    import torch
    from huggingface_hub import ModelCard
    from transformers import AutoImageProcessor, AutoModelForImageClassification
    spec = json.loads(sys.argv[1])
    pixels = torch.load(spec["pixels"], weights_only=True)
    out = {}
    for name, folder in spec["folders"].items():
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        card = ModelCard.load(folder + "/README.md")
        with torch.no_grad():
            out[name] = {"logits": model(pixels[name]).logits.tolist(), "class": type(model).__module__,
                         "processor": type(processor).__name__, "tags": card.data.tags}
    json.dump(out, open(spec["out"], "w"))
    """
)


@pytest.mark.skipif(not all(__import__("importlib").util.find_spec(name) for name in ("vision_xformer", "vit_pytorch")),
                    reason="vision-xformer and vit-pytorch are needed (CI installs them with --no-deps)")
def test_written_folders_load_with_remote_code_in_a_fresh_process(tmp_path, cifar_images):
    import vision_xformer
    from transformers import ViTConfig, ViTForImageClassification

    from conversion.from_transformers_vit import convert_transformers_vit
    from conversion.from_vision_xformer import convert_vision_xformer
    from conversion.from_vit_pytorch import convert_vit_pytorch, load_vit_pytorch_vit

    images = cifar_images[0][:2]
    vin = randomize(vision_xformer.ViN(image_size=32, patch_size=4, num_classes=10, dim=32, depth=1, heads=2,
                                       mlp_dim=64, dim_head=16, num_landmarks=16)).eval()
    vit = randomize(load_vit_pytorch_vit().ViT(image_size=32, patch_size=4, num_classes=10, dim=32, depth=1, heads=2,
                                               mlp_dim=64, dim_head=16)).eval()
    hf = randomize(ViTForImageClassification(ViTConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                                       num_attention_heads=2, intermediate_size=64, num_labels=10)))
    hf.save_pretrained(tmp_path / "hf-vit")
    results = {
        "vision_xformer": convert_vision_xformer(vin, tmp_path / "vin", images=images),
        "vit_pytorch": convert_vit_pytorch(vit, tmp_path / "vit", images=images),
        "transformers": convert_transformers_vit(str(tmp_path / "hf-vit"), tmp_path / "nystrom", images=images,
                                                 attention_type="nystrom",
                                                 config_overrides={"nystrom_num_landmarks": 16}),
    }
    pixels = {name: result.processor(images, return_tensors="pt")["pixel_values"] for name, result in results.items()}
    torch.save(pixels, tmp_path / "pixels.pt")
    spec = {"pixels": str(tmp_path / "pixels.pt"), "out": str(tmp_path / "out.json"),
            "folders": {name: str(result.output_dir) for name, result in results.items()}}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH="")
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    out = json.loads(Path(spec["out"]).read_text())
    for name, result in results.items():
        assert out[name]["class"].startswith("transformers_modules")  # the folder's own copy of the code
        assert out[name]["processor"] == "VixImageProcessor"
        assert out[name]["tags"] == card_tags(result.config.to_dict(), converted=True)  # the one tag vocabulary
        with torch.no_grad():
            expected = result.model(pixels[name]).logits
        torch.testing.assert_close(torch.tensor(out[name]["logits"]), expected, atol=1e-6, rtol=0)
