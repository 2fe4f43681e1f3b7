"""Tier 3: ViX as a transformers model family, end to end.

- save_pretrained writes a self-contained folder (auto_map for four Auto classes + every modeling file);
- a fresh process WITHOUT the package loads it with trust_remote_code=True (Auto classes and pipeline),
  with logits bit-identical to this process's on real CIFAR-10 images;
- with the package imported, the Auto classes and pipeline pick the installed classes;
- Trainer fine-tunes a tiny model on real CIFAR images, and its checkpoint reloads identically;
- dtype=bfloat16 loading and ignore_mismatched_sizes head swaps.
"""

import contextlib
import json
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import modeling_vix
from conftest import SHARED_MODELING_FILES, run_without_package, tiny_config
from modeling_vix import (
    VixConfig,
    VixForImageClassification,
    VixImageProcessor,
    VixModel,
)


CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ID2LABEL = dict(enumerate(CIFAR10_LABELS))
LABEL2ID = {name: i for i, name in ID2LABEL.items()}

# Folder name -> config overrides. Together they cover every mixer, both embeddings, every position type,
# both poolings, buffers (performer), sequence-length-sized parameters (linformer, mixer) and FFTs (fnet).
VARIANTS = {
    "softmax_linear_learned": dict(attention_type="softmax", embedding_type="linear",
                                   position_embedding_type="learned"),
    "performer_conv_rope2d": dict(attention_type="performer", embedding_type="conv", position_embedding_type="rope_2d"),
    "nystrom_linear_rope1d": dict(attention_type="nystrom", embedding_type="linear", position_embedding_type="rope_1d"),
    "linformer_linear_learned": dict(attention_type="linformer"),
    "fnet_linear_learned": dict(attention_type="fnet"),
    "mixer_linear_none_mean": dict(attention_type="mixer", position_embedding_type="none", pooling="mean"),
}

MODELING_FILES = ("modeling_vix.py", *SHARED_MODELING_FILES)
AUTO_MAP_KEYS = {"AutoConfig", "AutoModel", "AutoModelForImageClassification", "AutoImageProcessor"}
PACKAGE_DIR = Path(modeling_vix.__file__).resolve().parent


def _labelled_config(**overrides) -> VixConfig:
    return tiny_config(id2label=ID2LABEL, label2id=LABEL2ID, **overrides)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, cifar_images, cifar_pixels):
    """Each variant saved (model + processor) to its own folder, with this process's reference outputs."""
    root = tmp_path_factory.mktemp("vix_saved")
    result = {}
    for index, (name, overrides) in enumerate(VARIANTS.items()):
        torch.manual_seed(100 + index)
        model = VixForImageClassification(_labelled_config(**overrides)).eval()
        folder = root / name
        model.save_pretrained(folder)
        VixImageProcessor().save_pretrained(folder)
        with torch.no_grad():
            logits = model(cifar_pixels).logits
            pooled = model.vix(cifar_pixels).pooler_output
        result[name] = dict(folder=folder, model=model, logits=logits, pooled=pooled)
    return result


# --------------------------------------------------------------------------------------------------
# What save_pretrained writes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_saved_folder_is_self_contained(saved, name):
    folder = saved[name]["folder"]
    files = {path.name for path in folder.iterdir()}

    config = json.loads((folder / "config.json").read_text())
    assert set(config["auto_map"]) >= AUTO_MAP_KEYS, config["auto_map"]
    assert config["auto_map"]["AutoConfig"] == "configuration_vix.VixConfig"
    assert config["auto_map"]["AutoModel"] == "modeling_vix.VixModel"
    assert config["auto_map"]["AutoModelForImageClassification"] == "modeling_vix.VixForImageClassification"
    assert config["auto_map"]["AutoImageProcessor"] == "image_processing_vix.VixImageProcessor"
    assert config["model_type"] == "vix"
    assert config["id2label"] == {str(i): label for i, label in ID2LABEL.items()}
    for key, value in VARIANTS[name].items():
        assert config[key] == value

    for filename in MODELING_FILES:
        assert filename in files, f"{filename} missing from {sorted(files)}"
        # The copies are the package's current sources, not stale ones.
        assert (folder / filename).read_bytes() == (PACKAGE_DIR / filename).read_bytes(), filename
    assert "__init__.py" not in files
    assert "model.safetensors" in files
    assert not any(f.endswith(".bin") for f in files), sorted(files)

    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["image_processor_type"] == "VixImageProcessor"
    assert preprocessor["auto_map"]["AutoImageProcessor"] == "image_processing_vix.VixImageProcessor"


