"""The models a benchmark can build, by name: every ViX mixer and its peers, at one shared size.

Every builder takes a `BenchSize` and returns an `nn.Module` mapping pixels (B, 3, H, W) to logits, so the
measuring code treats ViX and its peers alike. Peers: transformers' ViT (sdpa, eager) and the paper
authors' `vision-xformer` models (built on lucidrains' reference attentions).
"""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class BenchSize:
    """The paper's CIFAR-10 model by default: patch 1, hidden 128, depth 4, 4 heads of 32, MLP 256."""

    image_size: int = 32
    patch_size: int = 1
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    num_labels: int = 10

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


class LogitsOnly(nn.Module):
    """Wraps a transformers model so that calling it returns the logits tensor."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model(pixel_values).logits


def build_vix(size: BenchSize, attention_type: str, **overrides) -> nn.Module:
    from modeling_vix import VixConfig, VixForImageClassification

    config = VixConfig(
        image_size=size.image_size, patch_size=size.patch_size, hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads,
        intermediate_size=size.intermediate_size, num_labels=size.num_labels, attention_type=attention_type,
        linformer_k=64, **overrides,
    )
    return LogitsOnly(VixForImageClassification(config))


def build_hf_vit(size: BenchSize, attn_implementation: str) -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=size.image_size, patch_size=size.patch_size, hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads,
        intermediate_size=size.intermediate_size, num_labels=size.num_labels,
    )
    model = ViTForImageClassification(config)
    model.set_attn_implementation(attn_implementation)
    return LogitsOnly(model)


def build_authors(size: BenchSize, name: str) -> nn.Module:
    """The authors' `vision-xformer` 0.2.0 models with the paper's settings (dim_head 32, 64 landmarks, k 64)."""
    import vision_xformer

    common = dict(
        image_size=size.image_size, patch_size=size.patch_size, num_classes=size.num_labels, dim=size.hidden_size,
        depth=size.num_layers, mlp_dim=size.intermediate_size,
    )
    heads = dict(heads=size.num_heads, dim_head=size.hidden_size // size.num_heads)
    if name == "ViN":
        return vision_xformer.ViN(**common, **heads, num_landmarks=64)
    if name == "ViL":
        return vision_xformer.ViL(**common, **heads, k=64)
    if name == "ViP":
        # performer-pytorch (inside the authors' ViP) calls torch.qr, which torch removed; give it the
        # current equivalent so that the reference Performer can be measured at all.
        if not hasattr(torch, "qr"):
            torch.qr = lambda matrix, some=True: torch.linalg.qr(matrix, mode="reduced" if some else "complete")
        return vision_xformer.ViP(**common, **heads)
    if name == "FNet":
        return vision_xformer.FNet(**common)
    raise ValueError(f"unknown vision-xformer model {name!r}")


VIX_MIXERS = ("softmax", "performer", "linformer", "nystrom", "fnet", "mixer")

BUILDERS = {
    **{f"vix-{mixer}": (lambda size, mixer=mixer: build_vix(size, mixer)) for mixer in VIX_MIXERS},
    # ViX's Linformer with the authors' ViL settings (one key/value head, V = K): the like-for-like peer.
    "vix-linformer-paper": lambda size: build_vix(
        size, "linformer", linformer_one_kv_head=True, linformer_values_from_keys=True
    ),
    "hf-vit-sdpa": lambda size: build_hf_vit(size, "sdpa"),
    "hf-vit-eager": lambda size: build_hf_vit(size, "eager"),
    **{f"authors-{name}": (lambda size, name=name: build_authors(size, name)) for name in ("ViN", "ViL", "ViP", "FNet")},
}

# Which peer each ViX mixer is compared against (ratios in the report).
PEERS = {
    "vix-softmax": ["hf-vit-sdpa", "hf-vit-eager"],
    "vix-nystrom": ["authors-ViN", "hf-vit-sdpa", "hf-vit-eager"],
    "vix-linformer": ["authors-ViL", "hf-vit-sdpa"],
    "vix-linformer-paper": ["authors-ViL"],
    "vix-performer": ["authors-ViP", "hf-vit-sdpa"],
    "vix-fnet": ["authors-FNet", "hf-vit-sdpa"],
    "vix-mixer": ["hf-vit-sdpa"],
}


def build(name: str, size: BenchSize) -> nn.Module:
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(BUILDERS)}")
    return BUILDERS[name](size)
