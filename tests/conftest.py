"""Shared fixtures: tiny ViX configs and a few real CIFAR-10 images."""

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from modeling_vix import MIXER_CAPABILITIES, VixConfig
from modeling_vix.kernels_vix import ATTENTION_KERNELS
from modeling_vix.mixers_vix import TOKEN_MIXERS


# Every registered mixer, read from the registry (a new mixer joins every matrix without editing the tests).
ATTENTION_TYPES = tuple(MIXER_CAPABILITIES)
EMBEDDING_TYPES = ("linear", "conv")
POSITION_TYPES = ("learned", "rope_1d", "rope_2d", "none")
# attention_type -> the class that implements it: an attention kernel, or a token mixer without attention.
IMPLEMENTATIONS = {**ATTENTION_KERNELS, **TOKEN_MIXERS}
# The modeling files every backbone's saved folder carries for trust_remote_code (imported by each modeling file),
# beside its own configuration_vix_<name>.py and modeling_vix_<name>.py (the ViT's: configuration_vix.py,
# modeling_vix.py).
SHARED_MODELING_FILES = ("configuration_vix.py", "kernels_vix.py", "nystrom_vix.py", "favor_vix.py", "attention_vix.py",
                         "mixers_vix.py", "layers_vix.py",
                         "pretrained_vix.py", "embeddings_vix.py", "image_processing_vix.py")
CIFAR10_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def implementation_of(attention_module):
    """The kernel behind a layer's attention module, or the module itself for FNet / MLP-Mixer."""
    return getattr(attention_module, "kernel", attention_module)


def tiny_config(**overrides) -> VixConfig:
    """Tier-1 size: 32x32 images, patch 4 (64 patches + cls), hidden 32, 2 layers, 4 heads of 8."""
    settings = dict(
        image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, num_labels=10, nystrom_num_landmarks=16, linformer_k=16,
        conv_stem_channels=[8, 16], nystrom_residual_conv_kernel=5,
    )
    settings.update(overrides)
    return VixConfig(**settings)


def allowed_combinations():
    """Every (attention, embedding, position) that VixConfig accepts: RoPE needs queries and keys, which the
    registry's capabilities say (`supports_rope`)."""
    combos = []
    for attention in ATTENTION_TYPES:
        for embedding in EMBEDDING_TYPES:
            for position in POSITION_TYPES:
                if position.startswith("rope") and not MIXER_CAPABILITIES[attention].supports_rope:
                    continue
                combos.append((attention, embedding, position))
    return combos


def real_test_images(cifar10_dir: Path = CIFAR10_DIR, count: int = 16):
    """`count` real 32x32 RGB images (PIL) with their labels, whatever the machine has; never skips.

    The first CIFAR-10 test images when the offline copy exists (../shared/data/cifar10). Otherwise, on a clean
    clone without ../shared, the first images of scikit-learn's bundled 8x8 digits (installed with the test
    extras, no download), upscaled to 32x32 RGB: the parity tests need real images, not noise, and the project
    commits no data fetched from elsewhere, so CIFAR-10 images cannot live in the repository.
    """
    path = Path(cifar10_dir) / "plain_text" / "test-00000-of-00001.parquet"
    if not path.exists():
        from conversion.common import digits_images

        return digits_images(count)
    import pyarrow.parquet as pq

    table = pq.read_table(path).slice(0, count).to_pylist()
    images = [Image.open(io.BytesIO(row["img"]["bytes"])).convert("RGB") for row in table]
    labels = [row["label"] for row in table]
    return images, labels


@pytest.fixture(scope="session")
def cifar_images():
    """16 real test images with labels: CIFAR-10's when the offline copy exists, else scikit-learn's digits
    (`real_test_images` says why); never skips."""
    return real_test_images(CIFAR10_DIR)


