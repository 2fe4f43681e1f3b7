"""Model cards (model_cards/): metadata round trips through `ModelCard.load`, the body states only numbers a run
produced, architecture numbers are measured, limitations and snippets follow the data. Tiny configs: ~3 s."""

import json
import re

import pytest
from huggingface_hub import ModelCard, ModelCardData

from conftest import tiny_config
from model_cards import build_index_card, build_model_card, inherited_base_model, write_model_card
from model_cards.measure import measure_architecture
from model_cards.rebuild import main as rebuild_main
from modeling_vix import VixForImageClassification, VixImageProcessor


METRICS = {  # the keys training/train.py writes to metrics.json (values from a tiny run)
    "test_loss": 0.4321, "test_accuracy": 0.8125, "test_top5_accuracy": 0.96875, "best_validation_accuracy": 0.84375,
    "best_checkpoint": "/tmp/run/checkpoint-12", "train_runtime": 195.5, "epochs": 3.0, "global_steps": 12,
    "num_parameters": 123456, "peak_memory_mb": 812.4, "hardware": "Test CPU, 2 cores, torch 2 threads",
    "world_size": 1, "precision": "bf16", "dataset": "uoft-cs/cifar10",
    "split_sizes": {"train": 900, "validation": 100, "test": 320}, "skipped_images": {},
}
RECIPE = {"attention_type": "nystrom", "learning_rate": 0.002, "per_device_train_batch_size": 64, "seed": 7,
          "load_best_model_at_end": True, "augmentation": "crop_flip"}
VARIANTS = {
    "vit": dict(attention_type="softmax"),
    "hybrid-vip-rope": dict(attention_type="performer", embedding_type="conv", position_embedding_type="rope_1d"),
    "vil": dict(attention_type="linformer"),
    "vin-rope2d": dict(attention_type="nystrom", position_embedding_type="rope_2d", pooling="mean"),
    "hybrid-fnet": dict(attention_type="fnet", embedding_type="conv"),
    "mixer": dict(attention_type="mixer", position_embedding_type="none"),
}
SHA = "0123456789abcdef0123456789abcdef01234567"


def config_dict(**overrides) -> dict:
    return tiny_config(**overrides).to_dict()


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_card_round_trips_through_modelcard_load(tmp_path, name):
    config = config_dict(**VARIANTS[name])
    card = build_model_card(config, METRICS, RECIPE, f"vix-{name}", repo_id=f"team/vix-{name}", revision=SHA)
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")

    assert loaded.data.to_dict() == card.data.to_dict()
    assert loaded.data.eval_results == card.data.eval_results
    data = loaded.data
    assert (data.library_name, data.pipeline_tag, data.license) == (
        "transformers", "image-classification", "apache-2.0")
    assert data.datasets == ["uoft-cs/cifar10"] and data.model_name == f"vix-{name}"
    assert {f"attention-{config['attention_type']}", f"embedding-{config['embedding_type']}",
            f"position-{config['position_embedding_type']}", "custom_code"} <= set(data.tags)
    assert {(r.metric_type, r.metric_value, r.dataset_split) for r in data.eval_results} == {
        ("accuracy", 0.8125, "test"), ("top_5_accuracy", 0.96875, "test")}
    for section in ("## Model", "## How to use", "## Training procedure", "## Results", "## Limitations",
                    "## Citation"):
        assert section in loaded.text


def test_card_states_measured_numbers_and_nothing_else():
    config = config_dict(attention_type="softmax")
    measured = measure_architecture(config)
    text = build_model_card(config, METRICS, RECIPE).text
    for expected in ("81.25%", "96.88%", "84.38%", "0.4321", "3.3 min", "812 MiB", "bf16", "123,456",
                     "900 train, 100 validation, 320 test", "step 12", f"{measured['num_tokens']:,}", "seed 7"):
        assert expected in text, expected

    # Without measurements, no row, no model-index and no percentage: nothing is filled in by hand.
    bare = build_model_card(config, {}, {})
    assert bare.data.eval_results is None and bare.data.metrics is None
    assert "%" not in bare.text.split("## Model")[1] and "states no accuracy" in bare.text
    for absent in ("training time", "peak memory", "test top-1", "no error bars"):
        assert absent not in bare.text, absent

    partial = {k: v for k, v in METRICS.items() if k not in ("test_top5_accuracy", "train_runtime", "peak_memory_mb")}
    card = build_model_card(config, partial, RECIPE)
    assert [r.metric_type for r in card.data.eval_results] == ["accuracy"]
    assert "top-5 accuracy" not in card.text and "training time" not in card.text and "peak memory" not in card.text
    assert "after each of" not in card.text  # a run from before metrics.json recorded the curve: no curve row


