r"""Convert a transformers LeViT image classifier (a model instance, a local folder or a Hub id) into ViX LeViT,
with any attention mixer.

    python -m conversion.from_transformers_levit --model facebook/levit-128S --output_dir vix-levit-128S
    python -m conversion.from_transformers_levit --model facebook/levit-128S --attention_type nystrom \
        --config_overrides "nystrom_num_landmarks=16" --output_dir levin-128S

- `softmax`: the same model; its logits on real images are checked against the source's (both heads of a
  `LevitForImageClassificationWithTeacher` apart, and their mean) before anything is written.
- `nystrom`, `linformer`: every projection, BatchNorm and attention-bias table carries over unchanged (the biases
  enter through Nystrom's landmarks / Linformer's sequence projection); the mixer approximates softmax attention,
  so the logit drift from the source is measured and reported. Linformer's sequence projections are new (its init,
  `--seed`); Nystrom's residual conv on V starts at zero.
- `performer`: FAVOR+ cannot add LeViT's attention bias, so the model is built with `attention_bias=False` and the
  source's bias tables are dropped (a note says so); its random features are drawn with `--seed`.
- `fnet`, `mixer` have no queries or keys: refused.

`LevitForImageClassificationWithTeacher` checkpoints (the facebook/levit-* ones; their config's `architectures`
say so) keep both heads (`use_distillation_head=True`: logits are the mean of the two, `cls_logits` and
`distillation_logits` apart), so they convert exactly. The folder's processor resizes straight to the model's image
size with the source's normalisation; LeViT's own processor first resizes the short side to 256/224 of it and
center-crops, so for an ImageNet evaluation crop the images that way first.

Loading goes through `from_pretrained` without `trust_remote_code` (safetensors, or torch files with
`weights_only=True`); a checkpoint that does not fill its transformers class exactly is refused.
"""

from __future__ import annotations

import re

import torch
from huggingface_hub.errors import StrictDataclassError

from modeling_vix import MIXER_CAPABILITIES, VixLevitConfig

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


