"""Convert a transformers CvT image classifier (`CvtForImageClassification`: an instance, a local folder or a Hub
id) into ViX's CvT, with any attention mixer.

    python -m conversion.from_transformers_cvt --model microsoft/cvt-13 --output_dir vix-cvt-13
    python -m conversion.from_transformers_cvt --model microsoft/cvt-13 --attention_type nystrom \
        --config_overrides "nystrom_num_landmarks=49" --output_dir cvn-13

- `softmax`: the same model; its logits are checked against the source's on real images before anything is
  written (exact up to float rounding).
- `nystrom`, `performer`, `linformer` (CvN, CvP, ...): every tensor carries over unchanged (the convolutional
  projections, the q/k/v/o projections, the MLPs, ...); only the mixer's own new parameters are initialised:
  Performer's random features and Linformer's key projections with `--seed`, Nystrom's residual conv on V (in
  stages whose keys are as many as the queries) at zero. The logit change from the softmax source is measured and
  reported: a starting point for a fine-tune, not the same classifier.
- `fnet`, `mixer` have no queries or keys for CvT's convolutional projections: refused.

The ViX config keeps CvtConfig's per-stage lists; its single `qkv_bias`, `hidden_dropout_prob` and
`attention_probs_dropout_prob` take the source's per-stage values when they agree across stages (a source with
mixed `qkv_bias` is refused; mixed dropouts need an explicit value in `--config_overrides`). transformers' CvT
LayerNorms use torch's eps 1e-5 whatever `layer_norm_eps` says, so the converted config has 1e-5. `image_size`
(which only Linformer and the processor depend on) comes from `--config_overrides`, else the source's image
processor, else 224.

transformers builds no layer for `qkv_projection_method` "avg" or "linear" (its forward then fails), so such a
source cannot be checked and is refused; ViX runs both as the original CvT does.

Loading goes through `from_pretrained` without `trust_remote_code`; a checkpoint that does not fill
`CvtForImageClassification` exactly is refused.
"""

from __future__ import annotations

from dataclasses import fields

from huggingface_hub.errors import StrictDataclassError

from modeling_vix import VixCvtConfig

from .common import (
    ConversionError,
    ConversionResult,
    Rule,
    first_line,
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


DEFAULT_IMAGE_SIZE = 224
CONFIG_FIELDS = {config_field.name for config_field in fields(VixCvtConfig)}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # CvT's processor (microsoft/cvt-*)


def processor_settings_and_size(source, revision, defaults: dict):
    """(settings, size, crop_pct): the normalisation / resampling of the source's image processor over `defaults`,
    the image size it produces and its crop ratio (ConvNext-style processors resize to size / crop_pct, then crop);
    size and crop_pct are None when the source has no processor (an instance, a folder without one)."""
    processor = read_processor(source, revision)
    settings = processor_settings(processor, defaults)
    if processor is None:
        return settings, None, None
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None) or {}
    size = dict(size) if not isinstance(size, int) else {"shortest_edge": size}
    crop_pct = getattr(processor, "crop_pct", None)
    if "height" in size and "width" in size:
        return settings, (int(size["height"]), int(size["width"])), None
    if "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        return settings, (edge, edge), crop_pct if crop_pct and edge < 384 else None  # ConvNext's rule
    return settings, None, None


# --------------------------------------------------------------------------------------------------------
# Source, config, rename table
# --------------------------------------------------------------------------------------------------------


def load_source(source, revision=None):
    """(CvtForImageClassification, hub id or None) from an instance, a local folder or a Hub id."""
    from transformers import CvtForImageClassification

    return load_classifier(source, revision, what="CvT", classes=(CvtForImageClassification,))


