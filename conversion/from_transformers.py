"""Convert a transformers image classifier (a local folder or a Hub id) into ViX, with any attention mixer: one
command for every architecture ViX takes from transformers, chosen by the source's `model_type`.

    python -m conversion.from_transformers --model microsoft/cvt-13 --output_dir vix-cvt-13
    python -m conversion.from_transformers --model facebook/levit-128S --attention_type nystrom --output_dir levin-128S
    python -m conversion.from_transformers --model google/vit-base-patch16-224 --attention_type performer \
        --output_dir vip-base

| model_type | ViX backbone | converter |
|---|---|---|
| vit, deit | `vix` (ViT) | `conversion.from_transformers_vit` (also `--image_size`, `--drop_distillation_token`) |
| cvt | `vix_cvt` (CvT; CvN, CvP) | `conversion.from_transformers_cvt` |
| levit | `vix_levit` (LeViT; LeViN, LeViP) | `conversion.from_transformers_levit` |

With `--attention_type softmax` (the default) the written model is the source: its logits on real images are
checked against the source's before anything is written. With `nystrom`, `performer` or `linformer` every
projection carries over and only the new mixer's own parameters are initialised (`--seed`): a model ready to
fine-tune (`python -m training.train --model_name_or_path <output_dir> ...`), whose card names the source.

Nothing runs the source's code (`trust_remote_code` is never set) and weights load only from safetensors or with
`weights_only=True`.
"""

from __future__ import annotations

from pathlib import Path

from .common import (
    ConversionError,
    ConversionResult,
    make_parser,
    parse_arguments,
    parse_config_overrides,
    run_cli,
)
from .from_transformers_cvt import convert_transformers_cvt
from .from_transformers_levit import convert_transformers_levit
from .from_transformers_vit import TransformersVitArguments, convert_transformers_vit


# model_type of the source -> (converter, model_type of the ViX model it writes)
CONVERTERS = {
    "vit": (convert_transformers_vit, "vix"),
    "deit": (convert_transformers_vit, "vix"),
    "cvt": (convert_transformers_cvt, "vix_cvt"),
    "levit": (convert_transformers_levit, "vix_levit"),
}


def source_model_type(source, revision=None) -> str:
    """The `model_type` of a model instance, a local folder or a Hub id (read from its config.json only)."""
    if not isinstance(source, (str, Path)):
        return getattr(getattr(source, "config", None), "model_type", None)
    from transformers import AutoConfig

    from .transformers_sources import load_or_refuse

    return load_or_refuse(AutoConfig.from_pretrained, source, "image classifier", revision=revision).model_type


def convert_transformers(
    source,
    output_dir=None,
    *,
    attention_type: str = "softmax",
    config_overrides: dict | str | None = None,
    image_size=None,
    drop_distillation_token: bool = False,
    revision: str | None = None,
    images=None,
    seed: int = 0,
    atol: float | None = 1e-4,
    overwrite: bool = False,
) -> ConversionResult:
    """A transformers ViT / DeiT / CvT / LeViT classifier (instance, folder or Hub id) -> ViX with `attention_type`.

    `config_overrides`: other fields of the target backbone's config (e.g. `nystrom_num_landmarks`), a dict or
    training's `"key=value,key=value"`.
    """
    model_type = source_model_type(source, revision)
    if model_type not in CONVERTERS:
        raise ConversionError(
            f"Unsupported source architecture: model_type {model_type!r}; this converter takes transformers "
            f"{', '.join(CONVERTERS)} image classifiers."
        )
    converter, target_model_type = CONVERTERS[model_type]
    vit_only = {"image_size": image_size, "drop_distillation_token": drop_distillation_token}
    if converter is not convert_transformers_vit:
        given = [name for name, value in vit_only.items() if value]
        if given:
            raise ConversionError(f"--{' and --'.join(given)} apply to ViT / DeiT sources only; "
                                  f"{source} is a {model_type} model.")
        vit_only = {}
    if isinstance(config_overrides, str):
        from modeling_vix import BACKBONE_CONFIGS

        config_overrides = parse_config_overrides(config_overrides, BACKBONE_CONFIGS[target_model_type])
    return converter(source, output_dir, attention_type=attention_type, config_overrides=config_overrides,
                     revision=revision, images=images, seed=seed, atol=atol, overwrite=overwrite, **vit_only)


def cli_parser():
    return make_parser(TransformersVitArguments, "python -m conversion.from_transformers", __doc__)


def main(argv=None) -> ConversionResult:
    args, common = parse_arguments(cli_parser(), argv)
    size = None if args.image_size is None else (args.image_size * 2)[:2]
    return convert_transformers(
        args.model, common.output_dir, attention_type=args.attention_type, config_overrides=args.config_overrides,
        image_size=size, drop_distillation_token=args.drop_distillation_token, revision=args.revision,
        images=common.images, seed=args.seed, atol=common.atol, overwrite=common.overwrite,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
