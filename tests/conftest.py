"""Shared fixtures: tiny ViX configs and a few real CIFAR-10 images."""

import io
from pathlib import Path

import pytest
import torch
from PIL import Image

from modeling_vix import VixConfig


ATTENTION_TYPES = ("softmax", "performer", "linformer", "nystrom", "fnet", "mixer")
EMBEDDING_TYPES = ("linear", "conv")
POSITION_TYPES = ("learned", "rope_1d", "rope_2d", "none")
CIFAR10_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


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
    """Every (attention, embedding, position) that VixConfig accepts: RoPE needs queries and keys."""
    combos = []
    for attention in ATTENTION_TYPES:
        for embedding in EMBEDDING_TYPES:
            for position in POSITION_TYPES:
                if position.startswith("rope") and attention in ("fnet", "mixer"):
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