def check_source_runs(source_model) -> None:
    """Refuse what transformers' CvT cannot run, so that its logits could not be checked."""
    from transformers.models.cvt.modeling_cvt import CvtSelfAttentionProjection

    c = source_model.config
    missing = [name for name, module in source_model.named_modules()
               if isinstance(module, CvtSelfAttentionProjection) and not hasattr(module, "convolution_projection")]
    if missing:
        raise ConversionError(
            f"transformers' CvT builds no projection layer for qkv_projection_method {list(c.qkv_projection_method)} "
            f"(only 'dw_bn'), so the source fails in its forward (e.g. {missing[0]}) and its logits cannot be "
            "checked. Build the ViX CvT directly with VixCvtConfig (it runs 'avg' and 'linear' as the original CvT)."
        )
    for stage, has_cls in enumerate(c.cls_token):
        if has_cls and c.embed_dim[stage] != c.embed_dim[-1]:
            raise ConversionError(
                f"transformers' CvT sizes every cls token by the last stage's width ({c.embed_dim[-1]}), so its stage "
                f"{stage} (width {c.embed_dim[stage]}) with cls_token cannot run."
            )


def single_value(name: str, values, vix_name: str, options: dict):
    """A per-stage CvtConfig list as ViX's one value: taken when the stages agree, else from `options`."""
    distinct = sorted(set(values))
    if vix_name in options or len(distinct) == 1:
        return options.get(vix_name, distinct[0])
    raise ConversionError(f"The source's {name} differs between stages ({list(values)}); ViX's CvT has one "
                          f"{vix_name}: set it in config_overrides (e.g. '{vix_name}={max(distinct)}').")


def cvt_config_from_transformers(source_config, attention_type: str, image_size, options: dict) -> VixCvtConfig:
    """A transformers `CvtConfig` as `VixCvtConfig` with `attention_type` at `image_size`; `options` are other
    VixCvtConfig fields (the mixer settings, dropouts, drop_path_rate)."""
    check_attention_type(attention_type)
    c = source_config
    options = dict(options)
    if len(set(c.qkv_bias)) != 1:
        raise ConversionError(f"The source's qkv_bias differs between stages ({list(c.qkv_bias)}); ViX's CvT has one "
                              "qkv_bias for every stage, so this checkpoint cannot be converted exactly.")
    settings = dict(
        image_size=int(image_size[0]) if image_size[0] == image_size[1] else [int(size) for size in image_size],
        num_channels=c.num_channels,
        patch_sizes=list(c.patch_sizes), patch_stride=list(c.patch_stride), patch_padding=list(c.patch_padding),
        hidden_sizes=list(c.embed_dim), depths=list(c.depth), num_attention_heads=list(c.num_heads),
        mlp_ratio=[float(ratio) for ratio in c.mlp_ratio],
        drop_path_rate=[float(rate) for rate in options.pop("drop_path_rate", c.drop_path_rate)],
        cls_token=[bool(flag) for flag in c.cls_token], qkv_projection_method=list(c.qkv_projection_method),
        kernel_qkv=list(c.kernel_qkv), padding_kv=list(c.padding_kv), stride_kv=list(c.stride_kv),
        padding_q=list(c.padding_q), stride_q=list(c.stride_q), qkv_bias=bool(c.qkv_bias[0]),
        hidden_dropout_prob=float(single_value("drop_rate", c.drop_rate, "hidden_dropout_prob", options)),
        attention_probs_dropout_prob=float(
            single_value("attention_drop_rate", c.attention_drop_rate, "attention_probs_dropout_prob", options)),
        initializer_range=c.initializer_range, layer_norm_eps=1e-5, hidden_act="gelu",
        id2label=dict(c.id2label), label2id=dict(c.label2id), attention_type=attention_type,
    )
    options = {key: value for key, value in options.items()
               if key not in ("hidden_dropout_prob", "attention_probs_dropout_prob")}
    unknown = [key for key in options if key not in CONFIG_FIELDS]
    if unknown:
        raise ConversionError(f"config_overrides {', '.join(unknown)}: not VixCvtConfig fields.")
    fixed = [key for key in options if key in settings or key in ("num_labels", "model_type")]
    if fixed:
        raise ConversionError(f"{', '.join(fixed)} come from the source checkpoint and cannot be set with "
                              "config_overrides.")
    try:
        return VixCvtConfig(**settings, **options)
    except (TypeError, ValueError, StrictDataclassError) as error:  # the config's own validation of the overrides
        raise ConversionError(f"Invalid config_overrides {options}: {first_line(error)}") from None


