"""`--precision` (training/precision.py): bf16 only where the device runs it natively, explicit choices as asked,
contradictions with --bf16/--fp16 refused, and recipe.yaml keeping `auto` so a re-run on other hardware chooses
again. The CPU's flags are injected: no AVX-512 or bf16 hardware needed. Parsing only, plus one 1-step run."""

import functools
import json

import pytest
import torch

from test_training import TINY
from training import train
from training.errors import UsageError
from training.precision import read_cpu_flags, resolve_precision
from training.recipe_files import write_recipe


AVX2_EPYC = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma", "bmi2"})  # AMD EPYC (Zen 2): no AVX-512, no bf16
AVX512_BF16_EPYC = AVX2_EPYC | {"avx512f", "avx512bw", "avx512_bf16"}  # AMD EPYC (Zen 4)
AMX_XEON = AVX2_EPYC | {"avx512f", "amx_tile", "amx_bf16"}  # Intel Xeon (Sapphire Rapids)
RECORD_KEYS = {"precision", "precision_requested", "precision_reason", "cpu_capability", "cpu_native_bf16"}


def cpu(flags):
    return lambda: flags


def on_cpu(monkeypatch, flags):
    """parse_args as on a CPU with these flags (and no GPU)."""
    monkeypatch.setattr(train, "resolve_precision", functools.partial(resolve_precision, read_flags=cpu(flags)))
    monkeypatch.setattr(train, "training_device", lambda use_cpu: "cpu")


def test_auto_is_fp32_on_an_avx2_only_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    precision = resolve_precision("auto", "cpu", read_flags=cpu(AVX2_EPYC))
    assert precision.name == "fp32"
    assert precision.reason == "auto: CPU has no avx512_bf16 or amx_bf16, torch capability AVX2; bf16 would be slow"
    assert precision.record == {"precision": "fp32", "precision_requested": "auto",
                                "precision_reason": precision.reason, "cpu_capability": "AVX2",
                                "cpu_native_bf16": False}


@pytest.mark.parametrize("flags, flag", [(AVX512_BF16_EPYC, "avx512_bf16"), (AMX_XEON, "amx_bf16")])
def test_auto_is_bf16_on_a_cpu_with_native_bf16(flags, flag):
    precision = resolve_precision("auto", "cpu", read_flags=cpu(flags))
    assert precision.name == "bf16" and precision.reason.startswith(f"auto: CPU has {flag}, torch capability ")
    assert precision.record["cpu_native_bf16"] is True and set(precision.record) == RECORD_KEYS


def test_auto_without_cpu_flags_or_without_use_cpu_beside_an_accelerator_is_fp32():
    assert resolve_precision("auto", "cpu", read_flags=cpu(frozenset())).name == "fp32"  # not Linux: unknown CPU
    # with an accelerator present, training on the CPU in bf16 needs --use_cpu true (transformers refuses it else)
    unset = resolve_precision("auto", "cpu", use_cpu=False, cpu_only=lambda: False, read_flags=cpu(AVX512_BF16_EPYC))
    assert unset.name == "fp32" and "--use_cpu true" in unset.reason and not unset.use_cpu


@pytest.mark.parametrize("requested", ["auto", "bf16"])
def test_bf16_on_a_cpu_only_machine_needs_no_use_cpu_flag(requested):
    """Without an accelerator, bf16 comes with use_cpu set (what TrainingArguments need), and the reason says so."""
    precision = resolve_precision(requested, "cpu", use_cpu=False, cpu_only=lambda: True, read_flags=cpu(AMX_XEON))
    assert precision.name == "bf16" and precision.use_cpu and "use_cpu set" in precision.reason
    fp32 = resolve_precision("auto", "cpu", use_cpu=False, cpu_only=lambda: True, read_flags=cpu(AVX2_EPYC))
    assert fp32.name == "fp32" and not fp32.use_cpu  # nothing to set where bf16 is not chosen


def test_the_quick_start_trains_bf16_on_a_cpu_only_machine_with_native_bf16(monkeypatch):
    """No --use_cpu: TrainingArguments are built with bf16 (they refuse it without use_cpu), and recipe.yaml keeps
    `auto` and no use_cpu, so the run chooses again elsewhere."""
    monkeypatch.setattr(train, "resolve_precision", functools.partial(
        resolve_precision, read_flags=cpu(AMX_XEON), cpu_only=lambda: True))
    monkeypatch.setattr(train, "training_device", lambda use_cpu: "cpu")
    settings = train.parse_args([])
    assert settings.training.bf16 is True and settings.training.use_cpu is True
    assert settings.precision.record["precision"] == "bf16"
    saved = train.recipe_dict(settings)
    assert saved["precision"] == "auto" and "use_cpu" not in saved and "bf16" not in saved