@pytest.fixture(scope="session")
def cifar_pixels(cifar_images):
    """The same 16 images as normalized pixel_values (16, 3, 32, 32)."""
    from modeling_vix import VixImageProcessor

    return VixImageProcessor()(cifar_images[0], return_tensors="pt")["pixel_values"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# --------------------------------------------------------------------------------------------------------------
# Helpers for the backbone, convention and integration tests
# --------------------------------------------------------------------------------------------------------------


def tiny_cct_config(**overrides):
    """A tiny CCT: the default 3-layer tokenizer (strides 2, 1, 1) on 32x32 -> 16x16 = 256 tokens, hidden 32,
    2 layers, 4 heads of 8."""
    from modeling_vix import VixCctConfig

    settings = dict(
        image_size=32, hidden_size=32, intermediate_size=64, tokenizer_hidden_channels=8, num_hidden_layers=2,
        num_attention_heads=4, nystrom_num_landmarks=8, linformer_k=8, nystrom_residual_conv_kernel=5, num_labels=10,
    )
    settings.update(overrides)
    return VixCctConfig(**settings)


def tiny_pit_config(**overrides):
    """A tiny PiT: patch 4 stride 2 on 32x32 -> 15x15 tokens + cls, then pooled to 8x8 + cls; widths 16 and 32."""
    from modeling_vix import VixPitConfig

    settings = dict(
        image_size=32, hidden_sizes=[16, 32], depths=[1, 1], num_attention_heads=[2, 4], nystrom_num_landmarks=8,
        linformer_k=8, nystrom_residual_conv_kernel=5, num_labels=10,
    )
    settings.update(overrides)
    return VixPitConfig(**settings)


def tiny_levit_config(**overrides):
    """A tiny LeViT: patch 4 (2 stem convs) on 32x32 -> 8x8 tokens, shrunk to 4x4 and 2x2; widths 16, 24, 32, one
    block per stage, key dim 8."""
    from modeling_vix import VixLevitConfig

    settings = dict(
        image_size=32, patch_size=4, hidden_sizes=[16, 24, 32], num_attention_heads=[2, 3, 4], depths=[1, 1, 1],
        key_dim=[8, 8, 8], nystrom_num_landmarks=8, linformer_k=8, nystrom_residual_conv_kernel=5, num_labels=10,
    )
    settings.update(overrides)
    return VixLevitConfig(**settings)


def tiny_cvt_config(**overrides):
    """A tiny CvT: conv embeddings (3x3, stride 2) on 32x32 -> 16x16, 8x8 and 4x4 + cls tokens; widths 16, 32, 48,
    depths 1, 1, 2; keys and values at stride 1 in the first stage (Nystrom's residual conv exists there), then 2."""
    from modeling_vix import VixCvtConfig

    settings = dict(
        image_size=32, hidden_sizes=[16, 32, 48], depths=[1, 1, 2], num_attention_heads=[1, 2, 3],
        patch_sizes=[3, 3, 3], patch_stride=[2, 2, 2], patch_padding=[1, 1, 1], mlp_ratio=[2.0, 2.0, 2.0],
        stride_kv=[1, 2, 2], drop_path_rate=[0.0, 0.0, 0.1], nystrom_num_landmarks=8, linformer_k=8,
        nystrom_residual_conv_kernel=5, num_labels=10,
    )
    settings.update(overrides)
    return VixCvtConfig(**settings)


def tiny_backbones() -> dict:
    """backbone -> (tiny config builder, classification model class), for tests that run every backbone."""
    from modeling_vix import (
        VixCctForImageClassification,
        VixCvtForImageClassification,
        VixForImageClassification,
        VixLevitForImageClassification,
        VixPitForImageClassification,
    )

    return {
        "vit": (tiny_config, VixForImageClassification),
        "cct": (tiny_cct_config, VixCctForImageClassification),
        "pit": (tiny_pit_config, VixPitForImageClassification),
        "cvt": (tiny_cvt_config, VixCvtForImageClassification),
        "levit": (tiny_levit_config, VixLevitForImageClassification),
    }


def perturbed_model(backbone: str, attention: str = "softmax", scale: float = 0.2):
    """A tiny model of `backbone` with `attention`, in eval mode, its weights moved away from the init (whose
    zero-initialised norms, LeViT's, would hide the attention) so that every kernel and adapter shows in the logits."""
    make_config, model_class = tiny_backbones()[backbone]
    overrides = {"attention_bias": False} if (backbone, attention) == ("levit", "performer") else {}
    torch.manual_seed(0)
    model = model_class(make_config(attention_type=attention, **overrides)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn_like(parameter))
    return model


class logged_warnings:
    """`with logged_warnings() as messages:` collects the messages logged at WARNING or above by transformers' and
    ViX's loggers inside the block. `warning_once`'s memory is cleared on entry, so a warning already given earlier
    in the session (in another test) is given again here."""

    def __enter__(self) -> list[str]:
        import logging

        logging.Logger.warning_once.cache_clear()
        self.messages = []
        messages = self.messages

        class Collect(logging.Handler):
            def emit(self, record):
                messages.append(record.getMessage())

        self.handler = Collect(level=logging.WARNING)
        self.loggers = [logging.getLogger("transformers"), logging.getLogger("modeling_vix")]
        for logger in self.loggers:
            logger.addHandler(self.handler)
        return self.messages

    def __exit__(self, *exc_info):
        for logger in self.loggers:
            logger.removeHandler(self.handler)
        return False


HIDE_PACKAGE = 'import sys\nsys.modules["modeling_vix"] = None  # hide the (editable-installed) package\n'


def run_without_package(script: str, args, work: Path, timeout: int = 300):
    """Run `script` (with `args`) in a fresh interpreter where `import modeling_vix` fails, as on a machine that
    only has the saved folders: offline, its own HF_HOME under `work` (so remote code is cached there, not shared),
    no PYTHONPATH, `work` as the current folder. Fails the test with the child's output if it exits non-zero;
    returns the finished `subprocess.CompletedProcess`."""
    import os
    import subprocess
    import sys

    env = {key: value for key, value in os.environ.items() if not key.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(Path(work) / "hf_home"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH="")
    proc = subprocess.run(
        [sys.executable, "-c", HIDE_PACKAGE + script, *map(str, args)],
        cwd=work, env=env, capture_output=True, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"child failed:\nSTDOUT:\n{proc.stdout[-4000:]}\nSTDERR:\n{proc.stderr[-8000:]}"
    return proc
