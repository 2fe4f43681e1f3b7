"""Every source x every attention kernel, through the one pipeline (conversion/pipeline.py).

Sources: transformers ViT, DeiT (with teacher: both heads), CvT and LeViT (with teacher); vit-pytorch ViT, CCT and
PiT; all tiny, with random weights, converted from the model instance (the folder and file paths are tested per
source in the other test_conversion_* files). The authors' vision-xformer models convert into their own mixer only
(ViN, ViP, ViL, FNet: test_conversion_vision_xformer.py).

- softmax: the source's logits on real images, every head.
- performer, linformer, nystrom: strict load with the kernel's new tensors filled (Nystrom's residual conv at zero,
  Performer's features and Linformer's projections from their init, the redraw counter with
  performer_redraw_interval > 0), every tensor of the softmax conversion carried over unchanged, the same weights
  checked exactly in softmax first, and the drift from the source measured.
"""

import importlib.util

import pytest
import torch
from transformers import (
    CvtConfig,
    CvtForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    LevitConfig,
    LevitForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
)

from conversion.from_transformers_cvt import convert_transformers_cvt
from conversion.from_transformers_levit import convert_transformers_levit
from conversion.from_transformers_vit import convert_transformers_vit
from conversion.pipeline import ATTENTION_TYPES, attention_modules
from test_conversion_common import _one_thread, randomize  # noqa: F401


ATOL = 1e-4
HAS_VIT_PYTORCH = importlib.util.find_spec("vit_pytorch") is not None
VIT = dict(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
           intermediate_size=32, num_labels=3)
CCT = dict(img_size=32, embedding_dim=16, n_conv_layers=1, kernel_size=3, stride=2, padding=1, pooling_kernel_size=3,
           pooling_stride=2, pooling_padding=1, num_layers=1, num_heads=2, mlp_ratio=2, num_classes=3,
           positional_embedding="learnable")
PIT = dict(image_size=32, patch_size=8, num_classes=3, dim=16, depth=(1, 1), heads=(2, 4), dim_head=8, mlp_dim=32)
# The target mixers: every kernel, Performer also with redraws (its counter is a tensor the source does not have).
TARGETS = {
    "softmax": ("softmax", {}),
    "performer": ("performer", {}),
    "performer-redraw": ("performer", {"performer_redraw_interval": 3}),
    "linformer": ("linformer", {"linformer_k": 4}),
    "nystrom": ("nystrom", {"nystrom_num_landmarks": 4, "nystrom_residual_conv_kernel": 3}),
}
assert {attention for attention, _ in TARGETS.values()} == set(ATTENTION_TYPES)  # a new kernel joins the matrix


CVT = dict(embed_dim=[8, 16], num_heads=[1, 2], depth=[1, 2], patch_sizes=[7, 3], patch_stride=[4, 2],
           patch_padding=[2, 1], stride_kv=[1, 2], cls_token=[False, True], qkv_bias=[True, True], mlp_ratio=[2.0, 2.0],
           drop_rate=[0.0, 0.0], attention_drop_rate=[0.0, 0.0], drop_path_rate=[0.0, 0.0], padding_q=[1, 1],
           padding_kv=[1, 1], kernel_qkv=[3, 3], stride_q=[1, 1], qkv_projection_method=["dw_bn", "dw_bn"],
           num_labels=3)
LEVIT = dict(image_size=64, hidden_sizes=[16, 32, 48], num_attention_heads=[2, 2, 3], depths=[1, 1, 1],
             key_dim=[8, 8, 8], drop_path_rate=0, mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2], num_labels=3)


def vit_pytorch(name: str):
    from conversion.vit_pytorch_backbones import load_vit_pytorch_module

    return load_vit_pytorch_module(name)


def transformers_converter(convert, **fixed):
    def run(source, attention_type, overrides, images):
        return convert(source, attention_type=attention_type, config_overrides={**overrides, **fixed}, images=images,
                       atol=ATOL)

    return run


def vit_pytorch_vit_converter(source, attention_type, overrides, images):
    from conversion.from_vit_pytorch import convert_vit_pytorch

    return convert_vit_pytorch(source, attention_type=attention_type, config_overrides=overrides, images=images,
                               atol=ATOL)


def vit_pytorch_backbone_converter(architecture: str, kwargs: dict):
    def run(source, attention_type, overrides, images):
        from conversion.vit_pytorch_backbones import convert_backbone

        result, _, _ = convert_backbone(architecture, source.state_dict(), kwargs, attention_type=attention_type,
                                        config_overrides=overrides, images=images, atol=ATOL)
        return result

    return run


