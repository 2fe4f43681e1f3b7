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
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError

from modeling_vix import VixLevitConfig, VixLevitForImageClassification
from modeling_vix.mixers_vix import MIXERS

from .common import (
    ConversionError,
    ConversionResult,
    Rule,
    apply_rules,
    check_output_dir,
    check_tolerance,
    drop,
    load_strict,
    logit_parity,
    make_parser,
    make_processor,
    parity_pixels,
    parse_arguments,
    parse_config_overrides,
    rename,
    run_cli,
    source_label,
    write_folder,
)
from .transformers_sources import (
    ATTENTION_TYPES,
    TransformersSourceArguments,
    load_classifier,
    processor_settings,
    read_processor,
)


SOURCE_CLASSES = ("LevitForImageClassification", "LevitForImageClassificationWithTeacher")
# Mixer tensors the source has no counterpart for: kept from the seeded new model (the residual conv: zero).
NEW_PARAMETERS = (".kernel.seq_proj_k", ".kernel.seq_proj_v", ".kernel.projection_matrix", ".kernel.steps_since_redraw")
RESIDUAL_CONV = ".kernel.residual_conv.weight"
# Source settings a --config_overrides may still change (training-time only, or dropping the bias on purpose).
OVERRIDABLE = ("drop_path_rate", "attention_bias")
# LeViT's image processor (transformers' LevitImageProcessor defaults: ImageNet statistics, bicubic).
LEVIT_PROCESSOR = {"image_mean": (0.485, 0.456, 0.406), "image_std": (0.229, 0.224, 0.225), "resample": 3}


def load_source(source, revision=None):
    """(LeViT classifier, hub id or None) from a model instance, a local folder or a Hub id. A folder whose config
    lists `LevitForImageClassificationWithTeacher` loads as that class (both heads)."""
    from transformers import LevitForImageClassification, LevitForImageClassificationWithTeacher

    if not isinstance(source, (str, Path)):
        if type(source).__name__ not in SOURCE_CLASSES or source.config.model_type != "levit":
            raise ConversionError(f"Unsupported source {type(source).__name__}; this converter takes transformers "
                                  f"{' and '.join(SOURCE_CLASSES)}.")
        return source, None
    return load_classifier(
        source, revision, what="LeViT", model_types=("levit",), default_class=LevitForImageClassification,
        classes_by_architecture={"LevitForImageClassificationWithTeacher": LevitForImageClassificationWithTeacher},
    )


def levit_processor_settings(source, revision=None) -> dict:
    """Mean / std / resampling of the source's image processor (LeViT's defaults for an instance, or without one)."""
    return processor_settings(read_processor(source, revision), LEVIT_PROCESSOR)


def levit_config_from_transformers(source_config, attention_type: str, options: dict | None = None,
                                   distillation_head: bool = False) -> VixLevitConfig:
    """The VixLevitConfig of a transformers `LevitConfig` with `attention_type` and other ViX `options` (mixer
    settings, drop_path_rate, attention_bias=False); `distillation_head` for a WithTeacher source."""
    if attention_type not in ATTENTION_TYPES:
        if attention_type in MIXERS:
            raise ConversionError(f"attention_type={attention_type!r} has no queries, keys or values, so LeViT's "
                                  f"attention weights cannot carry over; choose one of {', '.join(ATTENTION_TYPES)}.")
        raise ConversionError(f"Unknown attention_type {attention_type!r}; choose one of {', '.join(ATTENTION_TYPES)}.")
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
        attention_type=attention_type, attention_bias=MIXERS[attention_type].capabilities.supports_attention_bias,
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


@torch.no_grad()
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
    check_output_dir(output_dir, overwrite)
    if attention_type not in ATTENTION_TYPES:
        levit_config_from_transformers(None, attention_type)  # raises the explanatory error
    source_model, hub_id = load_source(source, revision)
    was_training = source_model.training
    source_model.eval()
    try:
        result, pixels, logits, source_name = convert_loaded(source, source_model, attention_type, config_overrides,
                                                             revision, images, seed, atol)
    finally:
        source_model.train(was_training)
    if output_dir is not None:
        write_folder(result, output_dir, source=source_name, base_model=hub_id, check_pixels=pixels,
                     check_logits=logits, overwrite=overwrite)
    return result


