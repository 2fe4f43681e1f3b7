"""Model cards built from data: a model folder's config, the metrics its run measured, and its recipe.

    write_model_card(folder, metrics, recipe)            # -> folder/README.md (training/train.py calls this)
    build_model_card(config, metrics, recipe)            # -> huggingface_hub.ModelCard
    python -m model_cards.rebuild --folders FOLDER ... | --results outputs/cpu/results.json   # rebuild cards

`metrics` is what the training job writes to metrics.json (`test_accuracy`, `num_parameters`,
`train_runtime`, `hardware`, `dataset`, `split_sizes`, ...); `recipe` the run's settings (recipe.yaml).
Converted weights carry the converter's record instead (conversion.json: source, base model, measured parity,
notes); the converters write their cards with this same builder, so every card has one layout and one tag
vocabulary (`card_tags`). Architecture numbers (tokens, FLOPs) are measured on the model by `measure.py`.
The card is one template (`template.py`) filled from these: a number appears only if a run produced it.
"""

import json
import re
from pathlib import Path

import jinja2
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .measure import measure_architecture, weights_size_bytes
from .template import CARD_TEMPLATE


PAPER_URL = "https://arxiv.org/abs/2107.02239"
LICENSE = "apache-2.0"  # the project's licence (setup.cfg), the same for every variant
PAPER_NAMES = {"softmax": "ViT", "performer": "ViP", "linformer": "ViL", "nystrom": "ViN", "fnet": "FNet",
               "mixer": "MLP-Mixer"}
MIXER_SUMMARIES = {
    "softmax": "exact softmax attention",
    "performer": "Performer attention (FAVOR+ random features, linear in the token count)",
    "linformer": "Linformer attention (keys and values projected along the sequence, linear in the token count)",
    "nystrom": "Nyströmformer attention (landmark approximation of softmax, linear in the token count)",
    "fnet": "FNet mixing (a parameter-free 2D Fourier transform)",
    "mixer": "an MLP-Mixer token-mixing MLP",
}
POSITION_SUMMARIES = {"learned": "learned position embeddings", "rope_1d": "rotary position embeddings over the "
                      "raster index (RoPE, as in the paper)", "rope_2d": "axial 2D rotary position embeddings",
                      "none": "no position embeddings",
                      "attention_bias": "a learned attention bias per head and relative offset (LeViT)"}
MIXER_FIELD_PREFIXES = {"performer": "performer_", "linformer": "linformer_", "nystrom": "nystrom_", "mixer": "mixer_"}
CITATION = """@inproceedings{jeevan2022vix,
  title     = {Resource-efficient Hybrid X-formers for Vision},
  author    = {Jeevan, Pranav and Sethi, Amit},
  booktitle = {IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year      = {2022}
}"""
# Run folders in a results.json and local dataset names in a recipe are relative to the repository checkout this file
# runs from; installed (site-packages/vix/model_cards: no setup.cfg beside it), to the current folder.
_PARENT = Path(__file__).resolve().parents[1]
REPO_ROOT = _PARENT if (_PARENT / "setup.cfg").is_file() else Path.cwd()
PINNED_REVISION = re.compile(r'revision="([0-9a-f]{40})"')


# ---------------------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------------------

# The paper's backbone names by mixer: CCT / CCN / CCP and PiT / PiN / PiP (L for Linformer, as ViL).
BACKBONE_NAMES = {
    "vix_cct": {"softmax": "CCT", "nystrom": "CCN", "performer": "CCP", "linformer": "CCL", "fnet": "CCT-FNet",
                "mixer": "CCT-MLP-Mixer"},
    "vix_pit": {"softmax": "PiT", "nystrom": "PiN", "performer": "PiP", "linformer": "PiL", "fnet": "PiT-FNet",
                "mixer": "PiT-MLP-Mixer"},
    "vix_cvt": {"softmax": "CvT", "nystrom": "CvN", "performer": "CvP", "linformer": "CvL"},
    "vix_levit": {"softmax": "LeViT", "nystrom": "LeViN", "performer": "LeViP", "linformer": "LeViL"},
}