# name -> (build the source, convert(source, attention_type, overrides, images) -> ConversionResult, available here)
SOURCES = {
    "transformers-vit": (lambda: ViTForImageClassification(ViTConfig(**VIT)),
                         transformers_converter(convert_transformers_vit), True),
    "transformers-deit": (lambda: DeiTForImageClassificationWithTeacher(DeiTConfig(**VIT)),
                          transformers_converter(convert_transformers_vit), True),
    "transformers-cvt": (lambda: CvtForImageClassification(CvtConfig(**CVT)),
                         transformers_converter(convert_transformers_cvt, image_size=32), True),
    "transformers-levit": (lambda: LevitForImageClassificationWithTeacher(LevitConfig(**LEVIT)),
                           transformers_converter(convert_transformers_levit), True),
    "vit-pytorch-vit": (lambda: vit_pytorch("vit").ViT(image_size=32, patch_size=8, num_classes=3, dim=16, depth=1,
                                                       heads=2, dim_head=8, mlp_dim=32),
                        vit_pytorch_vit_converter, HAS_VIT_PYTORCH),
    "vit-pytorch-cct": (lambda: vit_pytorch("cct").CCT(**CCT), vit_pytorch_backbone_converter("cct", CCT),
                        HAS_VIT_PYTORCH),
    "vit-pytorch-pit": (lambda: vit_pytorch("pit").PiT(**PIT), vit_pytorch_backbone_converter("pit", PIT),
                        HAS_VIT_PYTORCH),
}


@pytest.fixture(scope="module")
def conversions(cifar_images):
    """conversions(source, target) -> the ConversionResult, each source built and each conversion made once."""
    sources, results = {}, {}
    images = cifar_images[0][:2]

    def get(source_name: str, target: str):
        build, convert, available = SOURCES[source_name]
        if not available:
            pytest.skip("vit-pytorch is not installed (pip install --no-deps vit-pytorch==1.26.11)")
        if source_name not in sources:
            torch.manual_seed(0)
            sources[source_name] = randomize(build(), std=0.2).eval()
        if (source_name, target) not in results:
            attention, overrides = TARGETS[target]
            results[source_name, target] = convert(sources[source_name], attention, overrides, images)
        return results[source_name, target]

    return get


def kernel_tensors(model) -> dict[str, torch.Tensor]:
    """Every tensor that an attention kernel owns, by its key in the model's state dict."""
    return {f"{prefix}kernel.{key}": tensor for prefix, module in attention_modules(model)
            for key, tensor in module.kernel.state_dict().items()}


@pytest.mark.parametrize("target", list(TARGETS))
@pytest.mark.parametrize("source", list(SOURCES))
@torch.no_grad()
def test_every_source_converts_into_every_attention_kernel(source, target, conversions):
    result = conversions(source, target)
    attention, overrides = TARGETS[target]
    config = result.model.config
    assert config.attention_type == attention
    assert all(getattr(config, key) == value for key, value in overrides.items())
    if attention == "softmax":  # the source itself: every head's logits
        assert result.parity and all(entry["expected_exact"] and entry["max_abs_logit_diff"] <= ATOL
                                     for entry in result.parity), result.parity
        assert result.parity[0]["reference_logit_scale"] > 0.1  # random weights, not a trivial model
        assert not kernel_tensors(result.model)
        return

    # The same weights were first checked in softmax, exactly; then the drift from the source was measured.
    checked = [note for note in result.notes if note.startswith("The converted weights were first checked")]
    assert len(checked) == 1 and float(checked[0].split("max abs logit diff ")[1].split()[0]) <= ATOL, checked
    assert all(entry["attention_type"] == attention and not entry["expected_exact"]
               and 0 < entry["max_abs_logit_diff"] < float("inf") for entry in result.parity), result.parity

    # Every tensor of the softmax conversion carried over unchanged; the only new ones are the kernel's own.
    softmax_state = conversions(source, "softmax").model.state_dict()
    state = result.model.state_dict()
    kernels = kernel_tensors(result.model)
    assert set(state) - set(softmax_state) == set(kernels)
    dropped = set(softmax_state) - set(state)
    if source == "transformers-levit" and attention == "performer":  # FAVOR+ cannot add LeViT's attention bias
        assert dropped and all(key.endswith("attention_biases") for key in dropped) and not config.attention_bias
    else:
        assert not dropped
    for key in set(softmax_state) & set(state):
        assert torch.equal(state[key], softmax_state[key]), key

    kinds = {key.rsplit("kernel.", 1)[1] for key in kernels}
    expected_kinds = {
        "performer": {"projection_matrix"} | ({"steps_since_redraw"} if overrides else set()),
        "linformer": {"seq_proj_k"},
        "nystrom": {"residual_conv.weight"},
    }[attention]
    if source == "transformers-cvt" and attention == "nystrom":
        assert len(kernels) == 1  # the residual conv exists only where keys are as many as queries (stage 0)
    assert kinds == expected_kinds, kinds
    for key, tensor in kernels.items():
        if key.endswith(("residual_conv.weight", "steps_since_redraw")):
            assert not tensor.any(), key  # the conv starts at zero: the Nystrom approximation of the source
        else:
            assert tensor.abs().sum() > 0 and torch.isfinite(tensor).all(), key  # the kernel's own init
