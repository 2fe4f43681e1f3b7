"""vit-pytorch (lucidrains' ViT, the code base the paper built on) -> softmax ViX: logits on real CIFAR-10 images.

CI installs `pip install --no-deps vit-pytorch==1.26.11`; its package __init__ imports torchvision (dino, mae),
so `vit_pytorch/vit.py` is loaded by file path (conversion.from_vit_pytorch.load_vit_pytorch_vit).
"""

import importlib.util

import pytest
import torch

from conversion.common import ConversionError
from conversion.from_vit_pytorch import convert_vit_pytorch, load_vit_pytorch_vit, main
from test_conversion_common import (  # noqa: F401
    WritesAFileWhenUnpickled,
    _one_thread,
    assert_cli_refuses,
    assert_nothing_written,
    randomize,
    report,
    truncated_copy,
)


if importlib.util.find_spec("vit_pytorch") is None:
    pytest.skip("vit-pytorch is not installed (pip install --no-deps vit-pytorch==1.26.11)", allow_module_level=True)
ATOL = 1e-4
CASES = {
    "tiny-cls": dict(image_size=32, patch_size=4, dim=32, depth=2, heads=4, dim_head=8, mlp_dim=64),
    "tiny-mean": dict(image_size=32, patch_size=4, dim=32, depth=2, heads=4, dim_head=8, mlp_dim=64, pool="mean"),
    "tiny-one-head-no-out-proj": dict(image_size=32, patch_size=4, dim=32, depth=2, heads=1, dim_head=32, mlp_dim=64),
    # the paper's CIFAR-10 ViT: 32x32, patch 1 (1,025 tokens), dim 128, depth 4, 4 heads of 32, MLP 256
    "paper": dict(image_size=32, patch_size=1, dim=128, depth=4, heads=4, dim_head=32, mlp_dim=256),
}


def build(case):
    return randomize(load_vit_pytorch_vit().ViT(num_classes=10, **CASES[case])).eval()


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_converted_logits_match_the_source(case, cifar_images, tmp_path):
    images = cifar_images[0][: 2 if case == "paper" else 4]
    source = build(case)
    from_instance = convert_vit_pytorch(source, images=images)
    assert report(from_instance, f"vit-pytorch {case}, instance")["max_abs_logit_diff"] <= ATOL
    from safetensors.torch import save_file

    save_file(source.state_dict(), tmp_path / "vit.safetensors")
    result = convert_vit_pytorch(tmp_path / "vit.safetensors", tmp_path / "vix", images=images,
                                 num_attention_heads=CASES[case]["heads"])
    parity = report(result, f"vit-pytorch {case}, file")
    assert parity["max_abs_logit_diff"] <= ATOL
    pixels = result.processor(images, return_tensors="pt")["pixel_values"]
    expected = source(pixels)
    assert expected.abs().max() > 0.5
    torch.testing.assert_close(result.model(pixels).logits, expected, atol=ATOL, rtol=0)
    assert result.config.pooling == CASES[case].get("pool", "cls") and result.config.attention_type == "softmax"
    from transformers import AutoModelForImageClassification

    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "vix").eval()
    torch.testing.assert_close(reloaded(pixels).logits, expected, atol=ATOL, rtol=0)
    assert "vit-pytorch" in (tmp_path / "vix" / "README.md").read_text()


def test_cli(tmp_path, cifar_images, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--num_attention_heads" in capsys.readouterr().out
    torch.save(build("tiny-cls").state_dict(), tmp_path / "vit.pt")
    cifar_images[0][0].save(tmp_path / "image.png")
    result = main(["--checkpoint", str(tmp_path / "vit.pt"), "--num_attention_heads", "4",
                   "--output_dir", str(tmp_path / "out"), "--images", str(tmp_path / "image.png")])
    assert result.parity[0]["max_abs_logit_diff"] <= ATOL and (tmp_path / "out" / "config.json").exists()


def test_errors_write_nothing(tmp_path):
    out = tmp_path / "out"
    state = build("tiny-cls").state_dict()
    with pytest.raises(ConversionError, match="head count"):
        convert_vit_pytorch(state, out)
    with pytest.raises(ConversionError, match="transformer.layers.0.0.extra"):
        convert_vit_pytorch({**state, "transformer.layers.0.0.extra": torch.zeros(2)}, out, num_attention_heads=4)
    with pytest.raises(ConversionError, match="shape mismatches"):
        convert_vit_pytorch({**state, "mlp_head.bias": torch.zeros(3)}, out, num_attention_heads=4)
    with pytest.raises(ConversionError, match="averages the cls token"):
        convert_vit_pytorch(state, out, num_attention_heads=4, pool="mean")
    with pytest.raises(ConversionError, match="Unsupported source architecture"):
        convert_vit_pytorch(torch.nn.Linear(2, 2), out)
    with pytest.raises(ConversionError, match="Not a vit-pytorch"):
        convert_vit_pytorch({"weight": torch.zeros(2, 2)}, out, num_attention_heads=4)
    assert_nothing_written(out)


def test_broken_checkpoints_are_one_line_errors(tmp_path, capsys):
    """A truncated .safetensors, a pickle named .safetensors (never unpickled) and a state dict without
    `pos_embedding`: the converter's own error, exit 2, one line, nothing written."""
    from safetensors.torch import save_file

    state = build("tiny-cls").state_dict()
    save_file(state, tmp_path / "vit.safetensors")
    truncated = truncated_copy(tmp_path / "vit.safetensors", tmp_path / "truncated.safetensors")
    marker = tmp_path / "unpickled"
    torch.save({"pos_embedding": WritesAFileWhenUnpickled(marker)}, tmp_path / "pickle.safetensors")
    torch.save({k: v for k, v in state.items() if k != "pos_embedding"}, tmp_path / "no_positions.pt")
    cases = {truncated: "truncated.safetensors is not a readable safetensors file",
             tmp_path / "pickle.safetensors": "pickle.safetensors is not a readable safetensors file",
             tmp_path / "no_positions.pt": "no_positions.pt has no 'pos_embedding'"}
    for checkpoint, message in cases.items():
        assert_cli_refuses(main, ["--checkpoint", checkpoint, "--num_attention_heads", 4], tmp_path / "out", capsys,
                           message)
    assert not marker.exists()
