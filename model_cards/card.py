"""A minimal, data-driven model card: metadata from config.json, results only from measured metrics.

    write_model_card(folder, metrics, recipe)   # -> folder/README.md

`metrics` is the dict the training job writes to metrics.json (`test_accuracy`, `test_top5_accuracy`,
`num_parameters`, `train_runtime`, `hardware`, `dataset`, ...); `recipe` the run's settings (recipe.yaml).
A number appears in the card only if it is in `metrics`: nothing is filled in by hand.
"""

import json
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData


PAPER = "https://arxiv.org/abs/2107.02239"
PAPER_NAMES = {"softmax": "ViT", "performer": "ViP", "linformer": "ViL", "nystrom": "ViN", "fnet": "FNet", "mixer": "MLP-Mixer"}


def variant_name(config: dict) -> str:
    """The paper's name for a config, e.g. 'Hybrid ViN-RoPE (2D)'."""
    name = PAPER_NAMES.get(config.get("attention_type"), config.get("attention_type", "ViX"))
    if config.get("embedding_type") == "conv":
        name = f"Hybrid {name}"
    position = config.get("position_embedding_type")
    if position == "rope_1d":
        name += "-RoPE"
    elif position == "rope_2d":
        name += "-RoPE (2D)"
    return name


def _pct(value) -> str:
    return f"{100 * value:.2f}%"


def build_model_card(config: dict, metrics: dict, recipe: dict | None = None, model_name: str | None = None) -> ModelCard:
    recipe = recipe or {}
    dataset = metrics.get("dataset", "unknown")
    dataset_id = recipe.get("dataset_hub_id") or (dataset if "/" in dataset else None)
    tags = ["vix", "image-classification", "custom_code", f"attention-{config.get('attention_type')}",
            f"embedding-{config.get('embedding_type')}", f"position-{config.get('position_embedding_type')}"]
    eval_results = [
        EvalResult(task_type="image-classification", dataset_type=dataset_id or dataset, dataset_name=dataset,
                   dataset_split="test", metric_type=metric, metric_name=label, metric_value=float(metrics[key]))
        for key, metric, label in (("test_accuracy", "accuracy", "Top-1 accuracy"),
                                   ("test_top5_accuracy", "top_5_accuracy", "Top-5 accuracy"))
        if metrics.get(key) is not None
    ]
    model_name = model_name or f"vix-{variant_name(config).lower().replace(' ', '-').replace('(', '').replace(')', '')}"
    data = ModelCardData(
        library_name="transformers", pipeline_tag="image-classification", license="apache-2.0", tags=tags,
        model_name=model_name, datasets=[dataset_id] if dataset_id else None,
        metrics=["accuracy"] if eval_results else None, eval_results=eval_results or None,
    )

    size = config.get("image_size")
    lines = [
        f"# {model_name}", "",
        f"A **{variant_name(config)}** from the ViX family (*Vision Xformers*, [arXiv 2107.02239]({PAPER})): "
        f"attention_type `{config.get('attention_type')}`, embedding_type `{config.get('embedding_type')}`, "
        f"position_embedding_type `{config.get('position_embedding_type')}`, image size {size}, patch "
        f"{config.get('patch_size')}, hidden {config.get('hidden_size')}, depth {config.get('num_hidden_layers')}, "
        f"{config.get('num_attention_heads')} heads"
        + (f", {metrics['num_parameters']:,} parameters" if metrics.get("num_parameters") else "") + ".",
        "", f"Trained on **{dataset}**" + (
            " (" + ", ".join(f"{count:,} {split}" for split, count in metrics["split_sizes"].items()) + " images)"
            if metrics.get("split_sizes") else "") + ".",
        "", "## Results (measured by the training run that wrote this folder)", "",
        "| metric | value |", "|---|---|",
    ]
    rows = [("test top-1 accuracy", "test_accuracy", _pct), ("test top-5 accuracy", "test_top5_accuracy", _pct),
            ("best validation top-1", "best_validation_accuracy", _pct), ("epochs", "epochs", lambda v: f"{v:g}"),
            ("training time", "train_runtime", lambda v: f"{v:.0f} s"), ("precision", "precision", str),
            ("peak memory", "peak_memory_mb", lambda v: f"{v:.0f} MiB"), ("hardware", "hardware", str),
            ("processes", "world_size", str)]
    lines += [f"| {label} | {fmt(metrics[key])} |" for label, key, fmt in rows if metrics.get(key) is not None]
    lines += [
        "", "## Use", "", "```python", "from transformers import pipeline", "",
        'classify = pipeline("image-classification", model="<this folder or repo>", trust_remote_code=True)',
        'print(classify("image.png"))', "```", "",
        "Or, with the `vix` package installed, `import modeling_vix` and load it without `trust_remote_code`.",
    ]
    if recipe:
        lines += ["", "## Training recipe", "", "Re-run with `python -m training.train recipe.yaml` (the file beside this card):",
                  "", "```yaml", *[f"{key}: {json.dumps(value)}" for key, value in recipe.items()], "```"]
    card = ModelCard.from_template(data, template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n", body="\n".join(lines))
    return card


def write_model_card(folder, metrics: dict, recipe: dict | None = None, model_name: str | None = None) -> Path:
    """Write folder/README.md from folder/config.json and the measured `metrics`; returns its path."""
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    path = folder / "README.md"
    build_model_card(config, metrics, recipe, model_name).save(path)
    return path
