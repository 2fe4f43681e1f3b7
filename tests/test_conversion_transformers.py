"""transformers ViT / DeiT checkpoints (saved folders; the Hub-id path is the same from_pretrained call) -> ViX.

softmax: exact logits, at the paper's size too. Into every other kernel (from instances): test_conversion_matrix.py.
"""

import pytest
import torch
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

from conversion.common import ConversionError
from conversion.from_transformers_vit import convert_transformers_vit, main
from test_conversion_common import (  # noqa: F401
    _one_thread,
    assert_cli_refuses,
    assert_nothing_written,
    randomize,
    report,
    truncated_copy,
)


ATOL = 1e-4
TINY = dict(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            intermediate_size=64, num_labels=10)
PAPER = dict(image_size=32, patch_size=1, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
             intermediate_size=256, num_labels=10)


@pytest.fixture(scope="module")
def vit_folders(tmp_path_factory):
    folders = {}
    for size, sizes in (("tiny", TINY), ("paper", PAPER)):
        model = randomize(ViTForImageClassification(ViTConfig(**sizes)), std=0.3)
        folders[size] = tmp_path_factory.mktemp("vit") / size
        model.save_pretrained(folders[size])
    return folders


@pytest.mark.parametrize("size", ["tiny", "paper"])
@torch.no_grad()
def test_softmax_logits_match_vit(size, vit_folders, cifar_images, tmp_path):
    images = cifar_images[0][: 4 if size == "tiny" else 2]
    result = convert_transformers_vit(str(vit_folders[size]), tmp_path / "vix", images=images)
    parity = report(result, f"transformers ViT {size} -> softmax")
    assert parity["expected_exact"] and parity["max_abs_logit_diff"] <= ATOL and parity["reference_logit_scale"] > 0.5
    source = ViTForImageClassification.from_pretrained(vit_folders[size]).eval()
    pixels = result.processor(images, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(result.model(pixels).logits, source(pixels).logits, atol=ATOL, rtol=0)
    assert (result.config.qkv_bias, result.config.layer_norm_eps) == (True, 1e-12)
    assert (tmp_path / "vix" / "preprocessor_config.json").exists()


@torch.no_grad()
def test_position_embeddings_resampled_to_another_resolution(vit_folders, cifar_images):
    """48x48: the same logits as transformers' ViT with interpolate_pos_encoding=True."""
    result = convert_transformers_vit(str(vit_folders["tiny"]), image_size=48, images=cifar_images[0][:4])
    parity = report(result, "transformers ViT tiny 32 -> 48")
    assert result.config.image_size == [48, 48] and result.config.num_tokens == 145
    assert parity["max_abs_logit_diff"] <= ATOL


@pytest.mark.parametrize("model_class", [DeiTForImageClassification, DeiTForImageClassificationWithTeacher])
def test_deit_can_drop_the_distillation_token_and_reports_the_change(model_class, tmp_path, cifar_images):
    folder = tmp_path / "deit"
    randomize(model_class(DeiTConfig(**TINY))).save_pretrained(folder)
    result = convert_transformers_vit(str(folder), tmp_path / "out", drop_distillation_token=True,
                                      images=cifar_images[0][:4])
    parity = report(result, f"{model_class.__name__} (distillation token dropped)")
    assert not parity["expected_exact"]
    source = model_class.from_pretrained(folder)
    head = source.cls_classifier if model_class is DeiTForImageClassificationWithTeacher else source.classifier
    assert torch.equal(result.model.classifier.weight, head.weight)  # the cls head; the distillation head is dropped


@pytest.mark.parametrize("model_class", [DeiTForImageClassification, DeiTForImageClassificationWithTeacher])
def test_deit_logits_match_exactly(model_class, tmp_path, cifar_images):
    """The distillation token is kept (and the teacher's second head averaged in): exact DeiT logits."""
    randomize(model_class(DeiTConfig(**TINY))).save_pretrained(tmp_path / "deit")
    result = convert_transformers_vit(str(tmp_path / "deit"), tmp_path / "out", images=cifar_images[0][:4])
    assert result.parity[0]["expected_exact"] and result.parity[0]["max_abs_logit_diff"] <= ATOL
    assert result.config.use_distillation_token
    assert result.config.use_distillation_head == (model_class is DeiTForImageClassificationWithTeacher)


def test_cli(vit_folders, tmp_path, cifar_images, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--attention_type" in capsys.readouterr().out
    cifar_images[0][0].save(tmp_path / "image.png")
    result = main(["--model", str(vit_folders["tiny"]), "--attention_type", "nystrom", "--config_overrides",
                   "nystrom_num_landmarks=16,nystrom_pinv_iterations=4", "--output_dir", str(tmp_path / "out"),
                   "--images", str(tmp_path)])
    assert (result.config.nystrom_num_landmarks, result.config.nystrom_pinv_iterations) == (16, 4)
    drift = result.parity[0]
    assert drift["attention_type"] == "nystrom" and not drift["expected_exact"]
    card = (tmp_path / "out" / "README.md").read_text()  # the card states the mixer and the measured drift
    assert "nystrom" in card and f"{drift['max_abs_logit_diff']:.2e}" in card
    assert (tmp_path / "out" / "model.safetensors").exists()


@torch.no_grad()
def test_performer_with_redraws_from_the_cli(vit_folders, tmp_path, cifar_images):
    """The redraw counter is a Performer tensor no ViT has: filled (at zero), written, and reloaded as it was."""
    cifar_images[0][0].save(tmp_path / "image.png")
    result = main(["--model", str(vit_folders["tiny"]), "--attention_type", "performer", "--config_overrides",
                   "performer_redraw_interval=5", "--output_dir", str(tmp_path / "out"),
                   "--images", str(tmp_path / "image.png")])
    from transformers import AutoModelForImageClassification

    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "out")
    assert reloaded.config.performer_redraw_interval == 5
    for layer, converted in zip(reloaded.vix.layers, result.model.vix.layers, strict=True):
        assert layer.attention.kernel.steps_since_redraw.item() == 0
        assert torch.equal(layer.attention.kernel.projection_matrix, converted.attention.kernel.projection_matrix)


def test_errors_write_nothing(vit_folders, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConversionError, match="no queries, keys or values"):
        convert_transformers_vit(str(vit_folders["tiny"]), out, attention_type="fnet")
    with pytest.raises(ConversionError, match="cannot be set"):
        convert_transformers_vit(str(vit_folders["tiny"]), out, config_overrides="hidden_size=64")
    with pytest.raises(ConversionError, match="Invalid config_overrides"):
        convert_transformers_vit(str(vit_folders["tiny"]), out, attention_type="nystrom",
                                 config_overrides={"nystrom_residual_conv_kernel": 4})
    ViTModel(ViTConfig(**TINY)).save_pretrained(tmp_path / "backbone")  # no classifier
    with pytest.raises(ConversionError, match="does not load strictly"):
        convert_transformers_vit(str(tmp_path / "backbone"), out)
    from modeling_vix import VixConfig, VixForImageClassification

    VixForImageClassification(VixConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=1,
                                        num_attention_heads=4, intermediate_size=64)).save_pretrained(tmp_path / "vix")
    with pytest.raises(ConversionError, match="Unsupported source architecture"):
        convert_transformers_vit(str(tmp_path / "vix"), out)
    assert_nothing_written(out)


