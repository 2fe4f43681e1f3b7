"""The index card of a published zoo: every variant side by side with its measured results and a pinned link.

    build_index_card(entries, title="ViX model zoo", endpoint="https://huggingface.co")

Each entry is a dict with `repo_id`, `revision` (the commit its card pins), `config`, `metrics` and `measured`
(what `measure.measure_architecture` returns), and optionally `featured` (published with `--featured`): featured
entries come first, in a table of their own. Like the variant cards, every number comes from those.
"""

from huggingface_hub import ModelCard, ModelCardData

from .card import (
    CITATION,
    LICENSE,
    PAPER_URL,
    count_text,
    dataset_id,
    duration,
    embedding_kind,
    flops_text,
    pct,
    position_kind,
    shown_metrics,
    variant_name,
)


COLUMNS = (  # header, how to read a cell from an entry; a missing value prints as "–"
    ("model", lambda e: e["link"]),
    ("paper name", lambda e: variant_name(e["config"])),
    ("mixer", lambda e: f"`{e['config']['attention_type']}`"),
    ("embedding", lambda e: f"`{embedding_kind(e['config'])}`"),
    ("position", lambda e: f"`{position_kind(e['config'])}`"),
    ("tokens", lambda e: f"{e['measured']['num_tokens']:,}"),
    ("params", lambda e: count_text(e["metrics"].get("num_parameters") or e["measured"]["num_parameters"])),
    ("forward FLOPs", lambda e: flops_text(e["measured"]["forward_flops"])),
    ("test top-1", lambda e: pct(e["metrics"]["test_accuracy"])),
    ("test top-5", lambda e: pct(shown_metrics(e["config"], e["metrics"])["test_top5_accuracy"])),
    ("epochs", lambda e: f"{round(e['metrics']['epochs'], 1):g}"),
    ("train time", lambda e: duration(e["metrics"]["train_runtime"])),
    ("train peak memory", lambda e: f"{e['metrics']['peak_memory_mb']:,.0f} MiB"),
    ("precision", lambda e: e["metrics"]["precision"]),
)


def _cell(read, entry) -> str:
    try:
        return str(read(entry))
    except (KeyError, TypeError):
        return "–"


def results_table(entries: list[dict], endpoint: str) -> str:
    base = endpoint.rstrip("/")
    linked = [{**entry, "link": f"[{entry['repo_id']}]({base}/{entry['repo_id']})"} for entry in entries]
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(read, entry) for _, read in COLUMNS) + " |" for entry in linked]
    return "\n".join(lines)


def results_sections(entries: list[dict], endpoint: str) -> list[str]:
    """One table, or, when some entries are featured, a "Flagship" table of those first and then the others."""
    featured = [entry for entry in entries if entry.get("featured")]
    others = [entry for entry in entries if not entry.get("featured")]
    if not featured:
        return [results_table(entries, endpoint), ""]
    lines = ["## Flagship", "", "The zoo's best checkpoints:", "", results_table(featured, endpoint), ""]
    if others:
        lines += ["## All other variants", "", results_table(others, endpoint), ""]
    return lines


def protocol_lines(entries: list[dict]) -> list[str]:
    """One line per distinct (dataset, hardware): where the numbers were measured."""
    seen = {}
    for entry in entries:
        metrics = entry["metrics"]
        if metrics.get("dataset"):
            where = f"{metrics['dataset']}, trained on {metrics.get('hardware', 'hardware not recorded')}"
        else:
            where = "not evaluated here (converted or fine-tuned weights without a recorded run)"
        seen.setdefault(where, []).append(entry["repo_id"])
    return [f"- {where}: {', '.join(f'`{r}`' for r in repos)}" for where, repos in seen.items()]


def build_index_card(entries: list[dict], title: str = "ViX model zoo",
                     endpoint: str = "https://huggingface.co") -> ModelCard:
    datasets = sorted({d for e in entries if (d := dataset_id(e["metrics"], e.get("recipe") or {}))})
    # No library_name / pipeline_tag: this repo holds no model, so the Hub should not offer a widget for it.
    data = ModelCardData(license=LICENSE, tags=["vix", "image-classification", "model-zoo"], datasets=datasets or None)
    pins = [f"- `{e['repo_id']}`: revision `{e['revision']}`" for e in entries if e.get("revision")]
    body = [
        f"# {title}", "",
        f"ViX (*Vision Xformers*, [arXiv 2107.02239]({PAPER_URL})) variants: one ViT in which only the token mixer, "
        "the patch embedding and the position encoding change. Each row links to a repository whose card has the "
        "full configuration, training recipe, protocol and limitations.", "",
        *results_sections(entries, endpoint),
        "Test accuracy is one evaluation of each run's test split (each card says how its checkpoint was chosen); "
        "every number comes from the `metrics.json` of the run that produced the weights, and FLOPs and tokens are "
        "counted on the model at batch 1. Where the numbers were measured:", "",
        *protocol_lines(entries), "",
        *(["Each card's snippets pin the commit they describe:", "", *pins, ""] if pins else []),
        "## Citation", "", "```bibtex", CITATION, "```", "",
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


__all__ = ["build_index_card", "results_table"]
