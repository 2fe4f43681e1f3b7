"""The training job (training/): main job end to end, resume, recipes, data detection and bad data, augmentation,
the results script. Tiny data and models: a few seconds each."""

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import TrainerCallback

from training import augment
from training.data import DataArguments, LabelError, UnreadableImageError, detect_columns, load_splits
from training.runs import RunTotals
from training.train import main, parse_args, recipe_dict, write_recipe


ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = ROOT / "training" / "recipes"
BASES = RECIPES_DIR / "bases"  # shared protocols, not recipes to run on their own
RECIPES = sorted(path for path in RECIPES_DIR.rglob("*.yaml") if BASES not in path.parents)
TINY = ["--hidden_size", "16", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "32",
        "--conv_stem_channels", "4", "8", "--nystrom_residual_conv_kernel", "3", "--image_size", "16",
        "--disable_tqdm", "true", "--logging_steps", "1"]


def test_main_job_on_digits_end_to_end_beats_chance(tmp_path, capsys, monkeypatch):
    """The README's main command, shrunk: a tiny hybrid ViN on real digits, selected on validation, tested once."""
    out = tmp_path / "run"
    metrics = main(["--output_dir", str(out), "--hidden_size", "32", "--num_hidden_layers", "2", "--image_size", "16",
                    "--conv_stem_channels", "8", "16", "--num_train_epochs", "4", "--learning_rate", "4e-3",
                    "--per_device_train_batch_size", "32", "--disable_tqdm", "true"])
    final = out / "final"
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "modeling_vix.py",
                 "configuration_vix.py", "metrics.json", "recipe.yaml", "README.md"):
        assert (final / name).exists(), name
    config = json.loads((final / "config.json").read_text())
    assert "AutoModelForImageClassification" in config["auto_map"]
    saved = json.loads((final / "metrics.json").read_text())
    assert saved["split_sizes"] == {"train": 1293, "validation": 144, "test": 360}
    assert saved["test_accuracy"] == metrics["test_accuracy"] > 0.5  # chance is 0.1
    assert saved["test_top5_accuracy"] >= saved["test_accuracy"]
    assert saved["best_validation_accuracy"] is not None and saved["num_parameters"] > 0

    from huggingface_hub import ModelCard

    card = ModelCard.load(final / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "image-classification"
    assert {"vix", "attention-nystrom", "embedding-conv", "position-rope_2d"} <= set(card.data.tags)
    assert card.data.eval_results[0].metric_value == pytest.approx(saved["test_accuracy"])
    assert f"{100 * saved['test_accuracy']:.2f}%" in card.text
    printed = capsys.readouterr().out
    assert str(final.resolve()) in printed and "README.md" in printed
    # docs/training.md's "What a run writes" names every file of final/ (the modeling files as a group)
    training_section = (ROOT / "docs" / "training.md").read_text().split("## What a run writes", 1)[1].split("\n## ")[0]
    for path in final.iterdir():
        if not path.name.endswith("_vix.py"):
            assert f"`{path.name}`" in training_section, path.name

    from transformers import pipeline

    prompts = []  # transformers asks "Do you wish to run the custom code? [y/N]" through input()
    monkeypatch.setattr("builtins.input", lambda prompt="": prompts.append(prompt) or "n")
    classify = pipeline("image-classification", model=str(final))
    assert classify(Image.new("L", (8, 8)))[0]["label"] in [str(d) for d in range(10)]
    assert prompts == []  # the package is imported: nothing may ask about remote code


class Interrupt(TrainerCallback):
    """Kills the run (an exception) after step `at`, like a job killed mid-epoch."""

    def __init__(self, at):
        self.at = at

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at:
            raise KeyboardInterrupt("simulated kill")


def checkpoint_totals(checkpoint: Path) -> dict:
    """What RunTotals stored in a checkpoint's trainer_state.json."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    return state["stateful_callbacks"][RunTotals.__name__]["attributes"]


def test_resume_after_a_kill_during_a_save_matches_uninterrupted_and_reports_the_whole_run(tmp_path):
    # 96 training rows, batch 16: 6 steps per epoch; 12 steps cross an epoch boundary with augmentation on.
    common = ["--max_train_samples", "96", "--max_eval_samples", "32", "--per_device_train_batch_size", "16",
              "--max_steps", "12", "--save_strategy", "steps", "--save_steps", "4", "--eval_strategy", "steps",
              "--eval_steps", "4", "--augmentation", "randaugment", "--load_best_model_at_end", "false", *TINY]
    full = main(["--output_dir", str(tmp_path / "full"), *common])
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        main(["--output_dir", str(killed), *common], callbacks=[Interrupt(at=9)])
    assert not (killed / "final").exists()
    # The kill hit while checkpoint-8 was being saved: its weights are cut short and trainer_state.json (the
    # Trainer's last write) is missing. "last" must mean checkpoint-4, the last complete one.
    (killed / "checkpoint-8" / "trainer_state.json").unlink()
    weights = killed / "checkpoint-8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    first_session = checkpoint_totals(killed / "checkpoint-4")

    resumed = main(["--output_dir", str(killed), *common, "--resume_from_checkpoint", "last"])
    assert resumed["global_steps"] == full["global_steps"] == 12
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)  # bit-identical
    assert resumed["test_accuracy"] == full["test_accuracy"] and resumed["test_loss"] == full["test_loss"]
    # metrics describe the whole run, not the 8 resumed steps: loss over all 12 steps (logged every step, so
    # exact), time including the first session's (up to its checkpoint)
    assert resumed["train_loss"] == pytest.approx(full["train_loss"], rel=1e-6)
    assert resumed["train_runtime"] > first_session["train_seconds"] > 0
    saved = json.loads((killed / "final" / "metrics.json").read_text())
    assert saved["train_loss"] == resumed["train_loss"] and saved["train_runtime"] == resumed["train_runtime"]

    # resumed at the last step: nothing left to train, and still the whole run's numbers (not a loss of 0.0)
    again = main(["--output_dir", str(tmp_path / "full"), *common, "--resume_from_checkpoint", "last"])
    assert again["global_steps"] == 12
    assert again["train_loss"] == pytest.approx(full["train_loss"], rel=1e-6)
    assert again["train_runtime"] >= checkpoint_totals(tmp_path / "full" / "checkpoint-12")["train_seconds"] > 0


def test_muon_trains_and_a_resumed_run_matches_the_uninterrupted_one(tmp_path):
    common = ["--max_train_samples", "64", "--max_eval_samples", "32", "--per_device_train_batch_size", "16",
              "--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--eval_strategy", "steps",
              "--eval_steps", "4", "--load_best_model_at_end", "false", "--muon", "true", *TINY]
    full = main(["--output_dir", str(tmp_path / "full"), *common])
    with pytest.raises(KeyboardInterrupt):
        main(["--output_dir", str(tmp_path / "killed"), *common], callbacks=[Interrupt(at=6)])
    resumed = main(["--output_dir", str(tmp_path / "killed"), *common, "--resume_from_checkpoint", "last"])
    assert resumed["global_steps"] == full["global_steps"] == 8
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)  # the optimizer state came back whole
    saved = torch.load(tmp_path / "full" / "checkpoint-4" / "optimizer.pt", weights_only=True)
    assert set(saved) == {"muon", "adamw"} and saved["muon"]["state"]
    recipe = (tmp_path / "full" / "final" / "recipe.yaml").read_text()
    assert "muon: true" in recipe


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_recipe_file_round_trip_and_flags_override_it(tmp_path, suffix):
    recipe = {"attention_type": "performer", "position_embedding_type": "rope_1d", "hidden_size": 48,
              "conv_stem_channels": [8, 16], "augmentation": "crop_flip", "learning_rate": "1.0e-3",
              "num_train_epochs": 3, "bf16": True, "use_cpu": True, "output_dir": str(tmp_path / "out")}
    path = tmp_path / f"recipe{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(recipe))
    else:
        write_recipe(path, recipe)
    settings = parse_args([str(path), "--num_train_epochs", "5"])
    model, training = settings.model_settings, settings.training
    assert (model["attention_type"], model["position_embedding_type"]) == ("performer", "rope_1d")
    assert model["hidden_size"] == 48 and model["conv_stem_channels"] == [8, 16]
    assert model["embedding_type"] == "conv"  # the quick start's where the recipe says nothing
    assert settings.data.augmentation == "crop_flip"
    assert training.learning_rate == 1e-3 and training.bf16 is True
    assert training.num_train_epochs == 5  # the flag wins over the recipe
    assert training.load_best_model_at_end is True  # the job's own default

    resolved = recipe_dict(settings)
    write_recipe(tmp_path / "resolved.yaml", resolved)
    again = parse_args([str(tmp_path / "resolved.yaml")])
    assert again.model_settings == settings.model_settings
    assert asdict(again.job) == asdict(settings.job) and asdict(again.data) == asdict(settings.data)
    assert again.training.to_dict() == training.to_dict()


def test_recipe_unknown_key_is_an_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("attention_typo: nystrom\n")
    with pytest.raises(ValueError, match="attention_typo"):
        parse_args([str(path)])


@pytest.mark.parametrize("recipe", RECIPES, ids=[str(p.relative_to(RECIPES_DIR)) for p in RECIPES])
def test_shipped_recipes_parse_and_build_a_valid_config(recipe):
    from modeling_vix import BACKBONE_CONFIGS

    cpu = [] if torch.cuda.is_available() else ["--use_cpu", "true"]  # bf16 recipes need it without a GPU
    settings = parse_args([str(recipe), *cpu])
    BACKBONE_CONFIGS[settings.job.model_type](**settings.model_settings, num_labels=10)
    assert settings.training.metric_for_best_model == "accuracy" and settings.training.load_best_model_at_end


def test_recipe_sets_cover_the_paper_variants():
    paper = {p.stem for p in (RECIPES_DIR / "paper").glob("*.yaml")}
    for mixer in ("vit", "vip", "vil", "vin", "fnet", "mixer"):
        assert {f"cifar10_{mixer}", f"cifar10_hybrid_{mixer}"} <= paper
    for mixer in ("vit", "vip", "vil", "vin"):
        assert {f"cifar10_{mixer}_rope", f"cifar10_hybrid_{mixer}_rope"} <= paper
    assert {"cifar10_cct", "cifar10_ccn", "cifar10_ccp"} <= paper  # the paper's CCT X-formers
    cpu = {p.stem for p in (RECIPES_DIR / "cpu").glob("*.yaml")}
    backbone_rows = ("cct", "ccn", "ccp", "pit", "pin", "pip", "cvt", "cvn", "cvp", "levit", "levin", "levip")
    assert {f"cifar10_{name}" for name in backbone_rows} <= cpu
    assert (RECIPES_DIR / "modern_cifar10.yaml").exists()
    assert len(list((RECIPES_DIR / "cpu").glob("*.yaml"))) >= 6


# --- data ---------------------------------------------------------------------------------------------

def write_image_folder(root: Path, corrupt: bool, modes=("RGB", "L", "RGBA")):
    rng = np.random.default_rng(0)
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(6):
            array = rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(array).convert(modes[i % len(modes)]).save(root / label / f"{i}.png")
    if corrupt:
        (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def test_image_folder_with_a_corrupt_file_is_a_clear_error_or_a_counted_skip(tmp_path):
    write_image_folder(tmp_path / "images", corrupt=True)
    args = DataArguments(dataset_name=str(tmp_path / "images"))
    with pytest.raises(UnreadableImageError, match=r"broken\.png.*--skip_unreadable_images"):
        load_splits(args, seed=0)
    args.skip_unreadable_images = True
    splits, info = load_splits(args, seed=0)
    assert info["skipped_images"] == {"train": 1}
    assert info["labels"] == ["cat", "dog"] and sum(len(s) for s in splits.values()) == 12


def test_fine_tune_from_checkpoint_on_image_folder_with_new_labels(tmp_path):
    """Grayscale/RGBA files are converted; a 10-class digits checkpoint fine-tunes on a 2-class folder."""
    write_image_folder(tmp_path / "images", corrupt=False)
    base = tmp_path / "base"
    main(["--output_dir", str(base), "--max_train_samples", "32", "--max_eval_samples", "16", "--max_steps", "2",
          *TINY])
    metrics = main(["--output_dir", str(tmp_path / "ft"), "--model_name_or_path", str(base / "final"),
                    "--ignore_mismatched_sizes", "true", "--dataset_name", str(tmp_path / "images"),
                    "--validation_split_size", "0.25", "--test_split_size", "0.25", "--max_steps", "2",
                    "--per_device_train_batch_size", "4", "--disable_tqdm", "true"])
    config = json.loads((tmp_path / "ft" / "final" / "config.json").read_text())
    assert config["id2label"] == {"0": "cat", "1": "dog"} and config["hidden_size"] == 16
    assert metrics["split_sizes"] == {"train": 6, "validation": 3, "test": 3}


def test_column_detection_and_explicit_columns():
    from datasets import ClassLabel, Dataset, Features, Value
    from datasets import Image as ImageFeature

    images = [Image.new("RGB", (4, 4))] * 4
    cifar100_like = Dataset.from_dict({"img": images, "fine_label": [0, 1, 2, 3], "coarse_label": [0, 0, 1, 1]})
    assert detect_columns(cifar100_like) == ("img", "fine_label")
    assert detect_columns(cifar100_like, label_column="coarse_label") == ("img", "coarse_label")
    odd = Dataset.from_dict(
        {"photo": images, "kind": [0, 1, 0, 1], "note": ["a"] * 4},
        features=Features({"photo": ImageFeature(), "kind": ClassLabel(names=["x", "y"]), "note": Value("string")}),
    )
    assert detect_columns(odd) == ("photo", "kind")  # by feature type
    with pytest.raises(ValueError, match="--image_column 'picture' is not a column"):
        detect_columns(odd, image_column="picture")
    no_labels = Dataset.from_dict({"image": images, "note": ["a"] * 4})
    with pytest.raises(ValueError, match="pass --label_column"):
        detect_columns(no_labels)


def test_local_hub_layout_dataset_with_string_labels(tmp_path):
    """A local folder in Hub layout (parquet train/test, `img` + string labels); validation carved from train."""
    from datasets import Dataset

    rng = np.random.default_rng(0)
    make = lambda n: Dataset.from_dict({  # noqa: E731
        "img": [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in range(n)],
        "labels": ["b", "a"] * (n // 2),
    })
    data_dir = tmp_path / "hub_layout" / "data"
    data_dir.mkdir(parents=True)
    make(20).to_parquet(data_dir / "train-00000-of-00001.parquet")
    make(6).to_parquet(data_dir / "test-00000-of-00001.parquet")
    splits, info = load_splits(DataArguments(dataset_name=str(tmp_path / "hub_layout")), seed=0)
    assert (info["image_column"], info["label_column"], info["labels"]) == ("img", "labels", ["a", "b"])
    assert info["carved_splits"] == ["validation"]
    assert {k: len(v) for k, v in splits.items()} == {"train": 18, "validation": 2, "test": 6}
    # seeded: the same carve twice
    again, _ = load_splits(DataArguments(dataset_name=str(tmp_path / "hub_layout")), seed=0)
    assert again["validation"]["__vix_row__"] == splits["validation"]["__vix_row__"]


def test_offline_cifar10_copy_loads_in_hub_layout():
    cifar = ROOT.parent / "shared" / "data" / "cifar10"
    if not cifar.exists():
        pytest.skip("no offline CIFAR-10 copy")
    splits, info = load_splits(
        DataArguments(dataset_name=str(cifar), max_train_samples=20, max_eval_samples=10, check_images=False), seed=0
    )
    assert (info["image_column"], info["label_column"]) == ("img", "label") and len(info["labels"]) == 10
    assert {k: len(v) for k, v in splits.items()} == {"train": 20, "validation": 10, "test": 10}


def write_hub_layout(root: Path, splits: dict) -> Path:
    """A local dataset in Hub layout: one parquet file per split, from {split: {column: values}}."""
    from datasets import Dataset

    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    for name, columns in splits.items():
        Dataset.from_dict(columns).to_parquet(data_dir / f"{name}-00000-of-00001.parquet")
    return root


def test_labels_outside_the_label_set_are_a_one_line_error_naming_the_split(tmp_path, capsys):
    """The model no longer checks labels every step (a host sync); the job checks them once, where data enters."""
    images = lambda n: [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(n)]  # noqa: E731
    root = write_hub_layout(tmp_path / "bad", {
        "train": {"image": images(8), "label": [0, 1, 2, 0, 1, 2, 0, -100]},  # -100: ignored, allowed
        "test": {"image": images(4), "label": [0, 1, -1, 2]},  # -1: unlabelled, not allowed
    })
    with pytest.raises(LabelError, match=r"Split 'test' has labels outside \[0, 3\) in column 'label': -1"):
        load_splits(DataArguments(dataset_name=str(root)), seed=0)
    with pytest.raises(SystemExit) as exit_info:
        main(["--dataset_name", str(root), "--output_dir", str(tmp_path / "out"), *TINY])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: Split 'test' has labels outside")

    from datasets import ClassLabel, Dataset, DatasetDict, Features

    from training.data import check_labels

    # datasets' ClassLabel takes -1 ("no label"), which the loss cannot
    typed = Dataset.from_dict({"label": [0, 1, -1]}, features=Features({"label": ClassLabel(names=["a", "b"])}))
    with pytest.raises(LabelError, match=r"Split 'validation' .*\[0, 2\).*: -1"):
        check_labels(DatasetDict(validation=typed), "label", 2)


def gradient(mode: str) -> Image.Image:
    """A 0-to-full-scale horizontal gradient, 32x32, in an 8-bit, 16-bit or float PIL mode."""
    fraction = np.tile(np.linspace(0, 1, 32), (32, 1))
    if mode == "L":
        return Image.fromarray(np.rint(fraction * 255).astype(np.uint8))
    if mode == "F":
        return Image.fromarray(fraction.astype(np.float32))
    array = np.rint(fraction * 65535)
    return Image.fromarray(array.astype(np.uint16) if mode == "I;16" else array.astype(np.int32))


def test_16_bit_and_float_training_images_keep_their_scale(tmp_path):
    """Training data goes through `to_8bit` as well (also for a fine-tuned checkpoint's own processor): a 16-bit
    or float gradient gives the pixels of the same 8-bit gradient, where it used to clip to white or black."""
    from transformers.image_processing_backends import PilBackend
    from transformers.image_utils import PILImageResampling

    from modeling_vix import VixImageProcessor
    from training.train import make_transform

    class CheckpointProcessor(PilBackend):  # a processor that knows nothing of 16-bit images, as a ViT checkpoint's
        resample = PILImageResampling.BILINEAR
        image_mean = image_std = [0.5, 0.5, 0.5]
        size = {"height": 16, "width": 16}
        do_convert_rgb = do_resize = do_rescale = do_normalize = True

    for processor in (VixImageProcessor(size={"height": 16, "width": 16}), CheckpointProcessor()):
        transform = make_transform(processor, "image", "label")
        modes = ("L", "I;16", "I", "F")
        assert [gradient(mode).mode for mode in modes] == list(modes)
        pixels = {mode: transform({"image": [gradient(mode)], "label": [0]})["pixel_values"] for mode in modes}
        for mode in ("I;16", "I", "F"):
            torch.testing.assert_close(pixels[mode], pixels["L"], rtol=0, atol=1e-6)
    # out-of-range float images are found before training, like unreadable files
    bright = tmp_path / "images"
    for label in ("a", "b"):
        (bright / label).mkdir(parents=True)
        for i in range(3):
            gradient("L").save(bright / label / f"{i}.png")
    Image.fromarray(np.full((8, 8), 2.5, dtype=np.float32)).save(bright / "b" / "hdr.tiff")
    with pytest.raises(UnreadableImageError, match=r"hdr\.tiff.*ValueError.*\[0, 1\]"):
        load_splits(DataArguments(dataset_name=str(bright)), seed=0)


# --- augmentation --------------------------------------------------------------------------------------

@pytest.mark.parametrize("policy", augment.POLICIES)
def test_augmentation_is_seeded_per_sample_and_keeps_shape(policy):
    images = torch.rand(4, 3, 16, 16)
    augmenter = augment.Augmenter(policy, seed=1)
    a, b = augmenter(images, [0, 1, 2, 3]), augmenter(images, [0, 1, 2, 3])
    assert a.shape == images.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    # a sample's augmentation does not depend on its batch
    torch.testing.assert_close(augmenter(images[2:3], [2])[0], a[2])
    if policy != "none":
        augmenter.epoch = 1
        assert not torch.equal(augmenter(images, [0, 1, 2, 3]), a)


@pytest.mark.parametrize("size", [12, 24])  # the images are 12x12: unresized, resized
def test_preloaded_images_give_the_per_item_samples(tmp_path, size):
    """--preload_images decodes once; its items equal the per-item set_transform path's (augmented with the same
    per-sample seeds at a later epoch, and not augmented for evaluation): exactly at the images' own size, up to
    8-bit rounding of the resized pixels otherwise."""
    from modeling_vix import VixImageProcessor
    from training.preload import PreloadedImages
    from training.train import make_transform

    write_image_folder(tmp_path / "images", corrupt=False)
    splits, info = load_splits(DataArguments(dataset_name=str(tmp_path / "images")), seed=0)
    processor = VixImageProcessor(size={"height": size, "width": size})
    augmenter = augment.Augmenter("crop_flip", seed=3)
    augmenter.epoch = 2
    columns = info["image_column"], info["label_column"]
    for name, split_augmenter in (("train", augmenter), ("test", None)):
        preloaded = PreloadedImages(splits[name], processor, *columns, augmenter=split_augmenter, chunk_size=3)
        splits[name].set_transform(make_transform(processor, *columns, split_augmenter))
        assert len(preloaded) == len(splits[name])
        for index in range(len(preloaded)):
            expected, item = splits[name][index], preloaded[index]
            assert item["pixel_values"].shape == (3, size, size)
            tolerance = 1e-5 if size == 12 else 1.01 / 255 / min(processor.image_std)
            torch.testing.assert_close(item["pixel_values"], expected["pixel_values"], atol=tolerance, rtol=0)
            assert int(item["labels"]) == expected["labels"]


def test_randaugment_ops_are_valid_images():
    image = torch.rand(3, 16, 16)
    for name, op in augment.RANDAUGMENT_OPS.items():
        out = op(image, 0.9, torch.Generator().manual_seed(0))
        assert out.shape == image.shape and torch.isfinite(out).all(), name
        assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6, name


# --- results script ------------------------------------------------------------------------------------

def test_validation_curve_keeps_each_evaluation_and_shares_the_runtime_out_by_step():
    from training.train import validation_curve

    history = [{"loss": 2.0, "epoch": 0.5, "step": 5}, {"eval_accuracy": 0.5, "epoch": 1.0, "step": 10},
               {"loss": 1.5, "epoch": 1.5, "step": 15}, {"eval_accuracy": 0.625, "epoch": 2.0, "step": 20},
               {"train_runtime": 600.0, "epoch": 2.0, "step": 20}]
    assert validation_curve(history, train_runtime=600.0, global_steps=20) == [
        {"epoch": 1.0, "step": 10, "minutes": 5.0, "accuracy": 0.5},
        {"epoch": 2.0, "step": 20, "minutes": 10.0, "accuracy": 0.625}]


def test_results_script_on_a_tiny_recipe(tmp_path):
    from training import results

    recipe = tmp_path / "tiny_digits.yaml"
    write_recipe(recipe, {"attention_type": "fnet", "position_embedding_type": "learned", "hidden_size": 16,
                          "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32,
                          "image_size": 16, "conv_stem_channels": [4, 8], "max_train_samples": 32,
                          "max_eval_samples": 16, "max_steps": 2, "disable_tqdm": True})
    rows = results.main([str(recipe), "--output_dir", str(tmp_path / "results"), "--", "--logging_steps", "1"])
    assert len(rows) == 1 and rows[0]["variant"] == "Hybrid FNet"
    assert (rows[0]["model_type"], rows[0]["attention_type"]) == ("vix", "fnet")  # from the run's config.json
    table = (tmp_path / "results" / "results.md").read_text()
    assert "| tiny_digits | Hybrid FNet |" in table and "MiB" in table
    assert f"python -m training.results {recipe} --output_dir" in table.splitlines()[0]  # how to reproduce it
    saved_rows = json.loads((tmp_path / "results" / "results.json").read_text())
    assert saved_rows[0]["test_accuracy"] == rows[0]["test_accuracy"]
    assert (tmp_path / "results" / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert saved_rows[0]["seed"] == 0  # from the run's recipe.yaml (train.py's default)
    curve = saved_rows[0]["validation_curve"]  # from metrics.json: one point per epoch (1 step of 32 samples each)
    assert [point["step"] for point in curve] == [1, 2]
    assert curve[-1]["minutes"] == pytest.approx(rows[0]["train_runtime"] / 60, abs=0.01)
    assert all(0 <= point["accuracy"] <= 1 for point in curve)
    assert (tmp_path / "results" / "results_curves.png").read_bytes()[:4] == b"\x89PNG"
    # --skip_existing reuses the run
    again = results.main([str(recipe), "--output_dir", str(tmp_path / "results"), "--skip_existing"])
    assert again[0]["test_accuracy"] == rows[0]["test_accuracy"]


def test_time_to_accuracy_reads_the_first_evaluation_at_each_threshold_and_adds_only_reached_columns():
    from training import results

    curve = [{"minutes": 2.0, "accuracy": 0.79}, {"minutes": 4.0, "accuracy": 0.851},
             {"minutes": 6.0, "accuracy": 0.84}, {"minutes": 8.0, "accuracy": 0.86}]
    assert results.minutes_to_accuracy(curve, 0.85) == 4.0  # the first reach, not the last or the best
    assert results.minutes_to_accuracy(curve, 0.79) == 2.0  # reached exactly
    assert results.minutes_to_accuracy(curve, 0.87) is None and results.minutes_to_accuracy(None, 0.5) is None
    rows = [{"recipe": "a", "test_accuracy": 0.86, "validation_curve": curve},
            {"recipe": "b", "test_accuracy": 0.80, "test_flip_accuracy": 0.81}]  # no curve: an older row
    results.add_time_to_accuracy(rows, (0.80, 0.85, 0.87))
    assert (rows[0]["minutes_to_80"], rows[0]["minutes_to_85"], rows[0]["minutes_to_87"]) == (4.0, 4.0, None)
    assert rows[1]["minutes_to_80"] is None
    header, _, first, second = results.markdown_table(rows, (0.80, 0.85, 0.87)).splitlines()
    names = [cell.strip() for cell in header.strip("|").split("|")]
    # the flip column when a row has it, 80% and 85% reached by some run, 87% by none: no column
    assert names[4:8] == ["test top-5", "test top-1 flip-avg", "val 80% at", "val 85% at"]
    assert "val 87% at" not in names and len(first.split("|")) == len(header.split("|"))
    assert "| 4.0 min | 4.0 min |" in first and "| 81.00% | – | – |" in second
    assert "flip-avg" not in results.markdown_table(rows[:1])  # no row has it, no thresholds asked: neither


def test_flip_averaged_test_accuracy_is_the_softmax_mean_over_each_test_image_and_its_mirror(tmp_path):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    metrics = main(["--output_dir", str(tmp_path / "run"), "--max_train_samples", "64", "--max_steps", "3",
                    "--precision", "fp32", "--test_flip_average", "true", *TINY])
    final = tmp_path / "run" / "final"
    saved = json.loads((final / "metrics.json").read_text())
    assert saved["test_flip_accuracy"] == pytest.approx(metrics["test_flip_accuracy"])
    # recomputed outside the Trainer from the saved model and the test split
    splits, _ = load_splits(DataArguments(), seed=0)
    test = splits["test"]
    processor = AutoImageProcessor.from_pretrained(final)
    model = AutoModelForImageClassification.from_pretrained(final).eval()
    pixels = processor([image.convert("RGB") for image in test["image"]], return_tensors="pt")["pixel_values"]
    labels = torch.tensor(test["label"])
    with torch.no_grad():
        logits, mirrored = model(pixels).logits, model(pixels.flip(-1)).logits
    assert saved["test_accuracy"] == pytest.approx((logits.argmax(-1) == labels).float().mean().item())
    averaged = (logits.softmax(-1) + mirrored.softmax(-1)).argmax(-1)
    assert saved["test_flip_accuracy"] == pytest.approx((averaged == labels).float().mean().item())
    assert not (averaged == logits.argmax(-1)).all()  # the mirror changed some prediction: the average is not a copy
    assert "averaged with its mirror image" in (final / "README.md").read_text()
    assert "test_flip_average: true" in (final / "recipe.yaml").read_text()


def test_lora_fine_tune_trains_the_adapter_and_writes_a_merged_model_and_the_adapter(tmp_path, capsys):
    pytest.importorskip("peft")
    base = tmp_path / "base"
    main(["--output_dir", str(base), "--max_train_samples", "32", "--max_eval_samples", "16", "--max_steps", "2",
          "--disable_tqdm", "true", *TINY])
    metrics = main(["--output_dir", str(tmp_path / "lora"), "--model_name_or_path", str(base / "final"),
                    "--lora_r", "2", "--max_train_samples", "32", "--max_eval_samples", "16", "--max_steps", "2",
                    "--learning_rate", "0.01", "--warmup_steps", "0", "--disable_tqdm", "true"])
    final = tmp_path / "lora" / "final"
    assert 0 < metrics["trainable_parameters"] < metrics["num_parameters"] / 2
    assert (final / "adapter" / "adapter_config.json").is_file()
    merged = load_file(final / "model.safetensors")
    assert not any("lora_" in key or "base_layer" in key for key in merged)  # a plain ViX folder
    start = load_file(base / "final" / "model.safetensors")
    changed = [key for key in start if not torch.equal(start[key], merged[key])]
    assert changed and all(key.endswith(("q_proj.weight", "v_proj.weight")) or "classifier" in key
                           for key in changed)  # the merged adapter and the head, nothing else
    from transformers import AutoModelForImageClassification

    assert AutoModelForImageClassification.from_pretrained(final).num_parameters() == metrics["num_parameters"]
    assert "lora_r: 2" in (final / "recipe.yaml").read_text()

    with pytest.raises(SystemExit) as exit_info:
        main(["--output_dir", str(tmp_path / "scratch"), "--lora_r", "2", *TINY])
    assert exit_info.value.code == 2 and not (tmp_path / "scratch").exists()
    assert "--lora_r adapts a trained model" in capsys.readouterr().err
