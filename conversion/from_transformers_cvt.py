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
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError

from modeling_vix import MIXER_CAPABILITIES, VixCvtConfig, VixCvtForImageClassification

from .common import (
    ConversionError,
    ConversionResult,
    Rule,
    apply_rules,
    check_output_dir,
    check_tolerance,
    first_line,
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


# The mixers' own tensors that a softmax source does not have: kept as the seeded new model drew them.
NEW_PARAMETERS = (".mixer.seq_proj_k", ".mixer.seq_proj_v", ".mixer.projection_matrix", ".mixer.steps_since_redraw")
RESIDUAL_CONV = ".mixer.residual_conv.weight"
# Options the converted config may take from config_overrides beside the mixer settings: the input size, and the
# training-only regularisation (the source's values are a default, not part of the function it computes).
OVERRIDABLE = ("image_size", "hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate")
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
    """(CvtForImageClassification in eval mode, hub id or None) from an instance, a local folder or a Hub id."""
    from transformers import CvtForImageClassification

    if not isinstance(source, (str, Path)):
        if not isinstance(source, CvtForImageClassification):
            model_type = getattr(getattr(source, "config", None), "model_type", None)
            raise ConversionError(f"Unsupported source {type(source).__name__} (model_type {model_type!r}); this "
                                  "converter takes transformers' CvtForImageClassification.")
        return source.eval(), None
    return load_classifier(source, revision, what="CvT", model_types=("cvt",),
                           default_class=CvtForImageClassification)


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
    if attention_type not in ATTENTION_TYPES:
        if attention_type in MIXER_CAPABILITIES:
            raise ConversionError(f"attention_type={attention_type!r} has no queries, keys or values, so CvT's "
                                  "convolutional projections and attention weights cannot carry over; choose one of "
                                  f"{', '.join(ATTENTION_TYPES)}.")
        raise ConversionError(f"Unknown attention_type {attention_type!r}; choose one of {', '.join(ATTENTION_TYPES)}.")
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
    mixer = target + "attention.mixer."
    return [
        Rule(stage + r"cls_token", rename(r"cvt.stages.\1.embeddings.cls_token")),
        Rule(stage + r"embedding\.convolution_embeddings\.(projection|normalization)\.(weight|bias)",
             rename(r"cvt.stages.\1.embeddings.\2.\3")),
        Rule(layer + r"attention\.attention\.convolution_projection_(query|key|value)\.convolution_projection\."
                     r"(convolution\.weight|normalization\.(?:weight|bias|running_mean|running_var|num_batches_tracked))",
             rename(target + r"attention.convolution_projection_\3.\4")),
        Rule(layer + r"attention\.attention\.projection_query\.(weight|bias)", rename(mixer + r"q_proj.\3")),
        Rule(layer + r"attention\.attention\.projection_key\.(weight|bias)", rename(mixer + r"k_proj.\3")),
        Rule(layer + r"attention\.attention\.projection_value\.(weight|bias)", rename(mixer + r"v_proj.\3")),
        Rule(layer + r"attention\.output\.dense\.(weight|bias)", rename(mixer + r"o_proj.\3")),
        Rule(layer + r"intermediate\.dense\.(weight|bias)", rename(target + r"mlp.fc1.\3")),
        Rule(layer + r"output\.dense\.(weight|bias)", rename(target + r"mlp.fc2.\3")),
        Rule(layer + r"(layernorm_before|layernorm_after)\.(weight|bias)", rename(target + r"\3.\4")),
        Rule(r"layernorm\.(weight|bias)", rename(r"cvt.layernorm.\1")),
        Rule(r"classifier\.(weight|bias)", rename(r"classifier.\1")),
    ]


# --------------------------------------------------------------------------------------------------------
# The conversion
# --------------------------------------------------------------------------------------------------------


@torch.no_grad()
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
    check_output_dir(output_dir, overwrite)
    if attention_type not in ATTENTION_TYPES:
        cvt_config_from_transformers(None, attention_type, None, {})  # raises the explanatory error
    overrides = dict((parse_config_overrides(config_overrides, VixCvtConfig) if isinstance(config_overrides, str)
                      else config_overrides) or {})
    source_model, hub_id = load_source(source, revision)
    check_source_runs(source_model)
    c = source_model.config
    settings, processor_size, crop_pct = processor_settings_and_size(
        source, revision, {"image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD}
    )
    image_size = overrides.pop("image_size", None) or processor_size or DEFAULT_IMAGE_SIZE
    image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    config = cvt_config_from_transformers(c, attention_type, image_size, overrides)

    torch.manual_seed(seed)  # Performer features and Linformer projections, when the mixer has them
    model = VixCvtForImageClassification(config).eval()
    target = model.state_dict()
    state = {key: value.detach().cpu() for key, value in source_model.state_dict().items()}
    converted, unused = apply_rules(state, cvt_rules())
    result = ConversionResult(model=model, processor=None)
    new_keys = [key for key in target if key.endswith(NEW_PARAMETERS)]
    for key in new_keys:
        converted[key] = target[key].clone()
    conv_keys = [key for key in target if key.endswith(RESIDUAL_CONV)]
    for key in conv_keys:  # zero: the converted Nystrom model starts as the plain Nystrom approximation of softmax
        converted[key] = torch.zeros_like(target[key])
    if conv_keys:
        result.notes.append("Nystrom's depthwise residual conv on V (not in the source; only in stages whose keys are "
                            "as many as the queries) starts at zero, so the model starts from the Nystrom "
                            "approximation of the source's attention.")
    if new_keys:
        names = ", ".join(sorted({key.rsplit(".", 1)[-1] for key in new_keys}))
        result.notes.append(f"New {attention_type} parameters, not in the source, initialised with seed {seed}: "
                            f"{len(new_keys)} tensors ({names}).")
    source_name = f"transformers {type(source_model).__name__} ({source_label(source)})"
    load_strict(model, converted, unused, source_name)

    result.processor = make_processor(image_size, **settings)
    pixels, inputs = parity_pixels(result.processor, images, c.num_channels, image_size, seed)
    logits = model(pixels).logits
    # output_hidden_states: without a cls token in its last stage, transformers' CvtForImageClassification reads its
    # base model's output tuple at index 1, which exists only with hidden states.
    reference = source_model(pixels, output_hidden_states=True).logits
    exact = attention_type == "softmax"
    parity = logit_parity(reference, logits, f"transformers {type(source_model).__name__}", attention_type, inputs,
                          expected_exact=exact)
    check_tolerance(parity, atol, source_name)
    result.parity.append(parity)
    if crop_pct is not None:
        result.notes.append(f"The source's image processor resizes the short side to image_size / {crop_pct:g} and "
                            "center-crops image_size; the converted processor resizes to image_size directly.")
    if not exact:
        result.notes.append(f"`{attention_type}` approximates the source's softmax attention: every weight carries "
                            "over, the logits move by the amount above; fine-tune before use.")
    if output_dir is not None:
        write_folder(result, output_dir, source=source_name, base_model=hub_id, check_pixels=pixels,
                     check_logits=logits, overwrite=overwrite)
    return result


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
