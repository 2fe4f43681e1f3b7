"""Checkpoint conversion into ViX: one module per source, one pipeline (`conversion.pipeline`) that they all run.

- `conversion.from_transformers`: any transformers classifier ViX takes, by its model_type (the three below).
- `conversion.from_transformers_vit`, `_cvt`, `_levit`: transformers ViT / DeiT, CvT and LeViT (a folder or Hub id).
- `conversion.from_vit_pytorch`: lucidrains' `vit-pytorch` ViT, CCT and PiT (`vit_pytorch_backbones`).
- `conversion.from_vision_xformer`: the paper authors' `vision-xformer` package (ViN, ViP, ViL, FNet).

Each is a CLI (`python -m conversion.from_x --help`) and an importable function returning a `ConversionResult`.
Each describes its source (config, rename table, how to run it) and `conversion.pipeline.convert` does the rest:
build, rename, fill the new mixer's tensors, strict load, parity on real images, write. Nothing is written unless
every source key was used, every ViX key was filled, the shapes agree and the logits match the source's.
"""

from .common import ConversionError, ConversionResult


__all__ = ["ConversionError", "ConversionResult"]