BACKBONE_TAGS = {"vix": "vit", "vix_cct": "cct", "vix_pit": "pit", "vix_cvt": "cvt", "vix_levit": "levit"}
ARCHITECTURES = {"vix": "a ViT", "vix_cct": "a Compact Convolutional Transformer (CCT, Hassani et al. 2021)",
                 "vix_pit": "a Pooling-based Vision Transformer (PiT, Heo et al. 2021)",
                 "vix_cvt": "a Convolutional vision Transformer (CvT, Wu et al. 2021)",
                 "vix_levit": "LeViT (Graham et al. 2021)"}
STAGED_BACKBONES = ("vix_pit", "vix_cvt", "vix_levit")  # token counts and sizes per stage


def backbone(config: dict) -> str:
    return config.get("model_type") or "vix"


def position_kind(config: dict) -> str:
    """How a model knows where tokens are: the `position_embedding_type` of ViT, CCT and PiT; LeViT's attention
    bias; none for CvT, whose convolutions see the layout."""
    if backbone(config) == "vix_levit":
        return "attention_bias" if config.get("attention_bias", True) else "none"
    return config.get("position_embedding_type", "none")


def pooling_kind(config: dict) -> str:
    if backbone(config) == "vix_cvt":
        return "cls" if (config.get("cls_token") or [False])[-1] else "mean"
    if backbone(config) == "vix_levit":
        return "mean"
    return config.get("pooling", "cls")


def variant_name(config: dict) -> str:
    """The paper's name for a config, e.g. 'Hybrid ViN-RoPE (2D)', 'CCN', 'PiP'."""
    names = BACKBONE_NAMES.get(backbone(config), PAPER_NAMES)
    name = names.get(config.get("attention_type"), config.get("attention_type", "ViX"))
    if backbone(config) == "vix" and config.get("embedding_type") == "conv":
        name = f"Hybrid {name}"
    position = position_kind(config)
    if position == "rope_1d":
        name += "-RoPE"
    elif position == "rope_2d":
        name += "-RoPE (2D)"
    return name


def default_model_name(config: dict) -> str:
    """'vix-hybrid-vin-rope-2d' for a Hybrid ViN-RoPE (2D)."""
    return "vix-" + re.sub(r"[^a-z0-9]+", "-", variant_name(config).lower()).strip("-")


def pinned_revision(card_text: str) -> str | None:
    """The commit a card's usage snippets pin (what `publish` wrote), or None."""
    match = PINNED_REVISION.search(card_text)
    return match.group(1) if match else None


# ---------------------------------------------------------------------------------------------------------
# Formatting (one place, so card, index and tests agree on how a number is written)
# ---------------------------------------------------------------------------------------------------------

def pct(value) -> str:
    return f"{100 * value:.2f}%"


def duration(seconds) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def flops_text(flops) -> str:
    return f"{flops / 1e9:.3g} GFLOPs" if flops >= 1e9 else f"{flops / 1e6:.3g} MFLOPs"


def size_text(num_bytes) -> str:
    return f"{num_bytes / 2**20:,.1f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:,.1f} KiB"


def count_text(count) -> str:
    return f"{count:,} ({count / 1e6:.2f} M)" if count >= 1e4 else f"{count:,}"


# ---------------------------------------------------------------------------------------------------------
# Facts derived from the data
# ---------------------------------------------------------------------------------------------------------

def dataset_id(metrics: dict, recipe: dict) -> str | None:
    """The Hub id of the training data (for `datasets:` metadata), when there is one."""
    dataset = metrics.get("dataset") or ""
    candidate = recipe.get("dataset_hub_id") or (dataset if "/" in dataset else None)
    return None if candidate and _local_path(candidate) else candidate


def _local_path(name: str | None) -> Path | None:
    """`name` as an existing local folder (as given, or relative to the repository root), else None."""
    if not name:
        return None
    for path in (Path(name).expanduser(), REPO_ROOT / name):
        if path.is_dir():
            return path
    return None


def local_data_copy(recipe: dict) -> dict | None:
    """When the run read a local copy standing in for a Hub dataset: its path, its card title, whether JPEG."""
    name, hub_id = recipe.get("dataset_name"), recipe.get("dataset_hub_id")
    looks_local = bool(name) and (name.startswith((".", "/", "~")) or _local_path(name) is not None)
    if not (hub_id and looks_local):
        return None
    folder = _local_path(name)
    readme = (folder / "README.md").read_text(errors="replace") if folder and (folder / "README.md").exists() else ""
    title = next((line[2:].strip() for line in readme.splitlines() if line.startswith("# ")), None)
    return {"path": name, "hub_id": hub_id, "title": title, "jpeg": "jpeg" in readme.lower()}