def test_card_shows_the_validation_curve_the_run_recorded():
    config = config_dict(attention_type="nystrom")
    curve = [{"epoch": 1.0, "step": 4, "minutes": 1.1, "accuracy": 0.5}, {"epoch": 2.0, "step": 8, "minutes": 2.2,
                                                                            "accuracy": 0.84375}]
    text = build_model_card(config, {**METRICS, "validation_curve": curve}, RECIPE).text
    assert re.search(r"validation top-1 after each of 2 evaluations\s*\|\s*50\.0, 84\.4 %", text)


def test_card_states_the_precision_with_why_it_ran_when_the_run_recorded_it():
    config = config_dict(attention_type="softmax")
    reason = "auto: CPU has avx512_bf16, torch capability AVX512"
    recorded = {**METRICS, "precision_requested": "auto", "precision_reason": reason, "cpu_capability": "AVX512",
                "cpu_native_bf16": True}
    assert f"bf16 ({reason})" in build_model_card(config, recorded, RECIPE).text
    old = build_model_card(config, METRICS, RECIPE).text  # metrics.json from before --precision: as it was
    assert "auto:" not in old and re.search(r"precision\s*\|\s*bf16\s*\|", old)


def test_forward_flops_match_a_hand_count_including_attention():
    """Softmax, linear patches: counted FLOPs equal the matmul count, so the fused attention kernel is counted."""
    config = config_dict(attention_type="softmax", embedding_type="linear", position_embedding_type="learned")
    measured = measure_architecture(config)
    n_patches, hidden, layers, mlp = 64, 32, 2, 64
    tokens = n_patches + 1
    patch_embedding = 2 * n_patches * (3 * 4 * 4) * hidden
    per_layer = 2 * tokens * hidden * 4 * hidden + 2 * 2 * tokens * tokens * hidden + 2 * 2 * tokens * hidden * mlp
    assert measured["num_tokens"] == tokens and measured["grid_size"] == [8, 8]
    assert measured["forward_flops"] == patch_embedding + layers * per_layer + 2 * hidden * 10
    assert f"{measured['forward_flops'] / 1e6:.3g} MFLOPs" in build_model_card(config, METRICS, RECIPE).text


def test_limitations_follow_the_config_and_the_data(tmp_path):
    linformer = build_model_card(config_dict(attention_type="linformer"), METRICS, RECIPE).text
    assert "runs at 32×32 input only" in linformer and "65 tokens" in linformer
    rope = build_model_card(config_dict(attention_type="nystrom", position_embedding_type="rope_2d"), METRICS,
                            RECIPE).text
    assert "any size the patch size (4) divides" in rope and "runs at 32×32 input only" not in rope
    fnet = build_model_card(config_dict(attention_type="fnet"), METRICS, RECIPE).text
    assert "has no attention map" in fnet and "Fourier transforms are not counted" in fnet

    local = tmp_path / "cifar10"
    local.mkdir()
    (local / "README.md").write_text("# CIFAR-10 (offline copy, JPEG)\n\nJPEG re-encodings of the originals.\n")
    recipe = {**RECIPE, "dataset_name": str(local), "dataset_hub_id": "uoft-cs/cifar10"}
    card = build_model_card(config_dict(), METRICS, recipe)
    assert card.data.datasets == ["uoft-cs/cifar10"]
    limitations = card.text.split("## Limitations")[1]
    assert "local copy of `uoft-cs/cifar10`" in limitations and "CIFAR-10 (offline copy, JPEG)" in limitations
    assert "JPEG re-encodings" in limitations
    hub_data = build_model_card(config_dict(), METRICS, {**RECIPE, "dataset_name": "uoft-cs/cifar10"}).text
    assert "local copy" not in hub_data


def test_base_model_from_fine_tune_recipe(tmp_path):
    fine_tuned = build_model_card(config_dict(), METRICS,
                                  {**RECIPE, "model_name_or_path": "google/vit-base-patch16-224"})
    assert fine_tuned.data.base_model == "google/vit-base-patch16-224"
    local_parent = build_model_card(config_dict(), METRICS, {**RECIPE, "model_name_or_path": str(tmp_path)})
    assert local_parent.data.base_model is None and f"Fine-tuned from `{tmp_path}`" in local_parent.text


