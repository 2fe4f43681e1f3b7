"""The benchmark report logic: targets read from results JSON, markdown re-rendered from it, and the profile's
attribution of ops to the parts of a train step. No timings are taken or checked here."""

import copy
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from torch import nn

from benchmarks import profile_step, run


RESULTS = Path(run.__file__).resolve().parent / "results"


def paper_report(times: dict, memory: dict | None = None, dtype: str = "fp32") -> dict:
    memory = memory or {model: 100.0 for model in times}
    return {
        "settings": {"dtype": dtype, "batch_size": 16, "warmup_steps": 2, "steps": 5},
        "paper": [{"model": m, "step_time_s": t, "peak_memory_mb": memory[m], "finite_loss": True, "parameters": 1,
                   "train_flops": 1e9, "achieved_gflops": 1.0} for m, t in times.items()],
    }


@pytest.mark.parametrize("name", ["cpu_fp32", "cpu_bf16"])
def test_committed_markdown_is_the_render_of_its_json(name):
    """Re-rendering changes no measured number: the committed markdown is exactly what the JSON renders to."""
    path = RESULTS / f"{name}.json"
    assert run.render(path) == path.with_suffix(".md").read_text()


def test_speed_target_met_at_the_threshold_and_gap_when_missed():
    rows = run.speed_rows(paper_report({"vix-nystrom": 0.5, "authors-ViN": 1.0, "hf-vit-sdpa": 0.65}))
    by_peer = {row["goal"].split()[-1]: row for row in rows}
    assert by_peer["authors-ViN"]["status"] == "met" and by_peer["authors-ViN"]["gap"] == ""
    missed = by_peer["hf-vit-sdpa"]
    assert missed["status"] == "**missed**" and missed["measured"] == "1.30x"
    assert missed["gap"] == "step 0.500 s -> <= 0.325 s (-35%)"


def test_memory_targets_are_upper_bounds():
    report = paper_report({"vix-nystrom": 1.0, "hf-vit-sdpa": 1.0, "hf-vit-eager": 1.0, "vix-softmax": 1.0},
                          {"vix-nystrom": 300.0, "hf-vit-sdpa": 300.0, "hf-vit-eager": 900.0, "vix-softmax": 320.0})
    status = {(row["target"], row["goal"].split()[0], row["goal"].split()[1]): row["status"]
              for row in run.memory_rows(report)}
    assert status["2a", "vix-nystrom", "peak"] == "met"  # 1.00x against <= 1.0x
    assert status["2b", "vix-nystrom", "peak"] == "**missed**"  # 0.33x against <= 0.3x
    assert status["3", "vix-softmax", "peak"] == "**missed**"  # 1.07x against <= 1.05x
    assert status["3", "vix-softmax", "step"] == "met"


def test_bf16_rows_divide_fp32_by_bf16_step_times_and_leave_long_runs_unmeasured():
    fp32 = paper_report({"vix-nystrom": 0.6, "vix-linformer": 0.45, "hf-vit-sdpa": 0.8})
    bf16 = paper_report({"vix-nystrom": 0.5, "vix-linformer": 0.3, "hf-vit-sdpa": 0.7}, dtype="bf16")
    rows = run.bf16_rows(fp32, bf16)
    speed = {row["goal"].split()[0]: row for row in rows[:-1]}
    assert set(speed) == {"vix-nystrom", "vix-linformer"}  # ViX models only
    assert speed["vix-nystrom"]["measured"] == "1.20x" and speed["vix-nystrom"]["status"] == "**missed**"
    assert speed["vix-linformer"]["status"] == "met"
    assert rows[-1]["status"] == "not measured"


