"""A user's mistake on the training job's command line ends with one `error:` line, exit status 2 and nothing
written; defaults never make two runs collide. Parsing and data loading only: nothing here trains."""

import pytest
from PIL import Image

from training import train


def run_job(argv, capsys) -> str:
    """stderr of a job that must stop with exit status 2."""
    with pytest.raises(SystemExit) as exit_info:
        train.main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def one_error_line(err: str) -> str:
    """The one `error:` line, last (datasets' progress bars may come before it), and no traceback or usage."""
    lines = [line for line in err.strip().splitlines() if "examples/s]" not in line]  # datasets' progress bars
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_an_output_dir_that_is_a_file_is_refused(tmp_path, capsys):
    taken = tmp_path / "notes.txt"
    taken.write_text("mine")
    line = one_error_line(run_job(["--output_dir", str(taken)], capsys))
    assert "is a file" in line and taken.read_text() == "mine"
    inside = one_error_line(run_job(["--output_dir", str(taken / "run")], capsys))
    assert f"lies inside {taken}" in inside


@pytest.mark.parametrize("flags, named", [
    (["--num_train_epochs", "-1"], "--num_train_epochs -1"),
    (["--num_train_epochs", "0"], "--num_train_epochs 0"),
    (["--max_steps", "0"], "--max_steps 0"),
    (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size 0"),
    (["--per_device_eval_batch_size", "-4"], "--per_device_eval_batch_size -4"),
    (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps 0"),
    (["--learning_rate", "0"], "--learning_rate 0"),
    (["--learning_rate", "nan"], "--learning_rate nan"),
    (["--max_train_samples", "0"], "--max_train_samples 0"),
    (["--validation_split_size", "1.5"], "--validation_split_size 1.5"),
    (["--muon", "true", "--optim", "sgd"], "--optim sgd"),
    (["--max_train_minutes", "0"], "--max_train_minutes 0"),
    (["--max_train_minutes", "30", "--lr_scheduler_type", "constant"], "--lr_scheduler_type constant"),
    (["--max_train_minutes", "30", "--warmup_steps", "10"], "not 10 steps"),
])
def test_settings_that_cannot_train_are_refused_before_anything_is_written(tmp_path, capsys, flags, named):
    out = tmp_path / "run"
    line = one_error_line(run_job(["--output_dir", str(out), *flags], capsys))
    assert named in line
    assert not out.exists()


def test_a_positive_step_count_makes_epochs_irrelevant():
    settings = train.parse_args(["--output_dir", "unused", "--num_train_epochs", "0", "--max_steps", "3"])
    assert settings.training.max_steps == 3


@pytest.fixture(scope="module")
def one_class_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("one_class")
    (folder / "cat").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(folder / "cat" / f"{i}.png")
    return folder


@pytest.mark.parametrize("extra", [[], ["--label_column", "label"]])
def test_an_image_folder_with_one_class_says_so(one_class_folder, tmp_path, capsys, extra):
    out = tmp_path / "run"
    line = one_error_line(run_job(["--dataset_name", str(one_class_folder), "--output_dir", str(out), *extra], capsys))
    assert "a single sub-folder gives none" in line and "at least two classes" in line
    assert not out.exists()


def test_a_one_class_label_column_is_refused(tmp_path, capsys):
    from training.data import LabelError, check_label_count

    with pytest.raises(LabelError, match="one class \\('cat'\\).*at least two"):
        check_label_count(["cat"], "label", "pets")


def test_a_mistyped_choice_is_one_line_and_a_syntax_error_a_short_usage(capsys):
    line = one_error_line(run_job(["--attention_type", "nystorm"], capsys))
    assert "invalid choice: 'nystorm'" in line and "'nystrom'" in line
    lines = run_job(["--atention_type", "nystrom"], capsys).strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("usage: python -m training.train")
    assert lines[1] == "error: unrecognized arguments: --atention_type nystrom"


def test_default_output_folders_follow_model_and_data_and_never_collide(tmp_path, monkeypatch):
    """The quick start, then the README's CCN one-liner, then the quick start again, then a resume of it."""
    monkeypatch.chdir(tmp_path)
    quick_start = train.parse_args([]).training.output_dir
    assert quick_start == "outputs/vix-nystrom-digits"
    (tmp_path / quick_start / "final").mkdir(parents=True)  # what the quick start leaves
    ccn = train.parse_args(["--model_type", "vix_cct", "--attention_type", "nystrom", "--num_train_epochs", "2"])
    assert ccn.training.output_dir == "outputs/vix_cct-nystrom-digits"
    again = train.parse_args([]).training.output_dir
    assert again == "outputs/vix-nystrom-digits-2"
    (tmp_path / again / "checkpoint-5").mkdir(parents=True)
    assert train.parse_args(["--resume_from_checkpoint", "last"]).training.output_dir == again  # the latest run
    assert train.parse_args([]).training.output_dir == "outputs/vix-nystrom-digits-3"
    fine_tune = train.parse_args(["--model_name_or_path", f"{quick_start}/final", "--dataset_name", "data/pets"])
    assert fine_tune.training.output_dir == "outputs/vix-nystrom-digits-pets"
    assert train.recipe_dict(ccn)["output_dir"] == "outputs/vix_cct-nystrom-digits"  # recorded, re-runnable