# Source settings a --config_overrides may still change (training-time only, or dropping the bias on purpose).
OVERRIDABLE = ("drop_path_rate", "attention_bias")
# LeViT's image processor (transformers' LevitImageProcessor defaults: ImageNet statistics, bicubic).
LEVIT_PROCESSOR = {"image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225), "resample": 3}


def load_source(source, revision=None):
    """(LeViT classifier, hub id or None) from a model instance, a local folder or a Hub id. A folder whose config
    lists `LevitForImageClassificationWithTeacher` loads as that class (both heads)."""
    from transformers import LevitForImageClassification, LevitForImageClassificationWithTeacher

    return load_classifier(source, revision, what="LeViT",
                           classes=(LevitForImageClassification, LevitForImageClassificationWithTeacher))


def levit_processor_settings(source, revision=None) -> dict:
    """Mean / std / resampling of the source's image processor (LeViT's defaults for an instance, or without one)."""
    return processor_settings(read_processor(source, revision), LEVIT_PROCESSOR)


def levit_config_from_transformers(source_config, attention_type: str, options: dict | None = None,
                                   distillation_head: bool = False) -> VixLevitConfig:
    """The VixLevitConfig of a transformers `LevitConfig` with `attention_type` and other ViX `options` (mixer
    settings, drop_path_rate, attention_bias=False); `distillation_head` for a WithTeacher source."""
    check_attention_type(attention_type)
    c = source_config
    patch_size = c.patch_size if isinstance(c.patch_size, int) else c.patch_size[0]
    if not isinstance(c.patch_size, int) and len(set(c.patch_size)) != 1:
        raise ConversionError(f"patch_size {list(c.patch_size)}: transformers' LeViT grid is square.")
    if patch_size != c.stride**4:
        raise ConversionError(f"transformers' LeViT stem is always 4 convs of stride {c.stride}, so its patch_size "
                              f"must be {c.stride**4}; got {patch_size} (such a checkpoint does not run there).")
    settings = dict(
        image_size=c.image_size if isinstance(c.image_size, int) else list(c.image_size),
        num_channels=c.num_channels, patch_size=patch_size, kernel_size=c.kernel_size, stride=c.stride,
        padding=c.padding, hidden_sizes=list(c.hidden_sizes), num_attention_heads=list(c.num_attention_heads),
        depths=list(c.depths), key_dim=list(c.key_dim), mlp_ratio=list(c.mlp_ratio),
        attention_ratio=list(c.attention_ratio), shrink_attention_ratio=4, shrink_mlp_ratio=2,
        hidden_act="hardswish", initializer_range=c.initializer_range, drop_path_rate=c.drop_path_rate,
        attention_type=attention_type, attention_bias=MIXER_CAPABILITIES[attention_type].supports_attention_bias,
        use_distillation_head=distillation_head, id2label=dict(c.id2label), label2id=dict(c.label2id),
    )
    options = dict(options or {})
    for key in options:
        if key in settings and key not in OVERRIDABLE:
            raise ConversionError(f"{key} comes from the source checkpoint and cannot be set with --config_overrides.")
    try:
        config = VixLevitConfig(**{**settings, **options})
    except (TypeError, ValueError, StrictDataclassError) as error:  # the config's own checks of the options
        raise ConversionError(f"Invalid config_overrides {options}: {error}") from None
    # transformers sizes its bias tables by image_size // patch_size: the stem must make exactly that grid.
    height, width = config.image_size_hw
    if config.grid_size != (height // patch_size, width // patch_size):
        raise ConversionError(f"image_size {c.image_size} is not a multiple of patch_size {patch_size}: transformers' "
                              "LeViT then sizes its attention biases for another grid than its stem makes.")
    return config


def levit_rules(config: VixLevitConfig, distillation_head: bool) -> list[Rule]:
    """transformers LeViT keys -> ViX LeViT keys. transformers keeps each stage's modules in one flat list: per
    block an attention and (with mlp_ratio > 0) an MLP residual layer (`.module.` inside), then the shrink
    attention and its MLP."""

    def stage_layer(match: re.Match, tensor: torch.Tensor) -> dict[str, torch.Tensor]:
        stage, index, rest = int(match[1]), int(match[2]), match[3]
        per_block = 2 if config.mlp_ratio[stage] > 0 else 1
        blocks = config.depths[stage] * per_block
        if index < blocks:
            part = "attention" if index % per_block == 0 else "mlp"
            target = f"levit.stages.{stage}.layers.{index // per_block}.{part}.{rest}"
        elif index - blocks < 2 and stage < config.num_stages - 1:
            target = f"levit.stages.{stage}.shrink.{'attention' if index == blocks else 'mlp'}.{rest}"
        else:
            raise ConversionError(f"{match.string}: stage {stage} has no layer {index} in the converted config.")
        return {target: tensor}

    def stem_layer(match: re.Match, tensor: torch.Tensor) -> dict[str, torch.Tensor]:  # embedding_layer_1 ... _4
        return {f"levit.patch_embeddings.layers.{int(match[1]) - 1}.{match[2]}.{match[3]}": tensor}

    table = [Rule(r"levit\.patch_embeddings\.embedding_layer_(\d+)\.(convolution|batch_norm)\.(.+)", stem_layer)]
    if not config.attention_bias:  # dropped on purpose (Performer, or attention_bias=False asked for)
        table.append(Rule(r"levit\.encoder\.stages\.\d+\.layers\.\d+\.(?:module\.)?attention_biases", drop()))
    table += [
        Rule(r"levit\.encoder\.stages\.(\d+)\.layers\.(\d+)\.(?:module\.)?(.+)", stage_layer),
        Rule(r"classifier\.(batch_norm|linear)\.(.+)", rename(r"classifier.\1.\2")),
    ]
    if distillation_head:
        table.append(Rule(r"classifier_distill\.(batch_norm|linear)\.(.+)", rename(r"classifier_distill.\1.\2")))
    return table


def levit_source(source, revision, overrides: dict) -> Source:
    """A transformers LeViT classifier, loaded and described for the pipeline."""
    source_model, hub_id = load_source(source, revision)
    with_teacher = type(source_model).__name__ == "LevitForImageClassificationWithTeacher"
    bias_tables = sum(key.endswith("attention_biases") for key in source_model.state_dict())

    def configure(attention_type):
        return levit_config_from_transformers(source_model.config, attention_type, overrides, with_teacher)

    def run(pixels):
        outputs = source_model(pixels)
        return {name: getattr(outputs, name) for name in ("logits", "cls_logits", "distillation_logits")
                if getattr(outputs, name, None) is not None}

    def notes(config) -> list[str]:
        notes = ["The processor resizes straight to the model's image size; LeViT's own first resizes the short side "
                 "to 256/224 of it and center-crops (crop images that way for ImageNet numbers)."]
        if not config.attention_bias:
            why = ("Performer (FAVOR+) never forms the attention logits, so it cannot add them"
                   if config.attention_type == "performer" else "attention_bias=False was asked for")
            notes.append(f"LeViT's attention-bias tables ({bias_tables}) were dropped: {why}. The model has "
                         "attention_bias=False; fine-tune before use.")
        if with_teacher:
            notes.append("Both heads of LevitForImageClassificationWithTeacher are kept (use_distillation_head=True): "
                         "logits are their mean, as LeViT does at inference.")
        return notes

    config = configure("softmax")
    return classifier_source(
        source_model, source, hub_id, configure=configure, rules=lambda config: levit_rules(config, with_teacher),
        processor=make_processor(config.image_size_hw, **levit_processor_settings(source, revision)), run=run,
        exact=lambda config: config.attention_bias, notes=notes,
    )


def convert_transformers_levit(
    source,
    output_dir=None,
    *,
    attention_type: str = "softmax",
    config_overrides: dict | str | None = None,
    revision: str | None = None,
    images=None,
    seed: int = 0,
    atol: float | None = 1e-4,
    overwrite: bool = False,
) -> ConversionResult:
    """A transformers LeViT classifier (instance, folder or Hub id) -> ViX LeViT with `attention_type`.

    `config_overrides`: other VixLevitConfig fields for the target mixer, a dict or training's
    `"key=value,key=value"`.
    """
    overrides = parse_config_overrides(config_overrides, VixLevitConfig)
    return convert(lambda: levit_source(source, revision, overrides), output_dir, attention_type=attention_type,
                   seed=seed, images=images, atol=atol, overwrite=overwrite)


def cli_parser():
    return make_parser(TransformersSourceArguments, "python -m conversion.from_transformers_levit", __doc__)


def main(argv=None) -> ConversionResult:
    args, common = parse_arguments(cli_parser(), argv)
    return convert_transformers_levit(
        args.model, common.output_dir, attention_type=args.attention_type,
        config_overrides=parse_config_overrides(args.config_overrides, VixLevitConfig), revision=args.revision,
        images=common.images, seed=args.seed, atol=common.atol, overwrite=common.overwrite,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
