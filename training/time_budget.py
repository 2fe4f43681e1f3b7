"""`--max_train_minutes`: train for a wall-clock budget instead of a number of epochs.

The budget is on the clock of metrics.json's `train_runtime` (`RunTotals`: the whole run's training time,
evaluations and checkpoints included, summed across resumes). It changes two things:

- The learning-rate schedule follows the fraction of the budget spent, not the step count: warm-up over the first
  `--warmup_steps` fraction of the budget, then `--lr_scheduler_type` (cosine or linear) down to zero when the budget
  is spent, however fast the machine runs that day. A step-count schedule fixed in advance either stops short of the
  budget on a fast machine or runs over it on a slow one.
- Training stops once what is left of the budget would not hold one more evaluation and checkpoint (the longest seen
  so far); that last, partial epoch is evaluated and checkpointed like any other, so the best-checkpoint choice
  covers it. `--num_train_epochs` (or `--max_steps`) stays an upper bound.

A budgeted run is not reproducible step for step: how many steps fit, and the learning rate each one gets, follow
the machine's speed.
"""

import math
import time

from torch.optim.lr_scheduler import LambdaLR
from transformers import Trainer, TrainerCallback

from .runs import RunTotals


BUDGET_SCHEDULES = ("cosine", "linear")


def check_time_budget(minutes: float, warmup_fraction: float, decay: str) -> None:
    """A budget needs positive minutes, a warm-up given as a fraction of it and a decay it can stretch; ValueError
    naming the flag otherwise."""
    if not minutes > 0:  # also NaN
        raise ValueError(f"--max_train_minutes {minutes} is not a budget: give a positive number of minutes.")
    if decay not in BUDGET_SCHEDULES:
        raise ValueError(f"--max_train_minutes decays the learning rate over the budget, which --lr_scheduler_type "
                         f"{decay} does not: use one of {', '.join(BUDGET_SCHEDULES)}.")
    if not 0 <= warmup_fraction < 1:
        unit = " steps" if warmup_fraction >= 1 else ""
        raise ValueError(f"--max_train_minutes warms up over a fraction of the budget: give --warmup_steps as a "
                         f"fraction in [0, 1) (e.g. 0.05), not {warmup_fraction:g}{unit}.")


def budget_lr_factor(spent: float, warmup_fraction: float, decay: str) -> float:
    """The learning rate's multiplier once `spent` (0 to 1) of the budget is used: linear warm-up over the first
    `warmup_fraction`, then `decay` ("cosine" or "linear") to zero at 1. transformers' step schedules of the same
    names, with steps replaced by the fraction of the budget."""
    if spent < warmup_fraction:
        return spent / warmup_fraction
    progress = min(1.0, (spent - warmup_fraction) / (1.0 - warmup_fraction))
    if decay == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if decay == "linear":
        return 1.0 - progress
    raise ValueError(f"a time budget decays with one of {', '.join(BUDGET_SCHEDULES)}, not {decay!r}")


class TimeBudget(TrainerCallback):
    """Stops training when the budget is spent; `scheduler()` gives the learning-rate schedule that follows it."""

    def __init__(self, minutes: float, totals: RunTotals, warmup_fraction: float, decay: str):
        check_time_budget(minutes, warmup_fraction, decay)
        self.seconds = 60.0 * minutes
        self.totals = totals
        self.warmup_fraction, self.decay = warmup_fraction, decay
        self.reserve = 0.0  # seconds: the longest evaluation + checkpoint after a step seen so far
        self.last_step_end = None

    def spent(self) -> float:
        """The fraction of the budget used so far (0 to 1)."""
        return min(1.0, self.totals.train_seconds() / self.seconds)

    def scheduler(self, optimizer) -> LambdaLR:
        # a plain function (not a bound method or callable object), so the scheduler's state_dict stores no
        # reference to this callback: the schedule's state is the run's time, which RunTotals checkpoints
        return LambdaLR(optimizer, lambda _step: budget_lr_factor(self.spent(), self.warmup_fraction, self.decay))

    def on_step_end(self, args, state, control, **kwargs):
        self.last_step_end = time.perf_counter()
        if self.totals.train_seconds() + self.reserve >= self.seconds:
            control.should_training_stop = True
            # the epoch strategies evaluate and save at the end of the (now partial) epoch; the step ones must now
            control.should_evaluate = control.should_evaluate or args.eval_strategy == "steps"
            control.should_save = control.should_save or args.save_strategy == "steps"
        return control

    def _after_step(self):
        if self.last_step_end is not None:
            self.reserve = max(self.reserve, time.perf_counter() - self.last_step_end)

    def on_evaluate(self, args, state, control, **kwargs):
        self._after_step()

    def on_save(self, args, state, control, **kwargs):
        self._after_step()


class TimeBudgetTrainer(Trainer):
    """A Trainer whose learning-rate schedule follows a `TimeBudget` (`create_scheduler` is the Trainer's hook for a
    schedule of one's own) and which the budget stops (it is added to the Trainer's callbacks)."""

    def __init__(self, *args, time_budget: TimeBudget, **kwargs):
        super().__init__(*args, **kwargs)
        self.time_budget = time_budget
        self.add_callback(time_budget)

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = self.time_budget.scheduler(optimizer if optimizer is not None else self.optimizer)
            self._created_lr_scheduler = True  # as Trainer's own: a later train() call builds a fresh one
        return self.lr_scheduler


__all__ = ["BUDGET_SCHEDULES", "TimeBudget", "TimeBudgetTrainer", "budget_lr_factor", "check_time_budget"]
