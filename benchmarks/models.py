"""The models a benchmark can build, by name: every ViX mixer and its peers, at one shared size.

Every builder takes a `BenchSize` and returns an `nn.Module` mapping pixels (B, 3, H, W) to logits, so the
measuring code treats ViX and its peers alike. Peers: transformers' ViT (sdpa, eager), the paper
authors' `vision-xformer` models (built on lucidrains' reference attentions), vit-pytorch's CCT and PiT
for those backbones (`cct-*`, `pit-*`, at a size both libraries can build), and transformers' own CvT and LeViT
for `cvt-*` and `levit-*`.
"""

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from modeling_vix import MIXER_CAPABILITIES


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
    """Wraps a transformers model so that calling it returns the logits tensor; `num_tokens` (the largest token
    count a mixer sees) when the model's config states it."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.num_tokens = getattr(model.config, "num_tokens", None)

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
        with legacy_torch_qr():  # the authors' ViP draws its random features at construction
            return vision_xformer.ViP(**common, **heads)
    if name == "FNet":
        return vision_xformer.FNet(**common)
    raise ValueError(f"unknown vision-xformer model {name!r}")


@contextmanager
def legacy_torch_qr():
    """performer-pytorch (inside the authors' ViP) calls `torch.qr`, which torch removed: provide the current
    equivalent for the duration of the block only, so that the reference Performer can be built at all."""
    if hasattr(torch, "qr"):
        yield
        return
    torch.qr = lambda matrix, some=True: torch.linalg.qr(matrix, mode="reduced" if some else "complete")
    try:
        yield
    finally:
        del torch.qr


VIX_MIXERS = tuple(MIXER_CAPABILITIES)  # the registry's names, read from the one declaration


# Backbones at a size both ViX and vit-pytorch build: CCT with CCT-7/3x1's tokenizer (one 3x3 conv, stride 1,
# 2x max pool: 256 tokens at 32x32) and the paper's CCN width (128, 4 layers, 4 heads, MLP 512); PiT with
# overlapping 4x4 patches (stride 2: 225 tokens + cls at 32x32), three stages of 64/128/256 wide, 32-wide heads.
CCT_KWARGS = dict(embedding_dim=128, n_conv_layers=1, kernel_size=3, stride=1, padding=1, pooling_kernel_size=3,
                  pooling_stride=2, pooling_padding=1, num_layers=4, num_heads=4, mlp_ratio=4,
                  positional_embedding="learnable")
PIT_KWARGS = dict(patch_size=4, dim=64, depth=(2, 2, 2), heads=(2, 4, 8), mlp_dim=256, dim_head=32)


def build_vit_pytorch_backbone(size: BenchSize, architecture: str) -> nn.Module:
    from conversion.vit_pytorch_backbones import load_vit_pytorch_module

    module = load_vit_pytorch_module(architecture)
    if architecture == "cct":
        model = module.CCT(img_size=size.image_size, num_classes=size.num_labels, **CCT_KWARGS)
        model.num_tokens = (size.image_size // 2) ** 2
        return model
    model = module.PiT(image_size=size.image_size, num_classes=size.num_labels, **PIT_KWARGS)
    model.num_tokens = ((size.image_size - 4) // 2 + 1) ** 2 + 1
    return model


def build_vix_backbone(size: BenchSize, architecture: str, attention_type: str) -> nn.Module:
    """ViX's CCT / PiT with exactly the peer's architecture (the converter's reading of the same kwargs)."""
    from conversion.vit_pytorch_backbones import cct_config, pit_config
    from modeling_vix import BACKBONES

    peer = build_vit_pytorch_backbone(BenchSize(image_size=size.image_size), architecture)
    if architecture == "cct":
        config = cct_config(peer, (size.image_size, size.image_size))
    else:
        config = pit_config(peer, {"image_size": size.image_size})
    settings = {**config.to_dict(), "attention_type": attention_type, "nystrom_num_landmarks": 64, "linformer_k": 64}
    for key in ("model_type", "transformers_version"):
        settings.pop(key, None)
    config = type(config)(**settings)
    return LogitsOnly(BACKBONES[config.model_type][2](config))

# CvT and LeViT as transformers builds them (the peers), and ViX's at exactly their architecture (the converters'
# reading of the same config). CvT: CvT-13's stage layout, narrower (64/128/192 wide, 1/2/3 layers: transformers'
# CvT indexes its stochastic-depth rates by stage, so stage s needs more than s layers). LeViT: LeViT-128S's design
# at 64/128/192 wide, 2 layers a stage. Both take images of any size; the sweep grows the token count.
HF_CVT_KWARGS = dict(embed_dim=[64, 128, 192], depth=[1, 2, 3], num_heads=[1, 2, 3], mlp_ratio=[2.0, 2.0, 2.0],
                     drop_path_rate=[0.0, 0.0, 0.0])
HF_LEVIT_KWARGS = dict(hidden_sizes=[64, 128, 192], num_attention_heads=[4, 4, 6], depths=[2, 2, 2],
                       key_dim=[16, 16, 16], mlp_ratio=[2, 2, 2], attention_ratio=[2, 2, 2])
# Landmarks and projected length for the token sweep (as the paper's 64).
SWEEP_MIXER_SETTINGS = {"nystrom_num_landmarks": 64, "linformer_k": 64}


def build_transformers_backbone(size: BenchSize, architecture: str) -> nn.Module:
    """transformers' own CvT / LeViT classifier (softmax attention), with `num_tokens` = its first stage's."""
    if architecture == "cvt":
        from transformers import CvtConfig, CvtForImageClassification

        wrapped = LogitsOnly(CvtForImageClassification(CvtConfig(num_labels=size.num_labels, **HF_CVT_KWARGS)))
        wrapped.num_tokens = (size.image_size // 4) ** 2
        return wrapped
    from transformers import LevitConfig, LevitForImageClassification

    wrapped = LogitsOnly(LevitForImageClassification(LevitConfig(image_size=size.image_size,
                                                                 num_labels=size.num_labels, **HF_LEVIT_KWARGS)))
    wrapped.num_tokens = (size.image_size // 16) ** 2
    return wrapped


def build_vix_transformers_backbone(size: BenchSize, architecture: str, attention_type: str) -> nn.Module:
    """ViX's CvT / LeViT with the peer's architecture and `attention_type` (Performer: LeViT without its
    attention bias, which FAVOR+ cannot add)."""
    from modeling_vix import BACKBONES

    peer = build_transformers_backbone(BenchSize(image_size=size.image_size), architecture)
    options = dict(SWEEP_MIXER_SETTINGS)
    if architecture == "cvt":
        from conversion.from_transformers_cvt import cvt_config_from_transformers

        config = cvt_config_from_transformers(peer.model.config, attention_type, (size.image_size,) * 2, options)
    else:
        from conversion.from_transformers_levit import levit_config_from_transformers

        config = levit_config_from_transformers(peer.model.config, attention_type, options)
    model = LogitsOnly(BACKBONES[config.model_type][2](config))
    model.num_tokens = peer.num_tokens
    return model


BUILDERS = {
    **{f"vix-{mixer}": (lambda size, mixer=mixer: build_vix(size, mixer)) for mixer in VIX_MIXERS},
    # ViX's Linformer with the authors' ViL settings (one key/value head, V = K): the like-for-like peer.
    "vix-linformer-paper": lambda size: build_vix(
        size, "linformer", linformer_one_kv_head=True, linformer_values_from_keys=True
    ),
    "hf-vit-sdpa": lambda size: build_hf_vit(size, "sdpa"),
    "hf-vit-eager": lambda size: build_hf_vit(size, "eager"),
    **{f"authors-{name}": (lambda size, name=name: build_authors(size, name))
       for name in ("ViN", "ViL", "ViP", "FNet")},
}

BACKBONE_BUILDERS = {
    **{f"{arch}-{mixer}": (lambda size, arch=arch, mixer=mixer: build_vix_backbone(size, arch, mixer))
       for arch in ("cct", "pit") for mixer in VIX_MIXERS},
    "vit-pytorch-cct": lambda size: build_vit_pytorch_backbone(size, "cct"),
    "vit-pytorch-pit": lambda size: build_vit_pytorch_backbone(size, "pit"),
    **{f"{arch}-{mixer}": (lambda size, arch=arch, mixer=mixer: build_vix_transformers_backbone(size, arch, mixer))
       for arch in ("cvt", "levit") for mixer in ("softmax", "nystrom", "performer", "linformer")},
    "transformers-cvt": lambda size: build_transformers_backbone(size, "cvt"),
    "transformers-levit": lambda size: build_transformers_backbone(size, "levit"),
}
# The peer each backbone's rows are compared against, in the same run.
BACKBONE_PEERS = {"cct": "vit-pytorch-cct", "pit": "vit-pytorch-pit", "cvt": "transformers-cvt",
                  "levit": "transformers-levit"}
BUILDERS.update(BACKBONE_BUILDERS)

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
