"""Settings that cannot train, refused when the flags are parsed, before anything is written.

transformers accepts e.g. `--num_train_epochs -1` (the run ends at step 0 and saves the untrained model, with a
card reporting its accuracy as the result) or `--learning_rate 0` (the weights never move). Each problem here is
one sentence for the job's `error:` line: what was given and what would train.
"""

import math

from .errors import UsageError


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def training_problems(training, data) -> list[str]:
    """Why these TrainingArguments and DataArguments cannot train, in flag order ([] when they can)."""
    problems = []
    if training.max_steps == 0 or training.max_steps < -1:
        problems.append(f"--max_steps {training.max_steps} trains no step: give a positive number of optimizer "
                        "steps, or -1 to train for --num_train_epochs")
    elif training.max_steps == -1 and not _positive_number(training.num_train_epochs):
        problems.append(f"--num_train_epochs {training.num_train_epochs} trains no step: give a positive number of "
                        "epochs (a fraction such as 0.5 works), or --max_steps N")
    for flag in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(training, flag) < 1:
            problems.append(f"--{flag} {getattr(training, flag)} must be 1 or more")
    if not _positive_number(training.learning_rate):
        problems.append(f"--learning_rate {training.learning_rate} cannot train: give a positive, finite rate "
                        "(e.g. 1e-3)")
    for flag in ("max_train_samples", "max_eval_samples"):
        value = getattr(data, flag)
        if value is not None and value < 1:
            problems.append(f"--{flag} {value} keeps no sample: give 1 or more, or leave it unset for all")
    for flag in ("validation_split_size", "test_split_size"):
        value = getattr(data, flag)
        if not 0 < value < 1:
            problems.append(f"--{flag} {value} must be a fraction between 0 and 1 (e.g. 0.1)")
    return problems


def check_training_settings(training, data) -> None:
    """Raise UsageError naming every setting that cannot train (one line)."""
    problems = training_problems(training, data)
    if problems:
        raise UsageError("; ".join(problems) + ".")