def test_save_pretrained_keeps_a_user_auto_map_entry(tmp_path):
    """save_pretrained merges its four entries into an existing auto_map instead of replacing it."""
    config = _labelled_config()
    config.auto_map = {"AutoModelForSomethingElse": "modeling_vix.VixModel"}
    VixForImageClassification(config).save_pretrained(tmp_path)
    auto_map = json.loads((tmp_path / "config.json").read_text())["auto_map"]
    assert set(auto_map) == AUTO_MAP_KEYS | {"AutoModelForSomethingElse"}


# --------------------------------------------------------------------------------------------------
# Remote code: a fresh interpreter where `modeling_vix` cannot be imported
# --------------------------------------------------------------------------------------------------

# Run by conftest.run_without_package, which hides the package (sys.modules["modeling_vix"] = None) first.
CHILD_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    spec = json.loads(sys.argv[1])
    report = {"hidden": False, "hf_home": os.environ.get("HF_HOME"), "offline": os.environ.get("HF_HUB_OFFLINE")}
    try:
        import modeling_vix  # noqa: F401
    except ImportError:
        report["hidden"] = True

    import torch
    from PIL import Image
    from transformers import (
        AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline,
    )

    pixels = torch.load(spec["pixels"], weights_only=True)
    images = [Image.open(path).convert("RGB") for path in spec["images"]]
    outputs = {}
    for name, folder in spec["folders"].items():
        entry = report.setdefault("variants", {}).setdefault(name, {})
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
        entry["config_class"] = type(config).__module__ + "." + type(config).__qualname__
        entry["attention_type"] = config.attention_type
        entry["id2label"] = {str(k): v for k, v in config.id2label.items()}

        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        entry["model_class"] = type(model).__module__ + "." + type(model).__qualname__
        base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
        entry["base_class"] = type(base).__module__ + "." + type(base).__qualname__

        processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
        entry["processor_class"] = type(processor).__module__ + "." + type(processor).__qualname__

        classifier = pipeline("image-classification", model=folder, trust_remote_code=True, device="cpu")
        entry["pipeline_model_class"] = type(classifier.model).__module__ + "." + type(classifier.model).__qualname__
        entry["pipeline"] = classifier(images, top_k=len(config.id2label))

        with torch.no_grad():
            outputs[name] = {
                "logits": model(pixels).logits,
                "pooled": base(pixels).pooler_output,
                "processed": processor(images, return_tensors="pt")["pixel_values"],
            }
    torch.save(outputs, spec["outputs"])
    with open(spec["report"], "w") as handle:
        json.dump(report, handle)
    """
)


@pytest.fixture(scope="module")
def remote_run(saved, cifar_images, cifar_pixels, tmp_path_factory):
    """Runs CHILD_SCRIPT once for all saved folders; returns (report, outputs)."""
    work = tmp_path_factory.mktemp("remote")
    pixels_path = work / "pixels.pt"
    torch.save(cifar_pixels, pixels_path)
    image_paths = []
    for i, image in enumerate(cifar_images[0]):
        path = work / f"cifar_{i}.png"  # PNG: lossless, so the child sees the same pixels
        image.save(path)
        image_paths.append(str(path))
    spec = {
        "pixels": str(pixels_path),
        "images": image_paths,
        "folders": {name: str(entry["folder"]) for name, entry in saved.items()},
        "outputs": str(work / "outputs.pt"),
        "report": str(work / "report.json"),
    }
    run_without_package(CHILD_SCRIPT, [json.dumps(spec)], work)
    report = json.loads(Path(spec["report"]).read_text())
    outputs = torch.load(spec["outputs"], weights_only=True)
    return report, outputs, work


def test_remote_child_cannot_import_the_package(remote_run):
    report, _, work = remote_run
    assert report["hidden"], "`import modeling_vix` worked in the child; the remote-code path was not exercised"
    assert report["offline"] == "1"
    # The remote code was cached under the child's own HF_HOME.
    assert report["hf_home"] == str(work / "hf_home")
    assert any((work / "hf_home" / "modules" / "transformers_modules").rglob("modeling_vix.py"))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_remote_code_loads_every_auto_class(remote_run, name):
    report, _, _ = remote_run
    entry = report["variants"][name]
    for key, expected in (
        ("config_class", "configuration_vix.VixConfig"),
        ("model_class", "modeling_vix.VixForImageClassification"),
        ("base_class", "modeling_vix.VixModel"),
        ("processor_class", "image_processing_vix.VixImageProcessor"),
        ("pipeline_model_class", "modeling_vix.VixForImageClassification"),
    ):
        assert entry[key].startswith("transformers_modules."), (key, entry[key])
        assert entry[key].endswith(expected), (key, entry[key])
    assert entry["attention_type"] == VARIANTS[name]["attention_type"]
    assert entry["id2label"] == {str(i): label for i, label in ID2LABEL.items()}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_remote_code_outputs_are_identical(saved, remote_run, cifar_pixels, name):
    _, outputs, _ = remote_run
    child = outputs[name]
    assert torch.equal(child["processed"], cifar_pixels), "remote image processor differs from the package's"
    diff = (child["logits"] - saved[name]["logits"]).abs().max().item()
    assert diff == 0.0, f"remote-code logits differ by {diff}"
    assert torch.equal(child["pooled"], saved[name]["pooled"]), "AutoModel (base) output differs"


@pytest.mark.parametrize("name", list(VARIANTS))
def test_remote_code_pipeline_matches_softmax_of_logits(saved, remote_run, name):
    report, _, _ = remote_run
    results = report["variants"][name]["pipeline"]
    probabilities = saved[name]["logits"].softmax(-1)
    assert len(results) == probabilities.shape[0]
    for predictions, probs in zip(results, probabilities, strict=True):
        assert len(predictions) == len(ID2LABEL)
        assert {p["label"] for p in predictions} == set(CIFAR10_LABELS)
        scores = [p["score"] for p in predictions]
        assert scores == sorted(scores, reverse=True)
        for p in predictions:
            assert p["score"] == pytest.approx(probs[LABEL2ID[p["label"]]].item(), abs=1e-6)
        assert predictions[0]["score"] == pytest.approx(probs.max().item(), abs=1e-6)


# --------------------------------------------------------------------------------------------------
# With the package imported: the Auto classes resolve to the installed classes
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(VARIANTS))
def test_auto_classes_use_the_installed_package(saved, cifar_pixels, name):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

    folder = saved[name]["folder"]
    config = AutoConfig.from_pretrained(folder)
    assert type(config) is VixConfig
    model = AutoModelForImageClassification.from_pretrained(folder).eval()
    assert type(model) is VixForImageClassification
    base = AutoModel.from_pretrained(folder).eval()
    assert type(base) is VixModel
    processor = AutoImageProcessor.from_pretrained(folder)
    assert type(processor) is VixImageProcessor
    with torch.no_grad():
        assert torch.equal(model(cifar_pixels).logits, saved[name]["logits"])
        assert torch.equal(base(cifar_pixels).pooler_output, saved[name]["pooled"])


@pytest.mark.parametrize("name", ["softmax_linear_learned", "performer_conv_rope2d", "mixer_linear_none_mean"])
def test_pipeline_without_trust_remote_code(saved, cifar_images, name):
    from transformers import pipeline

    classifier = pipeline("image-classification", model=str(saved[name]["folder"]), trust_remote_code=False,
                          device="cpu")
    assert type(classifier.model) is VixForImageClassification
    assert type(classifier.image_processor) is VixImageProcessor
    images = cifar_images[0][:4]
    results = classifier(images, top_k=3)
    probabilities = saved[name]["logits"][:4].softmax(-1)
    for predictions, probs in zip(results, probabilities, strict=True):
        top = probs.topk(3)
        assert [p["score"] for p in predictions] == pytest.approx(top.values.tolist(), abs=1e-6)
        assert all(p["label"] in CIFAR10_LABELS for p in predictions)
        assert predictions[0]["label"] == ID2LABEL[int(top.indices[0])]
    # A single image gives a flat list; the default top_k is 5.
    single = classifier(images[0])
    assert len(single) == 5 and single[0]["score"] == pytest.approx(probabilities[0].max().item(), abs=1e-6)


# --------------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------------


def test_trainer_overfits_real_cifar_and_checkpoint_reloads(tmp_path, cifar_images):
    import datasets
    from transformers import AutoModelForImageClassification, DefaultDataCollator, Trainer, TrainingArguments

    images, labels = cifar_images
    processor = VixImageProcessor()
    dataset = datasets.Dataset.from_dict(
        {"image": images, "label": labels},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CIFAR10_LABELS)}),
    )

    def transform(batch):
        out = processor([image.convert("RGB") for image in batch["image"]], return_tensors="pt")
        out["labels"] = batch["label"]
        return out

    dataset.set_transform(transform)

    pixels = processor(images, return_tensors="pt")["pixel_values"]
    targets = torch.tensor(labels)
    torch.manual_seed(0)
    model = VixForImageClassification(_labelled_config(attention_type="softmax"))

    def full_loss(m):
        m.eval()
        with torch.no_grad():
            return m(pixels, labels=targets).loss.item()

    initial = full_loss(model)
    steps = 30
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=steps,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        warmup_steps=2,
        weight_decay=0.0,
        logging_steps=5,
        save_strategy="steps",
        save_steps=steps,
        save_total_limit=1,
        report_to="none",
        use_cpu=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=dataset, data_collator=DefaultDataCollator(), processing_class=processor
    )
    trainer.train()

    logged = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) >= 4 and logged[-1] < logged[0], logged
    final = full_loss(trainer.model)
    assert final < 0.4 * initial, (initial, final, logged)  # here: 2.35 -> 0.28

    checkpoint = tmp_path / "run" / f"checkpoint-{steps}"
    assert checkpoint.is_dir(), sorted(p.name for p in (tmp_path / "run").iterdir())
    files = {p.name for p in checkpoint.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", *MODELING_FILES} <= files, sorted(files)
    assert set(json.loads((checkpoint / "config.json").read_text())["auto_map"]) >= AUTO_MAP_KEYS

    reloaded = AutoModelForImageClassification.from_pretrained(checkpoint).eval()
    assert type(reloaded) is VixForImageClassification
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(reloaded(pixels).logits, trainer.model(pixels).logits)


# --------------------------------------------------------------------------------------------------
# dtype and head swaps
# --------------------------------------------------------------------------------------------------


# torch 2.13 CPU (oneDNN, on this AVX512/AMX machine) computes some bfloat16 Conv2d shapes wrongly: with 16 input
# channels and kernel = stride = 4 (the tiny conv stem's last conv) the error is as large as the output, while
# the same conv with oneDNN disabled is right to bf16 precision. Reproduce without ViX:
#   x = torch.randn(4, 16, 32, 32).bfloat16(); w = torch.randn(32, 16, 4, 4).bfloat16()
#   (F.conv2d(x, w, stride=4).float() - F.conv2d(x.float(), w.float(), stride=4)).abs().max()  # ~ |output|
# Not a ViX bug, so the conv variant is checked with oneDNN off, and with the default kernels only where the plain
# conv above is right (skipped, saying so, on CPUs where torch has the bug).
UPSTREAM_BF16_CONV = (
    "torch 2.13 CPU oneDNN bfloat16 conv2d bug (16 in-channels, kernel=stride=4 on 32x32 gives wrong output); "
    "correct with torch.backends.mkldnn.flags(enabled=False)"
)


def _bf16_logits(folder, pixels, onednn=True):
    from transformers import AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(folder, dtype=torch.bfloat16).eval()
    assert model.dtype == torch.bfloat16
    floating = {name: t for name, t in list(model.named_parameters()) + list(model.named_buffers())
                if t.is_floating_point()}
    # Every weight and saved buffer is bf16 (the performer's projection included). RoPE's frequencies stay fp32, as
    # in transformers' rotary embeddings: in bf16 (8 mantissa bits) the angle of position 1024 would be off by
    # several radians. They are a function of the config, refilled after the meta-device load.
    rope = {name: t for name, t in floating.items() if name.endswith("rotary_embeddings.inv_freq")}
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in rope.values())
    assert all(t.dtype == torch.bfloat16 for name, t in floating.items() if name not in rope), {
        name: t.dtype for name, t in floating.items() if name not in rope}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="TF32 acceleration on top of oneDNN")  # from mkldnn.flags
        with contextlib.nullcontext() if onednn else torch.backends.mkldnn.flags(enabled=False):
            logits = model(pixels).logits  # fp32 pixels are cast by the model
    assert logits.dtype == torch.bfloat16
    assert torch.isfinite(logits).all()
    return logits.float()


def _assert_close_to_fp32(logits, reference):
    scale = reference.abs().max().item()
    diff = (logits - reference).abs().max().item()
    assert diff <= 0.03 * scale + 1e-3, f"bf16 logits differ by {diff} (fp32 logits up to {scale})"
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() >= 0.75


@pytest.mark.parametrize("name", list(VARIANTS))
def test_from_pretrained_bfloat16(saved, cifar_pixels, name):
    onednn = VARIANTS[name].get("embedding_type") != "conv"  # see UPSTREAM_BF16_CONV
    logits = _bf16_logits(saved[name]["folder"], cifar_pixels, onednn=onednn)
    _assert_close_to_fp32(logits, saved[name]["logits"])


def _torch_bf16_conv_is_wrong() -> bool:
    generator = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 16, 32, 32, generator=generator), torch.randn(32, 16, 4, 4, generator=generator)
    exact = torch.nn.functional.conv2d(x, w, stride=4)
    bf16 = torch.nn.functional.conv2d(x.bfloat16(), w.bfloat16(), stride=4).float()
    return bool((bf16 - exact).abs().max() > 0.1 * exact.abs().max())


def test_from_pretrained_bfloat16_conv_stem_default_cpu_kernels(saved, cifar_pixels):
    if _torch_bf16_conv_is_wrong():
        pytest.skip(UPSTREAM_BF16_CONV)
    name = "performer_conv_rope2d"
    logits = _bf16_logits(saved[name]["folder"], cifar_pixels, onednn=True)
    _assert_close_to_fp32(logits, saved[name]["logits"])


def test_ignore_mismatched_sizes_reinitialises_only_the_classifier(saved, cifar_pixels):
    from transformers import AutoModelForImageClassification

    entry = saved["softmax_linear_learned"]
    new_labels = {0: "cat", 1: "dog", 2: "other"}
    new_label2id = {v: k for k, v in new_labels.items()}

    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForImageClassification.from_pretrained(entry["folder"], id2label=new_labels, label2id=new_label2id)

    torch.manual_seed(0)
    model = AutoModelForImageClassification.from_pretrained(
        entry["folder"], id2label=new_labels, label2id=new_label2id, ignore_mismatched_sizes=True
    ).eval()
    assert model.config.num_labels == 3 and model.config.id2label == new_labels
    assert model.classifier.weight.shape == (3, model.config.hidden_size)

    old = entry["model"].state_dict()
    new = model.state_dict()
    assert set(old) == set(new)
    for key, value in new.items():
        if key.startswith("classifier."):
            continue
        assert torch.equal(value, old[key]), key
    weight, bias = model.classifier.weight, model.classifier.bias
    assert torch.isfinite(weight).all() and torch.isfinite(bias).all()
    std = model.config.initializer_range
    assert 0.5 * std < weight.std().item() < 1.5 * std  # freshly initialised, not garbage from the meta device
    assert torch.equal(bias, torch.zeros_like(bias))
    with torch.no_grad():
        out = model(cifar_pixels)
    assert out.logits.shape == (cifar_pixels.shape[0], 3)
    # The body is unchanged: same pooled features as the saved model.
    with torch.no_grad():
        assert torch.equal(model.vix(cifar_pixels).pooler_output, entry["pooled"])
