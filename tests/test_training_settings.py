"""How the training job gets its settings: model flags derived from the config classes (every switch works on its
own), recipes with a shared base, the resolved recipe a run writes, the metric module, and the texts that
describe them."""

import dataclasses
import re
import typing
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import modeling_vix
from modeling_vix import VixConfig
from training import model_flags
from training.augment import POLICIES
from training.data import DataArguments
from training.errors import UsageError
from training.model_flags import ModelArguments, config_fields, resolve_model_settings
from training.recipe_files import resolve_recipe
from training.train import make_parser, parse_args, recipe_dict, write_recipe


ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "training" / "recipes"


def model_args(**given):
    return ModelArguments(**given)


# --- model flags ----------------------------------------------------------------------------------------

def test_model_flags_are_the_config_fields_with_no_defaults_of_their_own():
    """No field is re-declared with another default: unset flags are None, and the defaults come from the config
    class (or the quick-start dict), so a change of VixConfig's defaults reaches the job."""
    flags = {field.name: field for field in dataclasses.fields(ModelArguments)}
    expected = set()
    for config_class in model_flags.BACKBONE_CONFIGS.values():
        expected |= set(config_fields(config_class))
    assert set(flags) == expected and "attention_type" in flags and "num_channels" not in flags
    assert all(field.default is None for field in flags.values())
    assert set(model_flags.QUICK_START["vix"]) <= set(config_fields(VixConfig))


def test_quick_start_settings_differ_from_the_config_only_where_listed():
    settings = resolve_model_settings("vix", model_args())
    assert settings == model_flags.QUICK_START["vix"]
    config = VixConfig(**settings)
    for name, field in config_fields(VixConfig).items():
        if name not in settings and field.default is not dataclasses.MISSING:
            assert getattr(config, name) == (list(field.default) if isinstance(field.default, tuple) else field.default)


def switch_values(name: str, annotation) -> list:
    """Every value of a Literal field; both values of a bool field."""
    members = model_flags._members(annotation)
    if typing.get_origin(members[0]) is typing.Literal:
        return list(typing.get_args(members[0]))
    if members == [bool]:
        return [False, True]
    return []


SWITCHES = [(name, value) for name, field in config_fields(VixConfig).items()
            for value in switch_values(name, field.type)]
CHOICE_FLAGS = {  # the README's switches, in case the config's fields are not Literal-typed
    "attention_type": ("softmax", "performer", "linformer", "nystrom", "fnet", "mixer"),
    "embedding_type": ("linear", "conv"), "position_embedding_type": ("learned", "rope_1d", "rope_2d", "none"),
    "pooling": ("cls", "mean"), "conv_stem_activation": ("none", "relu", "gelu"),
    "conv_stem_downsampling": ("last_conv", "max_pool"),
}
SWITCHES += [(name, value) for name, values in CHOICE_FLAGS.items() for value in values
             if (name, value) not in SWITCHES]


@pytest.mark.parametrize("name, value", SWITCHES, ids=[f"{n}={v}" for n, v in SWITCHES])
def test_every_single_switch_works_on_its_own(name, value):
    """`--attention_type fnet` alone used to fail on the job's rope_2d default. A switch given alone is kept, and
    the defaults that it rules out adapt (here: positions fall back to the best the mixer can take)."""
    settings = resolve_model_settings("vix", model_args(**{name: value}))
    assert settings[name] == value
    VixConfig(**settings)


def test_defaults_adapt_to_the_given_switch_and_never_override_it():
    fnet = resolve_model_settings("vix", model_args(attention_type="fnet"))
    assert fnet["position_embedding_type"] == "learned"  # FNet has no queries and keys to rotate
    odd_heads = resolve_model_settings("vix", model_args(hidden_size=72))  # head dim 18: rope_2d needs a multiple of 4
    assert odd_heads["position_embedding_type"] == "rope_1d"
    pooled = resolve_model_settings("vix", model_args(conv_stem_downsampling="max_pool"))
    assert pooled["patch_size"] == 4 and pooled["conv_stem_channels"] == [32]  # 2 convs, 2 pools: 4x4 patches
    with pytest.raises(UsageError, match=r"Invalid model settings for VixConfig: .*RoPE"):
        resolve_model_settings("vix", model_args(attention_type="fnet", position_embedding_type="rope_2d"))


def test_image_size_flag_takes_one_or_two_values():
    assert resolve_model_settings("vix", model_args(image_size=[28]))["image_size"] == 28
    assert resolve_model_settings("vix", model_args(image_size=[32, 48]))["image_size"] == [32, 48]


