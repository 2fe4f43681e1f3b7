"""`python -m conversion.from_transformers`: one command for every transformers architecture ViX takes, chosen by
the source's model_type (checked on saved random-weight models: the Hub-id path is the same from_pretrained)."""

import json

import pytest
import torch
from transformers import (
    CvtConfig,
    CvtForImageClassification,
    LevitConfig,
    LevitForImageClassificationWithTeacher,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from conversion.from_transformers import convert_transformers, main
from test_conversion_common import _one_thread, assert_cli_refuses, randomize  # noqa: F401


SOURCES = {
    "vit": lambda: ViTForImageClassification(ViTConfig(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3)),
    "cvt": lambda: CvtForImageClassification(CvtConfig(
        embed_dim=[8, 16], num_heads=[1, 2], depth=[1, 2], patch_sizes=[7, 3], patch_stride=[4, 2],
        patch_padding=[2, 1], stride_kv=[2, 2], cls_token=[False, True], qkv_bias=[True, True],
        mlp_ratio=[2.0, 2.0],
        drop_rate=[0.0, 0.0], attention_drop_rate=[0.0, 0.0], drop_path_rate=[0.0, 0.0], padding_q=[1, 1],
        padding_kv=[1, 1],
        kernel_qkv=[3, 3], stride_q=[1, 1], qkv_projection_method=["dw_bn", "dw_bn"], num_labels=3)),
    "levit": lambda: LevitForImageClassificationWithTeacher(LevitConfig(
        image_size=64, hidden_sizes=[16, 32, 48], num_attention_heads=[2, 2, 3], depths=[1, 1, 1], key_dim=[8, 8, 8],
        drop_path_rate=0, mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2], num_labels=3)),
}
TARGET_MODEL_TYPES = {"vit": "vix", "cvt": "vix_cvt", "levit": "vix_levit"}


@pytest.fixture(scope="module")
def source_folders(tmp_path_factory):
    folders = {}
    for name, build in SOURCES.items():
        torch.manual_seed(0)
        folders[name] = tmp_path_factory.mktemp("sources") / name
        randomize(build(), std=0.2).eval().save_pretrained(folders[name])
    return folders


@pytest.mark.parametrize("source", list(SOURCES))
def test_dispatches_on_model_type_and_converts_exactly(source, source_folders, cifar_images, tmp_path):
    result = convert_transformers(str(source_folders[source]), tmp_path / "out", images=cifar_images[0][:2])
    assert result.config.model_type == TARGET_MODEL_TYPES[source]
    parity = result.parity[0]
    assert parity["expected_exact"] and parity["max_abs_logit_diff"] <= 1e-5, parity
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert saved["model_type"] == TARGET_MODEL_TYPES[source] and saved["attention_type"] == "softmax"


@pytest.mark.parametrize("source", ["cvt", "levit"])
def test_nystrom_from_cli_with_backbone_specific_overrides(source, source_folders, tmp_path):
    overrides = "nystrom_num_landmarks=4,nystrom_pinv_iterations=3" + (",image_size=32" if source == "cvt" else "")
    result = main(["--model", str(source_folders[source]), "--attention_type", "nystrom", "--config_overrides",
                   overrides, "--output_dir", str(tmp_path / "out")])
    assert (result.config.attention_type, result.config.nystrom_num_landmarks) == ("nystrom", 4)
    assert result.config.model_type == TARGET_MODEL_TYPES[source]


def test_unsupported_architecture_is_one_line_and_writes_nothing(tmp_path, capsys):
    folder = tmp_path / "resnet"
    ResNetForImageClassification(ResNetConfig(hidden_sizes=[8, 16], depths=[1, 1], embedding_size=8)).save_pretrained(
        folder)
    assert_cli_refuses(main, ["--model", folder], tmp_path / "out", capsys,
                       r"model_type 'resnet'.*vit, deit, cvt, levit")


def test_vit_only_options_are_refused_for_other_backbones(source_folders, tmp_path, capsys):
    assert_cli_refuses(main, ["--model", source_folders["cvt"], "--image_size", "64"], tmp_path / "out", capsys,
                       r"--image_size apply to ViT / DeiT sources only")


def test_override_of_a_field_the_backbone_lacks_is_refused(source_folders, tmp_path, capsys):
    assert_cli_refuses(main, ["--model", source_folders["levit"], "--config_overrides", "conv_stem_channels=[4]"],
                       tmp_path / "out", capsys, r"conv_stem_channels")
