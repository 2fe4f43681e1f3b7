"""The LoRA-against-full table reads each run's own records (method from recipe.yaml, figures from metrics.json)."""

import json

import pytest

from benchmarks import fine_tuning_table


def write_run(folder, lora_r, trainable, accuracy):
    final = folder / "final"
    final.mkdir(parents=True)
    metrics = {"trainable_parameters": trainable, "num_parameters": 1000, "test_accuracy": accuracy,
               "best_validation_accuracy": accuracy - 0.01, "train_runtime": 12.3, "epochs": 1.0,
               "hardware": "Test CPU", "precision": "fp32", "cpu_capability": "AVX2", "dataset": "toy",
               "split_sizes": {"train": 8}}
    (final / "metrics.json").write_text(json.dumps(metrics))
    (final / "recipe.yaml").write_text(f"lora_r: {lora_r}\n" if lora_r else "learning_rate: 0.001\n")


def test_table_rows_come_from_each_runs_records(tmp_path, monkeypatch):
    write_run(tmp_path / "lora", 8, 30, 0.8)
    write_run(tmp_path / "full", 0, 1000, 0.9)
    saved = {}
    monkeypatch.setattr(fine_tuning_table, "save_report", lambda name, report, text: saved.update(text=text))
    fine_tuning_table.main(["--runs", str(tmp_path / "lora"), str(tmp_path / "full"), "--source", "ckpt"])
    assert "| LoRA r=8 | 30 (3.0%) | 80.00% | 79.00% | 12 s |" in saved["text"]
    assert "| full fine-tuning | 1,000 (100.0%) | 90.00% | 89.00% | 12 s |" in saved["text"]
    with pytest.raises(SystemExit) as exit_info:
        fine_tuning_table.main(["--runs", str(tmp_path / "missing"), "--source", "ckpt"])
    assert exit_info.value.code == 2