def base_model_of(*candidates: str | None) -> str | None:
    """The first candidate that is a Hub id (what the model was fine-tuned or converted from); local paths are not."""
    for candidate in candidates:
        if candidate and "/" in candidate and _local_path(candidate) is None and not candidate.startswith((".", "/")):
            return candidate
    return None


def _mixer_class(attention_type: str):
    """What the mixer can do (capabilities as data, from the config module)."""
    from modeling_vix.configuration_vix import MIXER_CAPABILITIES

    return MIXER_CAPABILITIES.get(attention_type)


def mixer_settings(config: dict) -> str:
    prefix = MIXER_FIELD_PREFIXES.get(config.get("attention_type"))
    pairs = [f"`{key}={value}`" for key, value in sorted(config.items())
             if prefix and key.startswith(prefix) and value is not None]
    return ", ".join(pairs)


def compatibility_settings(config: dict) -> str:
    from modeling_vix.configuration_vix import COMPATIBILITY_DEFAULTS

    changed = [f"`{key}={config[key]!r}`" for key, default in COMPATIBILITY_DEFAULTS.items()
               if key in config and config[key] != default]
    return ", ".join(changed)


# ---------------------------------------------------------------------------------------------------------
# Card sections
# ---------------------------------------------------------------------------------------------------------

def _image_hw(config: dict) -> tuple[int, int]:
    size = config["image_size"]
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _with_details(value: str, details: str | None) -> str:
    return f"{value} ({details})" if details else value


def mixer_row(config: dict) -> str:
    return _with_details(f"`{config['attention_type']}`", mixer_settings(config))


def embedding_kind(config: dict) -> str:
    """How pixels become tokens: the ViT's `embedding_type`, CCT's conv tokenizer, PiT's overlapping patch conv."""
    kinds = {"vix_cct": "conv_tokenizer", "vix_pit": "patch_conv", "vix_cvt": "conv_embedding",
             "vix_levit": "conv_stem"}
    return kinds.get(backbone(config), config.get("embedding_type"))


def embedding_row(config: dict) -> str:
    if backbone(config) == "vix_cct":
        return (f"CCT conv tokenizer: {config['tokenizer_num_layers']} × (conv {config['tokenizer_kernel_size']}×"
                f"{config['tokenizer_kernel_size']}, stride {config['tokenizer_stride']}, ReLU"
                + (", max pool)" if config.get("tokenizer_max_pool") else ")"))
    if backbone(config) == "vix_pit":
        return f"patch conv {config['patch_size']}×{config['patch_size']}, stride {config['patch_stride']}"
    if backbone(config) == "vix_cvt":
        return (f"a conv embedding per stage: kernels {config['patch_sizes']}, strides {config['patch_stride']}; "
                f"conv projections of q/k/v (`{config['qkv_projection_method'][0]}`, key/value strides "
                f"{config['stride_kv']})")
    if backbone(config) == "vix_levit":
        return f"conv stem (conv {config['kernel_size']}×{config['kernel_size']} + BatchNorm, Hardswish) of total " \
               f"stride {config['patch_size']}"
    stem = None
    if config["embedding_type"] == "conv":
        stem = (f"stem channels {config.get('conv_stem_channels')}, activation `{config.get('conv_stem_activation')}`, "
                f"downsampling `{config.get('conv_stem_downsampling')}`")
    return _with_details(f"`{config['embedding_type']}`", stem)


def token_rows(config: dict, measured: dict) -> list[tuple[str, str]]:
    height, width = _image_hw(config)
    grid_h, grid_w = measured["grid_size"]
    patches = grid_h * grid_w
    prefix = measured["num_tokens"] - patches  # cls / distillation tokens
    tokenizer = f"patch {config['patch_size']}" if "patch_size" in config else "conv tokenizer"
    rows = [
        ("input", f"{height}×{width} RGB, {tokenizer} → {grid_h}×{grid_w} grid"),
        ("tokens per image", _with_details(f"{measured['num_tokens']:,}",
                                           f"{patches:,} patches + {prefix} prefix" if prefix else None)),
    ]
    if backbone(config) in STAGED_BACKBONES:
        rows[-1] = ("tokens per image", f"{measured['num_tokens']:,} in the first stage, fewer in later stages")
    return rows


