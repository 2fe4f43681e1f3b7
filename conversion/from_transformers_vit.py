"""Convert a transformers ViT or DeiT image classifier (a local folder or a Hub id) into ViX, with any
attention mixer.

    python -m conversion.from_transformers_vit --model google/vit-base-patch16-224 --output_dir vix-vit-base
    python -m conversion.from_transformers_vit --model ./my-vit --attention_type nystrom \
        --config_overrides "nystrom_num_landmarks=49" --output_dir vix-vin-from-vit

- `softmax`: the same model; the logits are checked against the source (exact up to float rounding).
- `performer`, `nystrom`, `linformer`: the same q/k/v/o projections and all other weights carry over unchanged
  (checked exactly in softmax first); the mixer approximates softmax attention, so the script measures how far
  the logits move from the source on real images: a starting point for a linear-attention fine-tune, not the same
  classifier. The mixer's own new tensors get their init with `--seed` (Performer's random features and, with
  `performer_redraw_interval` > 0, its redraw counter; Linformer's sequence projections, which fix the image
  size); Nystrom's residual conv on V starts at zero.
- `fnet`, `mixer` have no queries or keys: refused.
- `--image_size` other than the checkpoint's: the learned position embeddings are resampled bicubically,
  exactly as `interpolate_pos_encoding=True` does in transformers (parity is measured against the source
  run with `interpolate_pos_encoding=True`).
- DeiT (`model_type="deit"`) adds a distillation token that every layer attends to; ViX keeps it
  (`use_distillation_token=True`) and, for `DeiTForImageClassificationWithTeacher`, also its distillation head
  (`use_distillation_head=True`: logits are the mean of both heads, as DeiT at inference), so DeiT converts
  exactly. `--drop_distillation_token` gives a plain ViX instead and reports the logit change against the
  source's cls head. (transformers' non-distilled DeiT checkpoints, e.g. facebook/deit-base-patch16-224,
  are `ViT` models.)

Loading goes through `from_pretrained` without `trust_remote_code` (safetensors, or torch files with
`weights_only=True`); a checkpoint that does not fill its transformers class exactly (e.g. a `ViTModel`
backbone without a classifier) is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from huggingface_hub.errors import StrictDataclassError

from modeling_vix import VixConfig

from .common import (
    ConversionError,
    ConversionResult,
    Rule,
    drop,
    make_parser,
    make_processor,
    parse_arguments,
    parse_config_overrides,
    rename,
    resample_position_embeddings,
    run_cli,
)
from .pipeline import Source, check_attention_type, convert
from .transformers_sources import (
    TransformersSourceArguments,
    classifier_source,
    load_classifier,
    processor_settings,
    read_processor,
)


VIT_NORMALIZATION = (0.5, 0.5, 0.5)


def load_source(source, revision=None):
    """(model, hub id or None) from a model instance, a local folder or a Hub id."""
    from transformers import (
        AutoModelForImageClassification,
        DeiTForImageClassification,
        DeiTForImageClassificationWithTeacher,
        ViTForImageClassification,
    )

    return load_classifier(source, revision, what="ViT / DeiT", default_class=AutoModelForImageClassification,
                           classes=(ViTForImageClassification, DeiTForImageClassification,
                                    DeiTForImageClassificationWithTeacher))


def source_processor_settings(source, revision=None) -> dict:
    """Mean / std / resampling of the source's image processor (ViT's defaults when it has none)."""
    defaults = {"image_mean": VIT_NORMALIZATION, "image_std": VIT_NORMALIZATION}
    return processor_settings(read_processor(source, revision), defaults)


def vix_config(source_config, attention_type: str, image_size, options: dict, keep_distillation: bool = False,
               distillation_head: bool = False) -> VixConfig:
    check_attention_type(attention_type)
    c = source_config
    settings = dict(
        image_size=list(image_size), patch_size=c.patch_size, num_channels=c.num_channels, hidden_size=c.hidden_size,
        num_hidden_layers=c.num_hidden_layers, num_attention_heads=c.num_attention_heads,
        intermediate_size=c.intermediate_size, hidden_act=c.hidden_act, hidden_dropout_prob=c.hidden_dropout_prob,
        attention_probs_dropout_prob=c.attention_probs_dropout_prob, initializer_range=c.initializer_range,
        layer_norm_eps=c.layer_norm_eps, qkv_bias=c.qkv_bias, id2label=dict(c.id2label), label2id=dict(c.label2id),
        attention_type=attention_type, embedding_type="linear", position_embedding_type="learned", pooling="cls",
        use_distillation_token=keep_distillation, use_distillation_head=keep_distillation and distillation_head,
    )
    for key in options:
        if key in settings and key not in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            raise ConversionError(f"{key} comes from the source checkpoint and cannot be set with --config_overrides.")
    try:
        return VixConfig(**settings, **options)
    except (TypeError, ValueError, StrictDataclassError) as error:  # the config's own validation of the overrides
        raise ConversionError(f"Invalid config_overrides {options}: {error}") from None


def rules(model_type: str, drop_distillation: bool, old_grid, new_grid) -> list[Rule]:
    prefix = model_type  # "vit" or "deit"

    num_prefix = 2 if model_type == "deit" and not drop_distillation else 1

    def positions(tensor):
        if model_type == "deit" and drop_distillation:  # (cls, distillation, patches) -> (cls, patches)
            tensor = torch.cat((tensor[:, :1], tensor[:, 2:]), dim=1)
        return resample_position_embeddings(tensor, num_prefix, old_grid, new_grid)

    table = [
        Rule(prefix + r"\.embeddings\.position_embeddings", rename("vix.embeddings.position_embeddings", positions)),
        Rule(r"classifier\.(weight|bias)", rename(r"classifier.\1")),
        Rule(r"cls_classifier\.(weight|bias)", rename(r"classifier.\1")),
    ]
    if drop_distillation:
        table += [Rule(prefix + r"\.embeddings\.distillation_token", drop()),
                  Rule(r"distillation_classifier\.(weight|bias)", drop())]
    else:
        table.append(Rule(r"distillation_classifier\.(weight|bias)", rename(r"distillation_classifier.\1")))
    table.append(Rule(prefix + r"\.((?:embeddings\.(?:cls_token|distillation_token|patch_embeddings\..*))"
                               r"|layers\..*|layernorm\..*)",
                      rename(r"vix.\1")))
    return table


def vit_source(source, revision, image_size, overrides: dict, drop_distillation_token: bool) -> Source:
    """A transformers ViT / DeiT classifier, loaded and described for the pipeline."""
    source_model, hub_id = load_source(source, revision)
    c = source_model.config
    old_size = (c.image_size, c.image_size) if isinstance(c.image_size, int) else tuple(c.image_size)
    new_size = old_size if image_size is None else (
        (image_size, image_size) if isinstance(image_size, int) else tuple(image_size))
    if new_size[0] % c.patch_size or new_size[1] % c.patch_size:
        raise ConversionError(f"image_size {new_size} is not divisible by the patch size {c.patch_size}.")
    old_grid = (old_size[0] // c.patch_size, old_size[1] // c.patch_size)
    new_grid = (new_size[0] // c.patch_size, new_size[1] // c.patch_size)
    is_deit = c.model_type == "deit"
    keep_distillation = is_deit and not drop_distillation_token
    with_teacher = "distillation_classifier.weight" in source_model.state_dict()
    # Without its distillation token a DeiT can only be compared on its cls head (which then sees fewer tokens).
    cls_only = drop_distillation_token and with_teacher
    resampled = new_size != old_size

    def run(pixels):
        outputs = source_model(pixels, interpolate_pos_encoding=resampled)
        return {"logits": outputs.cls_logits if cls_only else outputs.logits}

    def notes(config) -> list[str]:
        notes = []
        if resampled:
            notes.append(f"Position embeddings resampled bicubically from {old_grid} to {new_grid} patches.")
        if is_deit and drop_distillation_token:
            notes.append("The DeiT distillation token (and its position embedding, and the distillation head when "
                         "present) were dropped on request. The logits moved by the amount above.")
        elif keep_distillation:
            notes.append("The DeiT distillation token is kept (use_distillation_token=True)" + (
                "; logits average the cls and distillation heads, as DeiT-with-teacher does at inference "
                "(use_distillation_head=True)." if with_teacher else "."))
        return notes

    suffix = " (cls head)" if cls_only else ""
    if resampled:
        suffix += f", interpolate_pos_encoding to {new_size[0]}x{new_size[1]}"
    return classifier_source(
        source_model, source, hub_id, suffix,
        configure=lambda attention_type: vix_config(c, attention_type, new_size, overrides, keep_distillation,
                                                    with_teacher),
        rules=lambda config: rules(c.model_type, drop_distillation_token, old_grid, new_grid),
        processor=make_processor(new_size, **source_processor_settings(source, revision)), run=run,
        exact=lambda config: not (is_deit and drop_distillation_token), notes=notes,
    )


def convert_transformers_vit(
    source,
    output_dir=None,
    *,
    attention_type: str = "softmax",
    image_size=None,
    config_overrides: dict | str | None = None,
    drop_distillation_token: bool = False,
    revision: str | None = None,
    images=None,
    seed: int = 0,
    atol: float | None = 1e-4,
    overwrite: bool = False,
) -> ConversionResult:
    """A transformers ViT / DeiT classifier (instance, folder or Hub id) -> ViX with `attention_type`.

    `config_overrides`: other VixConfig fields for the target mixer, a dict or training's `"key=value,key=value"`.
    """
    overrides = parse_config_overrides(config_overrides)
    return convert(lambda: vit_source(source, revision, image_size, overrides, drop_distillation_token), output_dir,
                   attention_type=attention_type, seed=seed, images=images, atol=atol, overwrite=overwrite)


@dataclass
class TransformersVitArguments(TransformersSourceArguments):
    """The source checkpoint and the target mixer, plus the ViT / DeiT-only options."""

    image_size: list[int] | None = field(default=None, metadata={
        "help": "ViT / DeiT only: target image size (one int or height width); positions are resampled."})
    drop_distillation_token: bool = field(default=False, metadata={
        "help": "DeiT only: drop the distillation token and head (a plain ViX); the logit change is reported."})


def cli_parser():
    return make_parser(TransformersVitArguments, "python -m conversion.from_transformers_vit", __doc__)


def main(argv=None) -> ConversionResult:
    args, common = parse_arguments(cli_parser(), argv)
    size = None if args.image_size is None else (args.image_size * 2)[:2]
    return convert_transformers_vit(
        args.model, common.output_dir, attention_type=args.attention_type, image_size=size,
        config_overrides=args.config_overrides,
        drop_distillation_token=args.drop_distillation_token, revision=args.revision, images=common.images,
        seed=args.seed, atol=common.atol, overwrite=common.overwrite,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