def convert_loaded(source, source_model, attention_type, config_overrides, revision, images, seed, atol):
    """The conversion of a loaded source (in eval mode): (result, parity pixels, ViX logits, source name)."""
    with_teacher = type(source_model).__name__ == "LevitForImageClassificationWithTeacher"
    if isinstance(config_overrides, str):
        config_overrides = parse_config_overrides(config_overrides, VixLevitConfig)
    config = levit_config_from_transformers(source_model.config, attention_type, config_overrides, with_teacher)
    torch.manual_seed(seed)  # Performer features and Linformer projections, when the mixer has them
    model = VixLevitForImageClassification(config).eval()
    state = {key: value.detach().cpu() for key, value in source_model.state_dict().items()}
    converted, unused = apply_rules(state, levit_rules(config, with_teacher))
    result = ConversionResult(model=model, processor=None)
    target = model.state_dict()
    new_keys = [key for key in target if key.endswith(NEW_PARAMETERS)]
    for key in new_keys:
        converted[key] = target[key].clone()
    conv_keys = [key for key in target if key.endswith(RESIDUAL_CONV)]
    for key in conv_keys:  # zero: the converted Nystrom model starts as the plain Nystrom approximation of softmax
        converted[key] = torch.zeros_like(target[key])
    source_name = f"transformers {type(source_model).__name__} ({source_label(source)})"
    load_strict(model, converted, unused, source_name)

    dropped = [key for key in state if key.endswith("attention_biases")] if not config.attention_bias else []
    if dropped:
        why = ("Performer (FAVOR+) never forms the attention logits, so it cannot add them"
               if attention_type == "performer" else "attention_bias=False was asked for")
        result.notes.append(f"LeViT's attention-bias tables ({len(dropped)}) were dropped: {why}. The model has "
                            "attention_bias=False; fine-tune before use.")
    if conv_keys:
        result.notes.append("Nystrom's depthwise residual conv on V (not in the source) starts at zero, so the model "
                            "starts from the Nystrom approximation of the source's attention "
                            "(nystrom_residual_conv_kernel=0 removes it).")
    if new_keys:
        result.notes.append(f"New {attention_type} parameters, not in the source, initialised with seed {seed}: "
                            f"{len(new_keys)} tensors ({', '.join(sorted({k.rsplit('.', 1)[-1] for k in new_keys}))}).")

    result.processor = make_processor(config.image_size_hw, **levit_processor_settings(source, revision))
    result.notes.append("The processor resizes straight to the model's image size; LeViT's own first resizes the "
                        "short side to 256/224 of it and center-crops (crop images that way for ImageNet numbers).")
    pixels, inputs = parity_pixels(result.processor, images, config.num_channels, config.image_size_hw, seed)
    outputs = model(pixels)
    reference = source_model(pixels)
    exact = attention_type == "softmax" and config.attention_bias
    name = f"transformers {type(source_model).__name__}"
    pairs = [(reference.logits, outputs.logits, name)]
    if with_teacher:
        pairs += [(reference.cls_logits, outputs.cls_logits, f"{name} (cls head)"),
                  (reference.distillation_logits, outputs.distillation_logits, f"{name} (distillation head)")]
        result.notes.append("Both heads of LevitForImageClassificationWithTeacher are kept "
                            "(use_distillation_head=True): logits are their mean, as LeViT does at inference.")
    for expected, actual, reference_name in pairs:
        parity = logit_parity(expected, actual, reference_name, attention_type, inputs, expected_exact=exact)
        check_tolerance(parity, atol, source_name)
        result.parity.append(parity)
    if not exact and attention_type != "softmax":
        result.notes.append(f"`{attention_type}` approximates the source's softmax attention: the weights carry over, "
                            "the logits move by the amount above; fine-tune before use.")
    return result, pixels, outputs.logits, source_name


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