def class_row(config: dict) -> list[tuple[str, str]]:
    labels = [label for _, label in sorted(config.get("id2label", {}).items(), key=lambda item: int(item[0]))]
    if not labels:
        return []
    return [("classes", f"{len(labels)}: " + ", ".join(labels[:10]) + (", ..." if len(labels) > 10 else ""))]


def cost_rows(config: dict, metrics: dict, measured: dict) -> list[tuple[str, str]]:
    """Parameters, FLOPs, weight size and training memory: each only when measured."""
    rows = [("parameters", count_text(metrics.get("num_parameters") or measured["num_parameters"]))]
    if measured.get("forward_flops"):
        rows.append(("forward FLOPs, batch 1", flops_text(measured["forward_flops"])))
    if measured.get("weights_bytes"):
        dtype = config.get("dtype") or "float32"
        rows.append(("weights (safetensors)", f"{size_text(measured['weights_bytes'])}, {dtype}"))
    if metrics.get("peak_memory_mb"):
        where = ", ".join(str(metrics[k]) for k in ("precision", "hardware") if metrics.get(k))
        rows.append(("training peak memory", _with_details(f"{metrics['peak_memory_mb']:,.0f} MiB", where)))
    return rows


def model_rows(config: dict, metrics: dict, measured: dict) -> list[tuple[str, str]]:
    rows = [
        ("paper name", variant_name(config)),
        ("`attention_type`", mixer_row(config)),
        ("embedding", embedding_row(config)),
        ("positions", f"`{position_kind(config)}`"),
        ("pooling", f"`{pooling_kind(config)}`"),
        *token_rows(config, measured),
        size_row(config),
    ]
    if compatibility_settings(config):
        rows.append(("compatibility settings", compatibility_settings(config)))
    return rows + class_row(config) + cost_rows(config, metrics, measured)


def size_row(config: dict) -> tuple[str, str]:
    if backbone(config) in STAGED_BACKBONES:
        widths = config["hidden_sizes"]
        if backbone(config) == "vix_pit":
            mlp = config.get("intermediate_sizes") or [4 * width for width in widths]
        else:  # CvT and LeViT give the MLP as a ratio of the width
            mlp = [int(width * ratio) for width, ratio in zip(widths, config["mlp_ratio"], strict=True)]
        return ("stages: hidden / depth / heads / MLP", f"{config['hidden_sizes']} / {config['depths']} / "
                                                        f"{config['num_attention_heads']} / {mlp}")
    return ("hidden / depth / heads / MLP", f"{config['hidden_size']} / {config['num_hidden_layers']} / "
                                            f"{config['num_attention_heads']} / {config['intermediate_size']}")


def measurement_note(config: dict, metrics: dict, measured: dict) -> str | None:
    """How the FLOPs and the memory in the table were measured (only for numbers the table shows)."""
    notes = []
    if measured.get("forward_flops"):
        uncounted = "; the Fourier transforms are not counted" if config["attention_type"] == "fnet" else ""
        notes.append("FLOPs were counted by torch's `FlopCounterMode` on one forward pass at batch 1 (a multiply-add "
                     f"counts 2; matmuls, convolutions and attention kernels{uncounted}).")
    if metrics.get("peak_memory_mb"):
        notes.append("The training peak memory is the training process's peak (RSS on CPU, allocated memory on GPU).")
    return " ".join(notes) or None


RECIPE_ROWS = (("optimizer", "optim"), ("learning rate", "learning_rate"), ("schedule", "lr_scheduler_type"),
               ("warm-up", "warmup_steps"), ("weight decay", "weight_decay"),
               ("label smoothing", "label_smoothing_factor"), ("augmentation", "augmentation"), ("seed", "seed"))


def precision_text(metrics: dict) -> str:
    """What ran, with why when the run recorded it (training/precision.py): "bf16 (auto: CPU has avx512_bf16, ...)"."""
    return _with_details(str(metrics["precision"]), metrics.get("precision_reason"))


RUN_ROWS = (("hardware", "hardware", str), ("processes", "world_size", str),
            ("training time", "train_runtime", duration))