def test_fine_tune_of_a_converted_folder_names_the_converted_hub_model(tmp_path):
    """A local parent does not name a Hub model, but the Hub model it was converted (or fine-tuned) from does:
    training records it in metrics.json, and the card states it."""
    converted = tmp_path / "levin-128S"
    converted.mkdir()
    assert inherited_base_model(str(converted)) is None  # a local folder with no record names nothing
    (converted / "conversion.json").write_text(json.dumps({"source": "x", "base_model": "facebook/levit-128S"}))
    assert inherited_base_model(str(converted)) == "facebook/levit-128S"
    assert inherited_base_model("microsoft/cvt-13") == "microsoft/cvt-13"
    fine_tuned = tmp_path / "fine-tuned"
    fine_tuned.mkdir()
    (fine_tuned / "metrics.json").write_text(json.dumps({"base_model": "facebook/levit-128S"}))
    assert inherited_base_model(str(fine_tuned)) == "facebook/levit-128S"  # and again for a fine-tune of that

    card = build_model_card(config_dict(), {**METRICS, "base_model": inherited_base_model(str(converted))},
                            {**RECIPE, "model_name_or_path": str(converted)})
    assert card.data.base_model == "facebook/levit-128S" and "Fine-tuned from `facebook/levit-128S`" in card.text


def test_converted_folders_get_the_same_card_builder_and_tags(tmp_path):
    """A converter's card is this builder's card (one layout, one tag vocabulary), stated from conversion.json,
    so rebuilding or publishing the folder keeps its source, base model and measured parity."""
    import torch

    import conversion.common
    from conversion.common import ConversionResult, write_folder

    assert not hasattr(conversion.common, "build_card")  # no second card builder
    config = tiny_config(attention_type="nystrom")
    result = ConversionResult(model=VixForImageClassification(config).eval(), processor=VixImageProcessor())
    result.parity.append({"reference": "transformers ViTForImageClassification", "attention_type": "nystrom",
                          "max_abs_logit_diff": 0.0123, "reference_logit_scale": 3.5, "top1_agreement": 0.75,
                          "inputs": "4 real images (test)", "expected_exact": False})
    result.notes.append("Nystrom's residual conv starts at zero.")
    folder = write_folder(result, tmp_path / "vix-vin-converted", source="transformers ViTForImageClassification (vit)",
                          base_model="google/vit-base-patch16-224", check_pixels=torch.randn(1, 3, 32, 32))
    text = (folder / "README.md").read_text()
    card = ModelCard.load(folder / "README.md")
    trained = build_model_card(config.to_dict(), METRICS, RECIPE)
    assert card.data.tags == trained.data.tags + ["converted"]
    assert "attention-nystrom" in card.data.tags and "nystrom" not in card.data.tags
    assert card.data.base_model == "google/vit-base-patch16-224" and card.data.model_name == "vix-vin"
    for section in ("## Model", "## How to use", "## Conversion", "## Training procedure", "## Limitations"):
        assert section in text, section
    row = "| transformers ViTForImageClassification | `nystrom` | 1.23e-02 | 3.50e+00 | 75% | 4 real images (test) |"
    assert row in text
    assert "Nystrom's residual conv starts at zero." in text and "Converted from **transformers" in text
    assert str(tmp_path) not in text  # no local paths in a folder meant for the Hub

    (folder / "README.md").write_text("stale")
    assert rebuild_main(["--folders", str(folder)]) == 0
    assert (folder / "README.md").read_text() == text  # rebuilt from the folder's own files: the same card


def test_usage_snippets_compile_and_pin_the_revision():
    config = config_dict()
    pinned = build_model_card(config, METRICS, RECIPE, repo_id="team/vix-vin", revision=SHA).text
    blocks = python_blocks(pinned)
    assert len(blocks) == 3
    for block in blocks:
        compile(block, "<card snippet>", "exec")
    calls = re.findall(r"(?:pipeline|from_pretrained)\((.*?)trust_remote_code=True", pinned, flags=re.S)
    assert len(calls) == 5 and all(
        f'"team/vix-vin", revision="{SHA}"' in call or f'model="team/vix-vin", revision="{SHA}"' in call
        for call in calls
    )
    unpinned = build_model_card(config, METRICS, RECIPE, repo_id="team/vix-vin").text
    assert 'revision="' not in "".join(python_blocks(unpinned)) and 'revision="<commit hash>"' in unpinned