def test_model_type_chooses_the_config_class_and_foreign_flags_are_errors(monkeypatch):
    """The contract with new backbones: modeling_vix.BACKBONE_CONFIGS maps model_type -> config class; the flags
    are the union of their fields, and a flag the chosen class lacks is an error naming its owner."""

    @dataclasses.dataclass
    class TinyBackboneConfig:
        stage_depths: list[int] = dataclasses.field(default_factory=lambda: [1, 1])
        attention_type: str = "softmax"

    backbones = {"vix": VixConfig, "vix_tiny": TinyBackboneConfig}
    monkeypatch.setattr(model_flags, "BACKBONE_CONFIGS", backbones)
    arguments = model_flags.make_model_arguments()
    names = {field.name for field in dataclasses.fields(arguments)}
    assert {"stage_depths", "patch_size", "attention_type"} <= names
    assert resolve_model_settings("vix_tiny", arguments(stage_depths=[2, 3])) == {"stage_depths": [2, 3]}
    with pytest.raises(UsageError, match=r"--patch_size is not a setting of TinyBackboneConfig .*--model_type vix"):
        resolve_model_settings("vix_tiny", arguments(patch_size=4))
    with pytest.raises(UsageError, match=r"--stage_depths is not a setting of VixConfig .*--model_type vix_tiny"):
        resolve_model_settings("vix", arguments(stage_depths=[1]))
    with pytest.raises(UsageError, match="--model_type 'vix_nope' is not known"):
        resolve_model_settings("vix_nope", arguments())


def test_backbone_registry_falls_back_to_vix_only():
    expected = getattr(modeling_vix, "BACKBONE_CONFIGS", None) or {"vix": VixConfig}
    assert model_flags.BACKBONE_CONFIGS == expected and model_flags.BACKBONE_CONFIGS["vix"] is VixConfig


def test_flags_on_the_command_line_and_config_overrides(tmp_path):
    settings = parse_args(["--attention_type", "mixer", "--qkv_bias", "--output_dir", str(tmp_path),
                           "--config_overrides", "layer_norm_eps=1e-6"])
    assert settings.model_settings["attention_type"] == "mixer" and settings.model_settings["qkv_bias"] is True
    assert settings.model_settings["position_embedding_type"] == "learned"
    from training.train import build_model

    model, _ = build_model(settings, ["a", "b"])
    assert model.config.layer_norm_eps == 1e-6 and model.config.attention_type == "mixer"
    with pytest.raises(UsageError, match="--config_overrides"):
        build_model(parse_args(["--config_overrides", "no_such_field=1", "--output_dir", str(tmp_path)]), ["a"])


def test_config_overrides_on_a_checkpoint_build_the_new_mixer_and_keep_the_shared_weights(tmp_path):
    """Fine-tuning a softmax checkpoint with `--config_overrides attention_type=nystrom` builds Nystrom kernels (not
    a softmax model whose config says nystrom) carrying every q/k/v/o tensor: the warm start of a linear-attention
    fine-tune."""
    from conftest import tiny_config
    from training.train import build_model

    source = modeling_vix.VixForImageClassification(tiny_config(num_labels=2))
    source.save_pretrained(tmp_path / "softmax")
    settings = parse_args(["--model_name_or_path", str(tmp_path / "softmax"), "--output_dir", str(tmp_path / "out"),
                           "--config_overrides", "attention_type=nystrom,nystrom_num_landmarks=8"])
    model, _ = build_model(settings, ["a", "b"])
    kernel = model.vix.layers[0].attention.kernel
    assert type(kernel).__name__ == "NystromKernel" and kernel.num_landmarks == 8
    shared = source.state_dict()
    for name, tensor in model.state_dict().items():
        if name in shared:
            assert torch.equal(tensor, shared[name]), name
    with pytest.raises(UsageError, match="--config_overrides on .*fnet"):
        build_model(parse_args(["--model_name_or_path", str(tmp_path / "softmax"), "--output_dir",
                                str(tmp_path / "out"), "--config_overrides",
                                "attention_type=fnet,position_embedding_type=rope_1d"]), ["a", "b"])


# --- recipes --------------------------------------------------------------------------------------------