def test_broken_checkpoints_are_one_line_errors(vit_folders, tmp_path, capsys):
    """Errors raised inside from_pretrained (a truncated checkpoint, a tensor of the wrong shape) and bad
    --config_overrides are the converter's own error: exit 2, one line, nothing written."""
    import shutil

    from safetensors.torch import load_file, save_file

    truncated = tmp_path / "truncated"
    shutil.copytree(vit_folders["tiny"], truncated)
    truncated_copy(vit_folders["tiny"] / "model.safetensors", truncated / "model.safetensors")
    assert_cli_refuses(main, ["--model", truncated], tmp_path / "out", capsys, "truncated cannot be loaded")

    wrong_shape = tmp_path / "wrong-shape"
    shutil.copytree(vit_folders["tiny"], wrong_shape)
    tensors = load_file(wrong_shape / "model.safetensors")
    save_file({**tensors, "classifier.bias": torch.zeros(3)}, wrong_shape / "model.safetensors",
              metadata={"format": "pt"})
    assert_cli_refuses(main, ["--model", wrong_shape], tmp_path / "out", capsys,
                       r"wrong-shape does not load strictly.*mismatched_keys: .*classifier\.bias")

    assert_cli_refuses(main, ["--model", vit_folders["tiny"], "--config_overrides", "no_such_field=1"],
                       tmp_path / "out", capsys, "no_such_field")