def test_targets_section_only_in_fp32_report_and_bf16_table_needs_fp32_file():
    fp32 = paper_report({"vix-nystrom": 0.6, "hf-vit-sdpa": 0.8})
    fp32.update(machine={"cpu": "cpu", "cores": 2, "torch": "x"}, command="c", ratios={})
    bf16 = copy.deepcopy(fp32)
    bf16["settings"]["dtype"] = "bf16"
    assert "## Targets" in run.markdown(fp32) and "## Targets" not in run.markdown(bf16)
    assert "bf16 autocast against fp32" not in run.markdown(bf16)
    assert "bf16 autocast against fp32" in run.markdown(bf16, companion=fp32)


def test_companion_path_swaps_the_dtype_suffix_only():
    assert run.companion_path(Path("r/cpu_fp32.json"), "bf16") == Path("r/cpu_bf16.json")
    assert run.companion_path(Path("r/h100_bf16.json"), "fp32") == Path("r/h100_fp32.json")
    assert run.companion_path(Path("r/custom.json"), "bf16") is None


def test_crossover_at_the_smallest_swept_size_is_an_upper_bound():
    report = {"scaling": [{"tokens": 1025}, {"tokens": 2305}]}
    assert run.crossover_text(1025, report) == "faster than vix-softmax from <= 1025 tokens"
    assert "from 2305 tokens" in run.crossover_text(2305, report)
    assert run.crossover_text(None, report).startswith("never")


@pytest.mark.parametrize("name, category", [
    ("aten::bmm", profile_step.GEMM), ("aten::addmm", profile_step.GEMM),
    ("aten::convolution_backward", profile_step.CONV),
    ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", profile_step.ATTENTION),
    ("aten::_softmax", profile_step.ATTENTION), ("aten::_log_softmax", profile_step.OTHER),
    ("aten::gelu_backward", profile_step.ACTIVATION), ("aten::native_layer_norm", profile_step.LAYER_NORM),
    ("aten::copy_", profile_step.COPY), ("aten::_conj", profile_step.COPY), ("aten::_fft_r2c", profile_step.FFT),
    ("aten::sum", profile_step.REDUCTION), ("aten::add_", profile_step.ELEMENTWISE),
    ("AddmmBackward0", profile_step.FRAMEWORK),
])
def test_op_categories(name, category):
    assert profile_step.category_of(name) == category


class TinyMixer(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.q_proj, self.o_proj = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x):
        return self.o_proj(torch.softmax(self.q_proj(x) @ x.transpose(-1, -2), -1) @ x)


class TinyModel(nn.Module):
    """The naming `profile_step` looks for: `layers.<i>.attention` is the token mixer."""

    def __init__(self, width=8):
        super().__init__()
        self.embed = nn.Linear(width, width)  # so that the mixer's input needs a gradient, as in a real model
        self.layers = nn.ModuleList([nn.ModuleDict({"attention": TinyMixer(width), "mlp": nn.Linear(width, width)})])
        self.head = nn.Linear(width, 3)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = x + layer["attention"](x)
            x = x + layer["mlp"](x).relu()
        return self.head(x.mean(1))


def test_profile_attributes_forward_and_backward_ops_to_their_part():
    torch.manual_seed(0)
    model, state = TinyModel(), {"in_mixer": False}
    profile_step.mark_mixers(model, hidden_size=8, state=state)
    optimizer = torch.optim.AdamW(model.parameters())
    pixels, labels = torch.randn(2, 5, 8), torch.tensor([0, 2])
    run_step = lambda: profile_step.train_step(model, optimizer, pixels, labels, torch.autocast("cpu", enabled=False))  # noqa: E731
    run_step()
    events, seconds, totals = profile_step.profile_steps(run_step, steps=2)
    summary = profile_step.summarize(events, seconds)
    regions = {region for (region, _), s in summary["by_region_category"].items()}
    for part in (profile_step.MIXER_CORE, profile_step.MIXER_PROJECTIONS, profile_step.REST):
        assert {f"{part}; forward", f"{part}; backward"} <= regions, part
    assert "optimizer" in regions and "outside" not in regions
    # the softmax (and its backward) belongs to the mixer core; the projections' GEMMs to the projections
    assert summary["by_region_category"][f"{profile_step.MIXER_CORE}; backward", profile_step.ATTENTION] > 0
    assert summary["by_region_category"][f"{profile_step.MIXER_PROJECTIONS}; backward", profile_step.GEMM] > 0
    assert summary["total"] <= min(totals) + 1e-9  # each op call's fastest: never more than a whole step
    # FLOPs per part: q and o projections, forward (2 GEMMs) and backward (4), 2 x 5 tokens x 8 x 8 each
    assert summary["flops_by_part"][profile_step.MIXER_PROJECTIONS] == 6 * 2 * 10 * 8 * 8