# Two variants exactly as their files read before recipes had a base (training/recipes/{cpu,paper}/*.yaml,
# ~40 lines each): the resolved recipe must give a run the same settings. Since then: `precision` replaced the CPU
# protocol's `bf16: true` (auto: bf16 only on CPUs with native bf16) and states the paper protocol's fp32, and the CPU
# protocol gained the fast step of issue 13 (preload_images, channels_last, sdpa_backend math).
CPU_HYBRID_VIT = {
    "dataset_name": "../shared/data/cifar10", "dataset_hub_id": "uoft-cs/cifar10",
    "output_dir": "outputs/cpu/cifar10_hybrid_vit", "attention_type": "softmax", "embedding_type": "conv",
    "position_embedding_type": "learned", "pooling": "mean", "image_size": 32, "patch_size": 4, "hidden_size": 128,
    "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 256, "conv_stem_channels": [32],
    "conv_stem_activation": "relu", "conv_stem_downsampling": "max_pool", "augmentation": "crop_flip",
    "crop_padding": 4, "num_train_epochs": 3, "per_device_train_batch_size": 128, "per_device_eval_batch_size": 512,
    "learning_rate": 2.0e-3, "weight_decay": 0.05, "lr_scheduler_type": "cosine", "warmup_steps": 0.05,
    "label_smoothing_factor": 0.1, "precision": "auto", "use_cpu": True, "eval_strategy": "epoch",
    "save_strategy": "epoch", "save_total_limit": 1, "load_best_model_at_end": True,
    "metric_for_best_model": "accuracy", "logging_steps": 50,
    "preload_images": True, "channels_last": True, "sdpa_backend": "math",
}
PAPER_HYBRID_VIN_ROPE = {
    "dataset_name": "uoft-cs/cifar10", "output_dir": "outputs/paper/cifar10_hybrid_vin_rope",
    "attention_type": "nystrom", "embedding_type": "conv", "position_embedding_type": "rope_1d", "image_size": 32,
    "patch_size": 1, "hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 256,
    "conv_stem_channels": [32, 64], "nystrom_num_landmarks": 64, "nystrom_residual_conv_kernel": 33, "linformer_k": 64,
    "augmentation": "none", "num_train_epochs": 40, "per_device_train_batch_size": 64,
    "per_device_eval_batch_size": 256, "learning_rate": 1.0e-3, "weight_decay": 0.01, "lr_scheduler_type": "constant",
    "warmup_steps": 0,
    "max_grad_norm": 0, "adam_beta1": 0.9, "adam_beta2": 0.999, "adam_epsilon": 1.0e-8, "precision": "fp32",
    "eval_strategy": "epoch", "save_strategy": "epoch", "save_total_limit": 2, "load_best_model_at_end": True,
    "metric_for_best_model": "accuracy", "logging_steps": 100,
}


@pytest.mark.parametrize("path, expected", [("cpu/cifar10_hybrid_vit.yaml", CPU_HYBRID_VIT),
                                            ("paper/cifar10_hybrid_vin_rope.yaml", PAPER_HYBRID_VIN_ROPE)])
def test_variant_recipes_resolve_to_their_former_full_settings(path, expected):
    assert resolve_recipe(RECIPES / path) == expected
    assert len((RECIPES / path).read_text().splitlines()) < 20  # the file holds only the variant's differences


def test_variant_files_hold_only_their_differences():
    for path in sorted((RECIPES / "cpu").glob("*.yaml")) + sorted((RECIPES / "paper").glob("*.yaml")):
        own = yaml.safe_load(path.read_text())
        base = resolve_recipe(path.parent / own.pop("base"))
        assert not {key for key, value in own.items() if base.get(key) == value}, path.name


def test_base_is_relative_to_the_recipe_merged_shallowly_and_chains(tmp_path):
    (tmp_path / "shared").mkdir()
    write_recipe(tmp_path / "shared" / "root.yaml", {"hidden_size": 32, "conv_stem_channels": [8, 16], "seed": 1})
    write_recipe(tmp_path / "shared" / "mid.yaml", {"base": "root.yaml", "seed": 2})
    write_recipe(tmp_path / "variant.yaml", {"base": "shared/mid.yaml", "conv_stem_channels": [4]})
    assert resolve_recipe(tmp_path / "variant.yaml") == {"hidden_size": 32, "conv_stem_channels": [4], "seed": 2}
    write_recipe(tmp_path / "loop.yaml", {"base": "loop.yaml"})
    with pytest.raises(UsageError, match="its own base"):
        resolve_recipe(tmp_path / "loop.yaml")
    write_recipe(tmp_path / "missing.yaml", {"base": "nowhere.yaml"})
    with pytest.raises(UsageError, match="does not exist"):
        resolve_recipe(tmp_path / "missing.yaml")


def test_a_relative_recipe_path_that_names_no_file_is_a_shipped_recipe(tmp_path, monkeypatch):
    from training.train import read_recipe

    monkeypatch.chdir(tmp_path)
    assert read_recipe("cpu/cifar10_ccn.yaml") == resolve_recipe(RECIPES / "cpu" / "cifar10_ccn.yaml")
    (tmp_path / "cpu").mkdir()
    write_recipe(tmp_path / "cpu" / "cifar10_ccn.yaml", {"seed": 3})  # a local file of that name wins
    assert read_recipe("cpu/cifar10_ccn.yaml") == {"seed": 3}
    with pytest.raises(UsageError, match="shipped recipes are in"):
        read_recipe("cpu/no_such_recipe.yaml")