def training_rows(metrics: dict, recipe: dict) -> list[tuple[str, str]]:
    rows = []
    if metrics.get("dataset"):
        sizes = ", ".join(f"{n:,} {split}" for split, n in (metrics.get("split_sizes") or {}).items())
        rows.append(("data", _with_details(metrics["dataset"], sizes)))
    if metrics.get("epochs") is not None:
        steps = f"{metrics['global_steps']:,} steps" if metrics.get("global_steps") else None
        rows.append(("epochs", _with_details(f"{round(metrics['epochs'], 1):g}", steps)))
    if recipe.get("per_device_train_batch_size"):
        processes, accumulation = metrics.get("world_size") or 1, recipe.get("gradient_accumulation_steps", 1)
        rows.append(("batch size", f"{recipe['per_device_train_batch_size'] * processes * accumulation}"))
    rows += [(label, f"`{recipe[key]}`") for label, key in RECIPE_ROWS if recipe.get(key) is not None]
    if metrics.get("precision") is not None:
        rows.append(("precision", precision_text(metrics)))
    rows += [(label, fmt(metrics[key])) for label, key, fmt in RUN_ROWS if metrics.get(key) is not None]
    return rows


TOP_K_KEY = re.compile(r"top(\d+)_accuracy$")


def num_labels(config: dict) -> int | None:
    labels = config.get("id2label") or {}
    return len(labels) or config.get("num_labels")


def shown_metrics(config: dict, metrics: dict) -> dict:
    """The metrics a card reports: top-k only where k < the number of labels (with k classes or fewer, every label
    is among the k highest logits, so top-k is 100% and says nothing). Older runs recorded it regardless."""
    count = num_labels(config)
    return {key: value for key, value in metrics.items()
            if not ((match := TOP_K_KEY.search(key)) and count is not None and int(match.group(1)) >= count)}


def protocol(metrics: dict, recipe: dict) -> str:
    """How the reported checkpoint was chosen and tested, from the run's own settings and split sizes."""
    sizes = metrics.get("split_sizes") or {}
    dataset = metrics.get("dataset", "the dataset")
    if recipe.get("load_best_model_at_end", True) and metrics.get("best_checkpoint"):
        step = re.search(r"checkpoint-(\d+)", str(metrics["best_checkpoint"]))
        details = ([f"{sizes['validation']:,} validation images"] if "validation" in sizes else []) + (
            [f"step {int(step.group(1)):,}"] if step else [])
        metric = recipe.get("metric_for_best_model", "accuracy")
        chosen = _with_details(f"The checkpoint with the best validation {metric}", ", ".join(details))
    else:
        chosen = "The last checkpoint"
    test = f"the test split ({sizes['test']:,} images of {dataset})" if "test" in sizes else f"the {dataset} test split"
    top_k = (" Top-5 counts a hit when the label is among the five highest logits."
             if metrics.get("test_top5_accuracy") is not None else "")
    return f"{chosen} was evaluated once on {test}, after training.{top_k}"


RESULT_ROWS = (("test top-1 accuracy", "test_accuracy", pct), ("test top-5 accuracy", "test_top5_accuracy", pct),
               ("test top-1 accuracy, each image averaged with its mirror image", "test_flip_accuracy", pct),
               ("best validation top-1 accuracy", "best_validation_accuracy", pct),
               ("test loss", "test_loss", lambda value: f"{value:.4f}"))


def result_rows(metrics: dict) -> list[tuple[str, str]]:
    rows = [(label, fmt(metrics[key])) for label, key, fmt in RESULT_ROWS if metrics.get(key) is not None]
    if metrics.get("validation_curve"):  # the learning curve: accuracy after each evaluation, in training order
        curve = metrics["validation_curve"]
        rows.append((f"validation top-1 after each of {len(curve)} evaluations",
                     ", ".join(f"{100 * point['accuracy']:.1f}" for point in curve) + " %"))
    return rows


def resolution_limit(config: dict, measured: dict) -> str:
    """What input sizes the model runs at, from the mixer's declaration and the position type."""
    height, width = _image_hw(config)
    mixer = _mixer_class(config["attention_type"])
    if mixer is not None and mixer.fixed_sequence_length:
        return (f"`{config['attention_type']}` owns parameters sized by the token count ({measured['num_tokens']:,} "
                f"tokens), so this model runs at {height}×{width} input only; the image processor resizes every "
                "image to that size.")
    if position_kind(config) == "learned":
        return (f"Trained at {height}×{width}. Learned position embeddings need `interpolate_pos_encoding=True` at "
                "another input size (the pipeline resizes to the trained size instead); accuracy at other sizes was "
                "not measured.")
    if "patch_size" not in config or backbone(config) != "vix":
        return f"Trained at {height}×{width}; accuracy at other sizes was not measured."
    return (f"Trained at {height}×{width}; it runs at any size the patch size ({config['patch_size']}) divides, but "
            "accuracy at other sizes was not measured.")