def test_saved_tensors_are_split_between_mixers_and_the_rest():
    model, state = TinyModel(), {"in_mixer": False}
    profile_step.mark_mixers(model, hidden_size=8, state=state)
    saved = profile_step.saved_tensor_mb(model, torch.randn(2, 5, 8), torch.tensor([0, 2]),
                                         torch.autocast("cpu", enabled=False), state)
    assert saved["mixers"] > 0 and saved["rest"] > 0


def test_bf16_training_comparison_flags_non_finite_values_and_measures_the_gap():
    from benchmarks import bf16_training

    fp32 = {"losses": {10: 2.0, 20: 1.0}, "grad_norms": {10: 1.0, 20: 1.0}, "test_accuracy": 0.9}
    bf16 = {"losses": {10: 2.2, 20: 1.0}, "grad_norms": {10: 1.0, 20: 1.0}, "test_accuracy": 0.8}
    row = bf16_training.compare(fp32, bf16)
    assert row["all_finite"] and row["logged_steps"] == 2
    assert row["max_abs_loss_gap"] == pytest.approx(0.2) and row["mean_abs_loss_gap"] == pytest.approx(0.1)
    bf16["grad_norms"][20] = float("nan")
    assert not bf16_training.compare(fp32, bf16)["all_finite"]
    assert "| **no** |" not in bf16_training.markdown({"fnet": row}, 20, "cmd")  # the finite run reads "yes"


def test_backbone_rows_compare_each_backbone_with_its_own_peer():
    """CvT rows divide by transformers' CvT, LeViT rows by transformers' LeViT, CCT rows by vit-pytorch's CCT."""
    def row(model, time):
        return {"model": model, "image_size": 64, "tokens": 256, "batch_size": 8, "parameters": 1,
                "train_flops": 1e9, "step_time_s": time, "peak_memory_mb": 100.0}

    results = [row("cvt-softmax", 2.0), row("cvt-nystrom", 1.0), row("transformers-cvt", 4.0),
               row("levit-performer", 3.0), row("transformers-levit", 6.0), row("cct-softmax", 1.0),
               row("vit-pytorch-cct", 0.5)]
    rows = {r["model"]: r for r in run.backbone_ratios(results)}
    assert set(rows) == {"cvt-softmax", "cvt-nystrom", "levit-performer", "cct-softmax"}  # peers are not rows
    assert rows["cvt-nystrom"]["time_vs_softmax"] == 0.5 and rows["cvt-nystrom"]["time_vs_peer"] == 0.25
    assert rows["levit-performer"]["time_vs_peer"] == 0.5 and "time_vs_softmax" not in rows["levit-performer"]
    assert rows["cct-softmax"]["time_vs_peer"] == 2.0
    assert [run.backbone_of(m) for m in ("transformers-levit", "vit-pytorch-pit", "cvt-linformer")] == \
        ["levit", "pit", "cvt"]


def test_compiled_runs_say_so_in_the_title():
    report = {**paper_report({"vix-softmax": 1.0}), "machine": {"cpu": "Test CPU", "cores": 2, "torch": "2"},
              "command": "python -m benchmarks.run --compile true", "ratios": {}}
    report["settings"]["compile"] = True
    assert "every model compiled" in run.markdown(report).splitlines()[0]