def test_a_run_records_the_fully_resolved_recipe(tmp_path):
    cpu = ["--use_cpu", "true"]
    settings = parse_args([str(RECIPES / "cpu" / "cifar10_hybrid_vit.yaml"), *cpu])
    recorded = recipe_dict(settings)
    assert "base" not in recorded
    data_defaults = dataclasses.asdict(DataArguments())  # data settings are recorded where they differ from these
    for key, value in CPU_HYBRID_VIT.items():
        assert recorded.get(key, data_defaults.get(key)) == value, key
    write_recipe(tmp_path / "recipe.yaml", recorded)
    again = parse_args([str(tmp_path / "recipe.yaml")])
    assert again.model_settings == settings.model_settings and again.training.to_dict() == settings.training.to_dict()


# --- metrics --------------------------------------------------------------------------------------------

def test_accuracy_goes_through_the_repositorys_evaluate_module():
    from training.train import load_metric, make_compute_metrics

    metric = load_metric()
    assert type(metric).__name__ == "TopKAccuracy"
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]], dtype=np.float32)
    labels = np.array([1, 1, 0, 1])
    prediction = type("EvalPrediction", (), {"predictions": logits, "label_ids": labels})
    result = make_compute_metrics(metric)(prediction)
    assert result == {"accuracy": 0.25}  # only the first argmax is right; 3 classes: no top-5 (every class is in it)
    assert make_compute_metrics(metric, k=2)(prediction) == {"accuracy": 0.25, "top2_accuracy": 0.75}
    assert metric.compute(predictions=logits, references=labels, k=2)["top2_accuracy"] == 0.75


# --- texts ----------------------------------------------------------------------------------------------

def test_recipe_paths_named_in_the_docs_exist():
    import training.train

    texts = {"training/train.py": training.train.__doc__,
             "docs/training.md": (ROOT / "docs" / "training.md").read_text()}
    for source, text in texts.items():
        paths = set(re.findall(r"training/recipes/[\w/]+\.yaml", text))
        assert paths, source
        for path in paths:
            assert (ROOT / path).is_file(), f"{source} names {path}"


def test_augmentation_help_lists_every_policy():
    help_text = make_parser().format_help()
    block = help_text[help_text.index("--augmentation"):].split("\n  --", 1)[0]
    for policy in POLICIES:
        assert policy in block, policy


def test_training_docs_document_resuming_and_the_launchers():
    section = (ROOT / "docs" / "training.md").read_text()
    assert "accelerate launch --multi_gpu --num_processes 2 -m training.train" in section
    assert "torchrun --nproc_per_node 2 -m training.train" in section
    assert "torchrun --nnodes 2" in section and "accelerate launch --config_file" in section  # several machines
    assert re.search(r"resum\w+[^.]*same (recipe|flags)", section)  # resuming needs the run's settings again
    fine_tune = next(line for line in section.splitlines()
                     if "--model_name_or_path outputs/vix-nystrom-digits/final" in line)
    block = section[section.index(fine_tune):].split("\n\n", 1)[0]
    assert "--output_dir" in block  # its own folder: never the one it loads from


@pytest.mark.parametrize("argv,expected", [
    (["--model_type", "vix_cvt", "--patch_stride", "4", "2", "1", "--cls_token", "false", "false", "true",
      "--drop_path_rate", "0", "0", "0.1"],
     {"patch_stride": [4, 2, 1], "cls_token": [False, False, True], "drop_path_rate": [0.0, 0.0, 0.1]}),
    (["--model_type", "vix_pit", "--patch_stride", "4"], {"patch_stride": 4}),
    (["--model_type", "vix_cct", "--drop_path_rate", "0.1"], {"drop_path_rate": 0.1}),
    (["--model_type", "vix_levit", "--attention_type", "performer"], {"attention_bias": False}),
])
def test_flags_shared_by_backbones_parse_for_each(argv, expected, tmp_path):
    """One flag per field name, whatever each backbone declares: a per-stage list for CvT, an int or a float for
    PiT and CCT, booleans read as words; a setting the mixer rules out falls back (Performer: no LeViT bias)."""
    settings = parse_args([*argv, "--output_dir", str(tmp_path)])
    assert {name: settings.model_settings[name] for name in expected} == expected


def test_per_stage_booleans_must_be_words(tmp_path):
    with pytest.raises(UsageError, match="per-stage booleans"):
        parse_args(["--model_type", "vix_cvt", "--cls_token", "no", "maybe", "yes", "--output_dir", str(tmp_path)])