def data_copy_limit(recipe: dict) -> str | None:
    copy = local_data_copy(recipe)
    if copy is None:
        return None
    title = f', "{copy["title"]}"' if copy["title"] else ""
    text = (f"Trained and evaluated on a local copy of `{copy['hub_id']}` (`{copy['path']}`{title}), not on the Hub "
            "original.")
    if copy["jpeg"]:
        text += " Its images are JPEG re-encodings, so accuracy on the original images can differ."
    return text


def limitations(config: dict, metrics: dict, recipe: dict, measured: dict) -> list[str]:
    lines = [resolution_limit(config, measured)]
    mixer = _mixer_class(config["attention_type"])
    if mixer is not None and not mixer.returns_attention_weights:
        lines.append(f"`{config['attention_type']}` has no attention map: `output_attentions=True` returns none.")
    if data_copy_limit(recipe):
        lines.append(data_copy_limit(recipe))
    if metrics.get("test_accuracy") is not None:
        seed = f" (seed {recipe['seed']})" if recipe.get("seed") is not None else ""
        lines.append(f"The results come from one training run{seed} and one test evaluation: there are no error bars.")
    lines.append("Image classification only, on the label set above; it is not a general-purpose feature extractor.")
    return lines


def eval_results(metrics: dict, recipe: dict) -> list[EvalResult]:
    dataset = metrics.get("dataset") or "unknown"
    hub_id = dataset_id(metrics, recipe)
    return [
        EvalResult(task_type="image-classification", task_name="Image Classification", dataset_type=hub_id or dataset,
                   dataset_name=dataset, dataset_split="test", metric_type=metric, metric_name=label,
                   metric_value=float(metrics[key]))
        for key, metric, label in (("test_accuracy", "accuracy", "Top-1 accuracy"),
                                   ("test_top5_accuracy", "top_5_accuracy", "Top-5 accuracy"))
        if metrics.get(key) is not None
    ]


def card_tags(config: dict, converted: bool = False) -> list[str]:
    """The one tag vocabulary of every ViX card (trained or converted): the mixer, embedding and position type
    as `attention-<value>`, `embedding-<value>`, `position-<value>`, plus `converted` for converted weights."""
    tags = ["vix", "image-classification", "custom_code", f"backbone-{BACKBONE_TAGS[backbone(config)]}",
            f"attention-{config.get('attention_type')}", f"embedding-{embedding_kind(config)}",
            f"position-{position_kind(config)}"]
    return tags + (["converted"] if converted else [])


def card_metadata(config: dict, metrics: dict, recipe: dict, model_name: str, base_model: str | None,
                  converted: bool = False) -> ModelCardData:
    results = eval_results(metrics, recipe)
    hub_id = dataset_id(metrics, recipe)
    return ModelCardData(
        library_name="transformers", pipeline_tag="image-classification", license=LICENSE,
        tags=card_tags(config, converted), model_name=model_name, base_model=base_model,
        datasets=[hub_id] if hub_id else None, metrics=sorted({r.metric_type for r in results}) or None,
        eval_results=results or None,
    )


def parity_rows(conversion: dict) -> list[tuple[str, ...]]:
    """One row per parity measurement a converter recorded (conversion.json), numbers formatted once here."""
    return [(entry["reference"], f"`{entry['attention_type']}`", f"{entry['max_abs_logit_diff']:.2e}",
             f"{entry['reference_logit_scale']:.2e}", f"{entry['top1_agreement']:.0%}", entry["inputs"])
            for entry in conversion.get("parity", [])]


