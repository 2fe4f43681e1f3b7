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


@pytest.fixture(scope="session")
def cifar_images():
    """16 real CIFAR-10 test images (PIL, 32x32 RGB) with their labels, from the offline copy in shared/."""
    import pyarrow.parquet as pq

    path = CIFAR10_DIR / "plain_text" / "test-00000-of-00001.parquet"
    if not path.exists():
        pytest.skip(f"CIFAR-10 copy not found at {path}")
    table = pq.read_table(path).slice(0, 16).to_pylist()
    images = [Image.open(io.BytesIO(row["img"]["bytes"])).convert("RGB") for row in table]
    labels = [row["label"] for row in table]
    return images, labels


@pytest.fixture(scope="session")
def cifar_pixels(cifar_images):
    """The same 16 images as normalized pixel_values (16, 3, 32, 32)."""
    from modeling_vix import VixImageProcessor

    return VixImageProcessor()(cifar_images[0], return_tensors="pt")["pixel_values"]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
