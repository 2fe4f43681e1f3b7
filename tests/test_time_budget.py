"""--max_train_minutes (training/time_budget.py): the schedule over the budget against transformers' step schedules,
when the run stops, the scheduler's checkpoint, and a budgeted training run end to end."""

import json

import pytest
import torch
from transformers import TrainerControl, get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup

from test_training import TINY, Interrupt, checkpoint_totals
from training.time_budget import TimeBudget, budget_lr_factor
from training.train import main


class FakeTotals:
    """Stands in for RunTotals: the run's training seconds, set by the test."""

    def __init__(self, seconds: float = 0.0):
        self.seconds = seconds

    def train_seconds(self) -> float:
        return self.seconds


class Args:
    def __init__(self, strategy: str):
        self.eval_strategy = self.save_strategy = strategy


@pytest.mark.parametrize("decay, reference", [("cosine", get_cosine_schedule_with_warmup),
                                               ("linear", get_linear_schedule_with_warmup)])
@pytest.mark.parametrize("total, warmup", [(200, 10), (97, 0), (50, 25)])
def test_the_budget_schedule_is_transformers_step_schedule_on_the_fraction_spent(decay, reference, total, warmup):
    parameter = torch.nn.Parameter(torch.zeros(1))
    steps = reference(torch.optim.SGD([parameter], lr=1.0), num_warmup_steps=warmup, num_training_steps=total)
    for step in range(total + 1):
        expected = steps.lr_lambdas[0](step)
        assert budget_lr_factor(step / total, warmup / total, decay) == pytest.approx(expected, abs=1e-9), step


def test_the_run_stops_when_the_budget_less_the_last_evaluation_is_spent():
    totals = FakeTotals()
    budget = TimeBudget(1.0, totals, warmup_fraction=0.05, decay="cosine")  # 60 seconds
    totals.seconds = 50.0
    assert not budget.on_step_end(Args("epoch"), None, TrainerControl()).should_training_stop
    budget.reserve = 12.0  # an evaluation + checkpoint took 12 s: 50 + 12 leaves no room for the next one
    control = budget.on_step_end(Args("epoch"), None, TrainerControl())
    assert control.should_training_stop
    assert not control.should_evaluate and not control.should_save  # the epoch's end evaluates and saves
    control = budget.on_step_end(Args("steps"), None, TrainerControl())
    assert control.should_training_stop and control.should_evaluate and control.should_save


def test_the_scheduler_follows_the_clock_and_its_checkpoint_loads_without_pickle(tmp_path):
    totals = FakeTotals()
    budget = TimeBudget(2.0, totals, warmup_fraction=0.1, decay="cosine")  # 120 seconds
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=0.5)
    scheduler = budget.scheduler(optimizer)
    assert optimizer.param_groups[0]["lr"] == 0.0  # warm-up starts at zero
    for seconds in (6.0, 12.0, 60.0, 119.0, 130.0):
        totals.seconds = seconds
        optimizer.step()
        scheduler.step()
        expected = 0.5 * budget_lr_factor(min(1.0, seconds / 120), 0.1, "cosine")
        assert optimizer.param_groups[0]["lr"] == pytest.approx(expected)
    assert optimizer.param_groups[0]["lr"] == 0.0  # spent
    path = tmp_path / "scheduler.pt"
    saved = scheduler.state_dict()
    torch.save(saved, path)
    again = budget.scheduler(torch.optim.SGD([parameter], lr=0.5))
    again.load_state_dict(torch.load(path, weights_only=True))  # what Trainer writes and reads on resume
    assert again.last_epoch == scheduler.last_epoch == 5


@pytest.mark.parametrize("minutes, warmup", [(0.0, 0.1), (1.0, 1.0), (1.0, -0.1)])
def test_a_budget_that_cannot_schedule_is_refused(minutes, warmup):
    with pytest.raises(ValueError):
        TimeBudget(minutes, FakeTotals(), warmup_fraction=warmup, decay="cosine")
    with pytest.raises(ValueError, match="cosine, linear"):
        TimeBudget(1.0, FakeTotals(), warmup_fraction=0.1, decay="constant")


def test_a_budgeted_run_warms_up_decays_and_stops_inside_its_minutes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seconds = 4.0
    metrics = main(["--output_dir", str(tmp_path / "run"), "--max_train_minutes", str(seconds / 60),
                    "--num_train_epochs", "10000", "--max_train_samples", "64", "--max_eval_samples", "32",
                    "--per_device_train_batch_size", "16", "--eval_strategy", "epoch", "--save_strategy", "epoch",
                    "--load_best_model_at_end", "false", "--learning_rate", "1e-3", *TINY])
    assert metrics["epochs"] < 10000  # the budget stopped it, not the epoch count
    assert 0.5 * seconds <= metrics["train_runtime"] <= seconds + 2.0
    steps = metrics["global_steps"]
    assert (tmp_path / "run" / f"checkpoint-{steps}").is_dir()  # the last, partial epoch was checkpointed...
    assert metrics["validation_curve"][-1]["step"] == steps  # ...and evaluated
    state = json.loads((tmp_path / "run" / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    rates = [entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry]
    # a step schedule over 10000 epochs would still be warming up: the budget's went up to the peak and back down
    assert max(rates) >= 0.5e-3 and rates[-1] <= 0.1 * max(rates)


def test_a_killed_budgeted_run_resumes_on_the_clock_it_had_and_keeps_to_the_budget(tmp_path):
    seconds = 4.0
    flags = ["--output_dir", str(tmp_path / "run"), "--max_train_minutes", str(seconds / 60), "--warmup_steps", "0",
             "--num_train_epochs", "10000", "--max_train_samples", "64", "--max_eval_samples", "32",
             "--per_device_train_batch_size", "16", "--eval_strategy", "epoch", "--save_strategy", "epoch",
             "--load_best_model_at_end", "false", "--learning_rate", "1e-3", *TINY]
    with pytest.raises(KeyboardInterrupt):
        main(flags, callbacks=[Interrupt(at=10)])  # mid-epoch 3: checkpoint-8 holds the run so far
    before = checkpoint_totals(tmp_path / "run" / "checkpoint-8")["train_seconds"]
    metrics = main([*flags, "--resume_from_checkpoint", "last"])
    assert metrics["epochs"] < 10000
    assert before < metrics["train_runtime"] <= seconds + 2.0  # the whole run, the checkpoint's seconds included
    steps = metrics["global_steps"]
    state = json.loads((tmp_path / "run" / f"checkpoint-{steps}" / "trainer_state.json").read_text())
    rates = {entry["step"]: entry["learning_rate"] for entry in state["log_history"] if "learning_rate" in entry}
    # the clock came back with the checkpoint: with no warm-up the rate only falls, a restarted clock would jump
    # back to the peak
    resumed = [rate for step, rate in rates.items() if step > 8]
    assert resumed and max(resumed) <= rates[8]
    assert resumed[-1] <= 0.1 * max(rates.values())