def card_context(config: dict, metrics: dict, recipe: dict, measured: dict, *, model_name: str,
                 base_model: str | None, repo_id: str | None, revision: str | None, conversion: dict | None) -> dict:
    return {
        "model_name": model_name, "variant": variant_name(config), "paper_url": PAPER_URL,
        "mixer_summary": MIXER_SUMMARIES.get(config["attention_type"], f"`{config['attention_type']}`"),
        "embedding_type": embedding_kind(config),
        "architecture": ARCHITECTURES[backbone(config)],
        "position_summary": POSITION_SUMMARIES.get(position_kind(config)),
        "base_model": base_model or recipe.get("model_name_or_path"),  # a local parent is named in the text only
        "dataset": metrics.get("dataset"),
        "model_rows": model_rows(config, metrics, measured),
        "measurement_note": measurement_note(config, metrics, measured),
        "model_ref": repo_id or "<this folder or repo id>", "revision": revision,
        "revision_kwarg": f' revision="{revision}",' if revision else "",
        "training_rows": training_rows(metrics, recipe),
        "recipe_yaml": yaml.safe_dump(recipe, sort_keys=False).strip() if recipe else None,
        "protocol": protocol(metrics, recipe), "result_rows": result_rows(metrics),
        "limitations": limitations(config, metrics, recipe, measured), "citation": CITATION,
        "conversion": conversion, "parity_rows": parity_rows(conversion or {}),
        "conversion_notes": (conversion or {}).get("notes", []),
    }


# ---------------------------------------------------------------------------------------------------------
# Building and writing
# ---------------------------------------------------------------------------------------------------------

def render(context: dict) -> str:
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                     trim_blocks=True, lstrip_blocks=True)
    return environment.from_string(CARD_TEMPLATE).render(**context)


def build_model_card(config: dict, metrics: dict, recipe: dict | None = None, model_name: str | None = None, *,
                     measured: dict | None = None, base_model: str | None = None, repo_id: str | None = None,
                     revision: str | None = None, conversion: dict | None = None) -> ModelCard:
    """The card for a model: YAML metadata (with `model-index` from `metrics`) and the template's sections.

    `measured` holds architecture numbers (`measure.measure_architecture`, plus `weights_bytes`); measured here
    when not given. `repo_id`/`revision` fill the usage snippets (the publish step knows them). `conversion` is a
    converter's record (conversion.json: `source`, `base_model`, `parity`, `notes`) for converted weights.
    """
    recipe = recipe or {}
    metrics = shown_metrics(config, metrics)
    measured = measured if measured is not None else measure_architecture(config)
    model_name = model_name or default_model_name(config)
    base_model = base_model_of(base_model, metrics.get("base_model"), recipe.get("model_name_or_path"),
                               (conversion or {}).get("base_model"))
    data = card_metadata(config, metrics, recipe, model_name, base_model, converted=conversion is not None)
    body = render(card_context(config, metrics, recipe, measured, model_name=model_name, base_model=base_model,
                               repo_id=repo_id, revision=revision, conversion=conversion))
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


CONVERSION_RECORD = "conversion.json"  # written by conversion/ beside converted weights; the card reads it


def read_folder(folder) -> tuple[dict, dict, dict]:
    """(config, metrics, recipe) of a model folder; metrics and recipe are {} when absent."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text()) if (folder / "metrics.json").exists() else {}
    recipe = (yaml.safe_load((folder / "recipe.yaml").read_text()) or {}) if (folder / "recipe.yaml").exists() else {}
    return config, metrics, recipe


def inherited_base_model(model_name_or_path: str | None) -> str | None:
    """The Hub model a run starts from: a Hub id itself; for a local folder, the Hub model its weights were
    converted (conversion.json) or fine-tuned (metrics.json) from, so a converted-then-fine-tuned card names it."""
    folder = _local_path(model_name_or_path)
    if folder is None:
        return base_model_of(model_name_or_path)
    metrics_path = folder / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    return base_model_of((read_conversion(folder) or {}).get("base_model"), metrics.get("base_model"))


def read_conversion(folder) -> dict | None:
    """The converter's record in a folder (source, base model, measured parity, notes), None for trained weights."""
    path = Path(folder) / CONVERSION_RECORD
    return json.loads(path.read_text()) if path.exists() else None


def write_model_card(folder, metrics: dict, recipe: dict | None = None, model_name: str | None = None, *,
                     base_model: str | None = None, repo_id: str | None = None, revision: str | None = None) -> Path:
    """Write folder/README.md from folder/config.json (and conversion.json when the weights were converted), the
    measured `metrics` and the `recipe`; returns its path."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    measured = {**measure_architecture(config), "weights_bytes": weights_size_bytes(folder)}
    card = build_model_card(config, metrics, recipe, model_name, measured=measured, base_model=base_model,
                            repo_id=repo_id, revision=revision, conversion=read_conversion(folder))
    path = folder / "README.md"
    card.save(path)
    return path