def test_runs_with_the_math_attention_path_say_so_in_the_title():
    report = {**paper_report({"vix-softmax": 1.0}), "machine": {"cpu": "Test CPU", "cores": 2, "torch": "2"},
              "command": "python -m benchmarks.run --sdpa_backend math", "ratios": {}}
    assert "sdpa_backend math" not in run.markdown(report).splitlines()[0]
    report["settings"]["sdpa_backend"] = "math"
    assert "sdpa_backend math" in run.markdown(report).splitlines()[0]


def test_the_measuring_process_runs_attention_under_the_backend_it_is_given(monkeypatch):
    """benchmarks.measure enters training.train's attention_backend with its --sdpa_backend, for the train step."""
    from benchmarks import measure

    entered = []

    def recording_backend(name):
        entered.append(name)
        return nullcontext()

    monkeypatch.setattr(measure, "attention_backend", recording_backend)
    result = measure.measure(measure.MeasureArguments(model="vix-softmax", image_size=8, batch_size=2, steps=1,
                                                      warmup_steps=0, measure_inference=False, sdpa_backend="math"))
    assert entered == ["math"] and result["sdpa_backend"] == "math"


def crossover_results(steps: dict, memory: dict) -> list[dict]:
    """Results as benchmarks.crossover records them: {(model, tokens): step seconds}, {(model, tokens): MB}."""
    return [{"model": model, "tokens": tokens, "batch_size": 1, "step_time_s": seconds,
             "peak_memory_mb": memory[model, tokens]} for (model, tokens), seconds in steps.items()]


def test_crossover_ratios_are_against_sdpa_at_the_same_token_count_and_the_crossover_must_hold_above():
    from benchmarks import crossover

    steps = {("hf-vit-sdpa", 65): 1.0, ("vix-nystrom", 65): 2.0,
             ("hf-vit-sdpa", 257): 1.0, ("vix-nystrom", 257): 0.8,  # faster here ...
             ("hf-vit-sdpa", 1025): 1.0, ("vix-nystrom", 1025): 1.25,  # ... but not here: no crossover at 257
             ("hf-vit-sdpa", 4097): 4.0, ("vix-nystrom", 4097): 1.0}
    memory = {key: 100.0 for key in steps} | {("vix-nystrom", 4097): 150.0}
    rows = crossover.ratios(crossover_results(steps, memory))
    by_tokens = {row["tokens"]: row for row in rows}
    assert set(by_tokens) == {65, 257, 1025, 4097}  # one row per mixer and size, the baseline is the peer
    assert by_tokens[4097]["speedup"] == 4.0 and by_tokens[4097]["memory_ratio"] == 1.5
    assert crossover.crossover_tokens(rows, "vix-nystrom", "speedup", lambda x: x > 1.0) == 4097
    assert crossover.crossover_tokens(rows, "vix-nystrom", "memory_ratio", lambda x: x <= 1.0) is None


def test_crossover_markdown_names_the_mode_and_the_first_paying_size():
    from benchmarks import crossover

    steps = {("hf-vit-sdpa", 1025): 1.0, ("vix-performer", 1025): 0.5}
    rows = crossover.ratios(crossover_results(steps, {key: 100.0 for key in steps}))
    report = {"machine": {"cpu": "Some CPU", "cores": 2, "cpu_capability": "AVX512", "torch": "2.13"},
              "command": "python -m benchmarks.crossover --compile true",
              "settings": {"compile": True, "dtype": "fp32", "tokens_per_batch": 16400},
              "results": crossover_results(steps, {key: 100.0 for key in steps}), "ratios": rows,
              "crossover": {"vix-performer": {"faster_from_tokens": 1025, "no_more_memory_from_tokens": 1025}}}
    text = crossover.markdown(report)
    assert "fp32, compiled" in text
    assert "| vix-performer | 1,025 | 1 | 0.500 | 1.000 | 2.00x |" in text
    assert "| vix-performer | 1,025 tokens | 1,025 tokens |" in text