def test_auto_on_a_gpu_is_bf16_where_native_else_fp16():
    assert resolve_precision("auto", "cuda", cuda_bf16=lambda: True, read_flags=cpu(AVX2_EPYC)).name == "bf16"
    assert resolve_precision("auto", "cuda", cuda_bf16=lambda: False, read_flags=cpu(AVX2_EPYC)).name == "fp16"


@pytest.mark.parametrize("requested", ["bf16", "fp16", "fp32"])
def test_an_explicit_choice_runs_as_asked_whatever_the_cpu(requested):
    for flags in (AVX2_EPYC, AVX512_BF16_EPYC):
        precision = resolve_precision(requested, "cpu", read_flags=cpu(flags))
        assert precision.name == precision.record["precision_requested"] == requested
    slow = resolve_precision("bf16", "cpu", read_flags=cpu(AVX2_EPYC))
    assert "no native bf16" in slow.reason  # asked for, and told why it may be slow


def test_bf16_and_fp16_flags_decide_under_auto_and_must_agree_with_an_explicit_choice():
    avx2 = cpu(AVX2_EPYC)
    assert resolve_precision("auto", "cpu", bf16=True, read_flags=avx2).name == "bf16"  # an old recipe: as before
    assert resolve_precision("auto", "cpu", bf16=False, read_flags=cpu(AVX512_BF16_EPYC)).name == "fp32"
    assert resolve_precision("auto", "cpu", fp16=True, read_flags=avx2).name == "fp16"
    assert resolve_precision("bf16", "cpu", bf16=True, fp16=False, read_flags=avx2).name == "bf16"  # consistent
    for requested, flags in (("fp32", {"bf16": True}), ("bf16", {"bf16": False}), ("bf16", {"fp16": True}),
                             ("fp16", {"bf16": True}), ("auto", {"bf16": True, "fp16": True})):
        with pytest.raises(UsageError):
            resolve_precision(requested, "cpu", **flags, read_flags=avx2)


def test_cpu_flags_come_from_the_first_flags_line(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512_bf16\n\n"
                       "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n")
    assert read_cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert read_cpu_flags(tmp_path / "missing") == frozenset()


# --- the training job -------------------------------------------------------------------------------------

def test_a_contradiction_is_one_line_and_exit_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--precision", "fp32", "--bf16", "true", "--use_cpu", "true", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --precision fp32 contradicts --bf16 true")


def test_resolved_precision_is_not_recorded_so_a_saved_recipe_chooses_again(tmp_path, monkeypatch):
    recipe = tmp_path / "recipe.yaml"
    write_recipe(recipe, {"hidden_size": 32, "use_cpu": True})  # no bf16 key: precision auto
    on_cpu(monkeypatch, AVX512_BF16_EPYC)
    settings = train.parse_args([str(recipe)])
    assert settings.training.bf16 is True and settings.precision.name == "bf16"
    assert not {"bf16", "fp16"} & settings.changed_training
    saved = train.recipe_dict(settings)
    assert saved["precision"] == "auto" and "bf16" not in saved and "fp16" not in saved
    write_recipe(tmp_path / "saved.yaml", saved)

    on_cpu(monkeypatch, AVX2_EPYC)  # the saved recipe on another machine
    again = train.parse_args([str(tmp_path / "saved.yaml")])
    assert again.training.bf16 is False and again.training.fp16 is False and again.precision.name == "fp32"


def test_given_bf16_flags_are_recorded_and_an_explicit_precision_too(tmp_path, monkeypatch):
    on_cpu(monkeypatch, AVX512_BF16_EPYC)
    settings = train.parse_args(["--use_cpu", "true", "--bf16", "false"])  # a given "not bf16" wins under auto
    assert settings.training.bf16 is False and "bf16" in settings.changed_training
    assert train.recipe_dict(settings)["bf16"] is False
    forced = train.parse_args(["--use_cpu", "true", "--precision", "fp32"])
    assert forced.training.bf16 is False and train.recipe_dict(forced)["precision"] == "fp32"
    assert not {"bf16", "fp16"} & forced.changed_training


def test_metrics_json_records_what_ran_and_why(tmp_path):
    """One training step: metrics.json holds the precision record, and it agrees with what the Trainer ran."""
    out = tmp_path / "run"
    train.main(["--output_dir", str(out), *TINY, "--use_cpu", "true", "--max_steps", "1", "--max_train_samples", "16",
                "--max_eval_samples", "8", "--per_device_train_batch_size", "8", "--eval_strategy", "no",
                "--save_strategy", "no", "--load_best_model_at_end", "false", "--report_to", "none"])
    metrics = json.loads((out / "final" / "metrics.json").read_text())
    assert RECORD_KEYS <= set(metrics) and metrics["precision_requested"] == "auto"
    expected = resolve_precision("auto", "cpu")  # this machine's own answer
    assert metrics["precision"] == expected.name and metrics["precision_reason"] == expected.reason
    assert metrics["cpu_native_bf16"] == (expected.record["cpu_native_bf16"])
    assert "precision" in train.recipe_dict(train.parse_args([str(out / "final" / "recipe.yaml")]))
