"""Checkpoint conversion into ViX: one module per source, shared helpers in `conversion.common`.

- `conversion.from_vision_xformer`: the paper authors' `vision-xformer` package (ViN, ViP, ViL, FNet).
- `conversion.from_vit_pytorch`: lucidrains' `vit-pytorch` ViT.
- `conversion.from_transformers_vit`: transformers ViT / DeiT checkpoints (a folder or a Hub id).

Each is a CLI (`python -m conversion.from_x --help`) and an importable function returning a
`ConversionResult`. Nothing is written unless every source key was used, every ViX key was filled and the
shapes agree.
"""

from .common import ConversionError, ConversionResult


__all__ = ["ConversionError", "ConversionResult"]