def test_write_model_card_signature_and_refresh_command(tmp_path):
    folder = tmp_path / "final"
    VixForImageClassification(tiny_config(attention_type="performer")).save_pretrained(folder)
    VixImageProcessor().save_pretrained(folder)
    (folder / "metrics.json").write_text(json.dumps(METRICS))
    (folder / "recipe.yaml").write_text("attention_type: performer\nseed: 7\n")

    path = write_model_card(folder, METRICS, {"attention_type": "performer", "seed": 7})  # training/train.py's call
    written = path.read_text()
    assert "ViP" in written and "weights (safetensors)" in written
    path.write_text("stale")
    assert rebuild_main(["--folders", str(folder)]) == 0
    assert (folder / "README.md").read_text() == written  # rebuilt from the folder's own files, same card


def test_index_card_lists_variants_side_by_side(tmp_path):
    entries = []
    for i, name in enumerate(("vit", "vil")):
        config = config_dict(**VARIANTS[name])
        metrics = {**METRICS, "test_accuracy": 0.5 + i / 10}
        entries.append({"repo_id": f"team/vix-{name}", "revision": SHA, "config": config, "metrics": metrics,
                        "recipe": RECIPE, "measured": measure_architecture(config)})
    del entries[1]["metrics"]["test_top5_accuracy"]
    card = build_index_card(entries, endpoint="https://hub.example")
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    assert loaded.data.datasets == ["uoft-cs/cifar10"] and isinstance(loaded.data, ModelCardData)
    rows = [line for line in loaded.text.splitlines() if line.startswith("| [team/vix-")]
    assert len(rows) == 2
    assert "[team/vix-vit](https://hub.example/team/vix-vit)" in rows[0] and "50.00%" in rows[0] and "96.88%" in rows[0]
    assert "| ViL |" in rows[1] and "60.00%" in rows[1] and "| – |" in rows[1]  # no top-5 measured: a dash
    assert "## Flagship" not in loaded.text  # nothing featured: one table

    entries[1]["featured"] = True  # published with --featured: first, in a table of its own
    text = build_index_card(entries, endpoint="https://hub.example").text
    flagship, others = text.split("## Flagship")[1].split("## All other variants")
    assert "[team/vix-vil]" in flagship and "[team/vix-vit]" not in flagship
    assert "[team/vix-vit]" in others and "[team/vix-vil]" not in others


BACKBONE_CARD_CASES = {  # model_type -> (tiny config builder, attention type, paper name, position, pooling)
    "vix_cct": ("tiny_cct_config", "nystrom", "CCN", "learned", "sequence"),
    "vix_pit": ("tiny_pit_config", "performer", "PiP", "learned", "cls"),
    "vix_cvt": ("tiny_cvt_config", "nystrom", "CvN", "none", "cls"),
    "vix_levit": ("tiny_levit_config", "performer", "LeViP", "none", "mean"),
}


@pytest.mark.parametrize("model_type", list(BACKBONE_CARD_CASES))
def test_every_backbone_gets_its_paper_name_tags_and_stage_sizes(model_type):
    import conftest

    builder, attention, name, position, pooling = BACKBONE_CARD_CASES[model_type]
    options = {"attention_bias": False} if model_type == "vix_levit" else {}
    config = getattr(conftest, builder)(attention_type=attention, **options)
    assert config.model_type == model_type
    card = build_model_card(config.to_dict(), METRICS, RECIPE)
    tag = {"vix_cct": "cct", "vix_pit": "pit", "vix_cvt": "cvt", "vix_levit": "levit"}[model_type]
    assert {f"backbone-{tag}", f"attention-{attention}", f"position-{position}"} <= set(card.data.tags)
    assert f"| paper name | {name} |" in card.text and f"| pooling | `{pooling}` |" in card.text
    if model_type != "vix_cct":
        assert "stages: hidden / depth / heads / MLP" in card.text and "in the first stage" in card.text


def test_levit_attention_bias_is_its_position_information():
    from conftest import tiny_levit_config

    card = build_model_card(tiny_levit_config(attention_type="nystrom").to_dict(), METRICS, RECIPE)
    assert "position-attention_bias" in card.data.tags and "learned attention bias per head" in card.text
