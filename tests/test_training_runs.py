"""What a training run may write and where it resumes from (training/runs.py): the model it loads and an earlier
run's checkpoints are never written over, `last` means the last complete checkpoint, and an `accelerate launch`
that started one process instead of several is refused. Bad settings end in one line and exit status 2."""

import json
from pathlib import Path

import pytest

from training.errors import UsageError
from training.runs import check_launch, last_complete_checkpoint, prepare_output_dir, resolve_resume
from training.train import main


TINY = ["--hidden_size", "16", "--num_hidden_layers", "1", "--num_attention_heads", "2", "--intermediate_size", "32",
        "--conv_stem_channels", "4", "8", "--nystrom_residual_conv_kernel", "3", "--image_size", "16",
        "--disable_tqdm", "true", "--report_to", "none"]


def snapshot(folder: Path) -> dict:
    """Every file under folder with its bytes and modification time."""
    return {str(path.relative_to(folder)): (path.read_bytes(), path.stat().st_mtime_ns)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def exits_with_usage_error(argv, capsys) -> str:
    """Run the job, expect exit status 2, return the one line it printed."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ")
    return err[-1]


@pytest.fixture(scope="module")
def earlier_run(tmp_path_factory):
    """A finished tiny run: checkpoints and final/."""
    out = tmp_path_factory.mktemp("earlier") / "vix-digits"
    main(["--output_dir", str(out), "--max_train_samples", "32", "--max_eval_samples", "16", "--max_steps", "2",
          *TINY])  # one step per epoch: checkpoint-1 and checkpoint-2
    assert (out / "final" / "model.safetensors").exists() and (out / "checkpoint-2").exists()
    return out


@pytest.mark.parametrize("output_dir", [".", "final", "final/inner"])
def test_fine_tuning_never_writes_into_or_over_the_model_it_loads(earlier_run, output_dir, capsys):
    """The README's old fine-tune command, without --output_dir, replaced final/ (its source) and deleted the
    source run's checkpoints. Now it stops before writing anything."""
    before = snapshot(earlier_run)
    line = exits_with_usage_error(["--model_name_or_path", str(earlier_run / "final"), "--output_dir",
                                   str(earlier_run / output_dir), "--ignore_mismatched_sizes", "true", *TINY], capsys)
    assert "overlaps --model_name_or_path" in line and "another --output_dir" in line
    assert snapshot(earlier_run) == before


def test_an_earlier_runs_checkpoints_are_not_deleted_without_consent(earlier_run, capsys):
    before = snapshot(earlier_run)
    line = exits_with_usage_error(["--output_dir", str(earlier_run), "--max_steps", "1", *TINY], capsys)
    assert "holds an earlier run (checkpoint-1, checkpoint-2, final)" in line
    assert "--resume_from_checkpoint last" in line and "--overwrite_output_dir true" in line
    assert snapshot(earlier_run) == before


def test_overwrite_output_dir_deletes_the_earlier_run_only(tmp_path):
    for name in ("checkpoint-3", "checkpoint-10", "final"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("mine")
    assert prepare_output_dir(tmp_path, None, None, overwrite=True, is_main_process=True) is None
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
    # the model being loaded is protected even then
    (tmp_path / "base_model").mkdir()
    with pytest.raises(UsageError, match="overlaps"):
        prepare_output_dir(tmp_path, str(tmp_path / "base_model"), None, overwrite=True, is_main_process=True)
    assert (tmp_path / "base_model").is_dir()


def make_checkpoint(folder: Path, step: int, complete: bool = True) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    if complete:
        (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return checkpoint


def test_last_means_the_last_complete_checkpoint(tmp_path):
    make_checkpoint(tmp_path, 5)
    good = make_checkpoint(tmp_path, 10)
    make_checkpoint(tmp_path, 15, complete=False)  # killed before trainer_state.json
    cut = make_checkpoint(tmp_path, 20)
    (cut / "trainer_state.json").write_text('{"global_st')  # killed while writing it
    (tmp_path / "checkpoint-25").mkdir()  # killed right after creating the folder
    no_weights = make_checkpoint(tmp_path, 30)
    (no_weights / "model.safetensors").unlink()
    assert last_complete_checkpoint(tmp_path) == good
    assert resolve_resume("last", tmp_path) == resolve_resume("true", tmp_path) == str(good)
    with pytest.raises(UsageError, match="no trainer_state.json.*--resume_from_checkpoint last"):
        resolve_resume(str(tmp_path / "checkpoint-15"), tmp_path)
    with pytest.raises(UsageError, match="no complete checkpoint"):
        resolve_resume("last", tmp_path / "empty")


@pytest.mark.parametrize("environ, refused", [
    # `accelerate launch --cpu --num_processes 2` (and `--num_processes 2` with one GPU): one process, MASTER_PORT set
    ({"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "True", "MASTER_ADDR": "127.0.0.1",
      "MASTER_PORT": "29500"}, True),
    # `accelerate launch --num_processes 1`: one process, as asked
    ({"ACCELERATE_MIXED_PRECISION": "no", "ACCELERATE_USE_CPU": "False"}, False),
    # `accelerate launch --multi_gpu --num_processes 2` (torchrun underneath) and plain torchrun
    ({"ACCELERATE_MIXED_PRECISION": "no", "MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "0"}, False),
    ({"MASTER_PORT": "29500", "WORLD_SIZE": "2", "RANK": "1"}, False),
    ({}, False),
])
def test_accelerate_launch_that_started_one_process_instead_of_several_is_refused(environ, refused):
    if refused:
        with pytest.raises(UsageError, match=r"accelerate launch --multi_gpu --num_processes N"):
            check_launch(environ)
    else:
        check_launch(environ)


def test_model_settings_that_cannot_work_are_one_line_and_exit_2(tmp_path, capsys):
    line = exits_with_usage_error(["--output_dir", str(tmp_path), "--attention_type", "fnet",
                                   "--position_embedding_type", "rope_1d"], capsys)
    assert "Invalid model settings for VixConfig" in line and "RoPE" in line
    line = exits_with_usage_error(["--output_dir", str(tmp_path), "--hidden_size", "30"], capsys)
    assert "hidden_size" in line
    assert not any(tmp_path.iterdir())  # refused before anything was written