def cvt_rules() -> list[Rule]:
    stage = r"cvt\.encoder\.stages\.(\d+)\."
    layer = stage + r"layers\.(\d+)\."
    target = r"cvt.stages.\1.layers.\2."
    attention = target + "attention."
    return [
        Rule(stage + r"cls_token", rename(r"cvt.stages.\1.embeddings.cls_token")),
        Rule(stage + r"embedding\.convolution_embeddings\.(projection|normalization)\.(weight|bias)",
             rename(r"cvt.stages.\1.embeddings.\2.\3")),
        Rule(layer + r"attention\.attention\.convolution_projection_(query|key|value)\.convolution_projection\."
                     r"(convolution\.weight|normalization\.(?:weight|bias|running_mean|running_var|num_batches_tracked))",
             rename(target + r"attention.convolution_projection_\3.\4")),
        Rule(layer + r"attention\.attention\.projection_query\.(weight|bias)", rename(attention + r"q_proj.\3")),
        Rule(layer + r"attention\.attention\.projection_key\.(weight|bias)", rename(attention + r"k_proj.\3")),
        Rule(layer + r"attention\.attention\.projection_value\.(weight|bias)", rename(attention + r"v_proj.\3")),
        Rule(layer + r"attention\.output\.dense\.(weight|bias)", rename(attention + r"o_proj.\3")),
        Rule(layer + r"intermediate\.dense\.(weight|bias)", rename(target + r"mlp.fc1.\3")),
        Rule(layer + r"output\.dense\.(weight|bias)", rename(target + r"mlp.fc2.\3")),
        Rule(layer + r"(layernorm_before|layernorm_after)\.(weight|bias)", rename(target + r"\3.\4")),
        Rule(r"layernorm\.(weight|bias)", rename(r"cvt.layernorm.\1")),
        Rule(r"classifier\.(weight|bias)", rename(r"classifier.\1")),
    ]


# --------------------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------------------


def cvt_source(source, revision, overrides: dict) -> Source:
    """A transformers CvtForImageClassification, loaded and described for the pipeline."""
    source_model, hub_id = load_source(source, revision)
    check_source_runs(source_model)
    overrides = dict(overrides)
    settings, processor_size, crop_pct = processor_settings_and_size(
        source, revision, {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    )
    image_size = overrides.pop("image_size", None) or processor_size or DEFAULT_IMAGE_SIZE
    image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)

    def run(pixels):
        # output_hidden_states: without a cls token in its last stage, transformers' CvtForImageClassification reads
        # its base model's output tuple at index 1, which exists only with hidden states.
        return {"logits": source_model(pixels, output_hidden_states=True).logits}

    crop_note = [] if crop_pct is None else [
        f"The source's image processor resizes the short side to image_size / {crop_pct:g} and center-crops "
        "image_size; the converted processor resizes to image_size directly."]
    return classifier_source(
        source_model, source, hub_id,
        configure=lambda attention_type: cvt_config_from_transformers(source_model.config, attention_type, image_size,
                                                                      overrides),
        rules=lambda config: cvt_rules(), processor=make_processor(image_size, **settings), run=run,
        notes=lambda config: crop_note,
    )


def convert_transformers_cvt(
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
    """A transformers CvtForImageClassification (instance, folder or Hub id) -> ViX CvT with `attention_type`.

    `config_overrides`: other VixCvtConfig fields (mixer settings, `image_size`, dropouts), a dict or training's
    `"key=value,key=value"`.
    """
    overrides = parse_config_overrides(config_overrides, VixCvtConfig)
    return convert(lambda: cvt_source(source, revision, overrides), output_dir, attention_type=attention_type,
                   seed=seed, images=images, atol=atol, overwrite=overwrite)


def cli_parser():
    return make_parser(TransformersSourceArguments, "python -m conversion.from_transformers_cvt", __doc__)


def main(argv=None) -> ConversionResult:
    args, common = parse_arguments(cli_parser(), argv)
    return convert_transformers_cvt(
        args.model, common.output_dir, attention_type=args.attention_type, config_overrides=args.config_overrides,
        revision=args.revision, images=common.images, seed=args.seed, atol=common.atol, overwrite=common.overwrite,
    )


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
