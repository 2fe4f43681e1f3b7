"""What a run may write, where it resumes from, and what it measures across resumes.

- `check_launch`: `accelerate launch` asked for several processes but started one (it does so silently).
- `default_output_dir`: without `--output_dir`, a folder named after the model and the data
  (`outputs/vix-nystrom-digits`), numbered (`-2`, `-3`, ...) when an earlier run holds it, so runs never collide.
- `prepare_output_dir`: never write into or over the model being loaded, never delete another run's
  checkpoints, and resolve `--resume_from_checkpoint last` to the last *complete* checkpoint.
- `RunTotals`: training time and mean training loss of the whole run, kept in every checkpoint's
  trainer_state.json, so a resumed run reports the whole run rather than its tail.
"""

import itertools
import json
import logging
import math
import os
import re
import shutil
import time
from pathlib import Path

from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .errors import UsageError


logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)
PROCESS_COUNT_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def check_launch(environ=os.environ) -> None:
    """Refuse a run that `accelerate launch` started as one process although more were asked for.

    accelerate 1.x starts several processes only through torchrun (`--multi_gpu`, implied with two or more GPUs)
    or MPI. Otherwise (`--cpu`, or one GPU) it starts one process, with no warning, and sets MASTER_PORT only
    because more were asked for; torchrun and MPI set a process count, which is then missing.
    """
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in environ
    asked_for_several = "MASTER_PORT" in environ
    started_several = any(name in environ for name in PROCESS_COUNT_VARIABLES)
    if launched_by_accelerate and asked_for_several and not started_several:
        raise UsageError(
            "accelerate launch started one process although --num_processes asked for more (it does so with --cpu or "
            "a single GPU). For several processes on CPU use `accelerate launch --multi_gpu --num_processes N "
            "-m training.train ... --use_cpu true` (gloo), or `torchrun --nproc_per_node N -m training.train ...`."
        )


def checkpoint_step(path: Path) -> int | None:
    match = CHECKPOINT_PATTERN.match(path.name)
    return int(match.group(1)) if match and path.is_dir() else None


def checkpoints(output_dir) -> list[Path]:
    """checkpoint-N folders of output_dir, by step."""
    folder = Path(output_dir)
    found = [path for path in folder.iterdir() if checkpoint_step(path) is not None] if folder.is_dir() else []
    return sorted(found, key=checkpoint_step)


def incomplete_reason(checkpoint: Path) -> str | None:
    """Why a checkpoint cannot be resumed from, or None when it can.

    The Trainer writes trainer_state.json last (after the weights, optimizer, scheduler and RNG states), so a
    readable one means the save finished; a kill during the save leaves it missing or cut short.
    """
    state = checkpoint / "trainer_state.json"
    if not state.is_file():
        return "no trainer_state.json"
    try:
        json.loads(state.read_text())
    except ValueError:
        return "trainer_state.json is cut short"
    if not any((checkpoint / name).is_file() for name in WEIGHT_FILES):
        return "no model weights"
    return None


def last_complete_checkpoint(output_dir) -> Path | None:
    """The highest-numbered checkpoint that a save finished writing (skipping, with a warning, any newer ones)."""
    for checkpoint in reversed(checkpoints(output_dir)):
        reason = incomplete_reason(checkpoint)
        if reason is None:
            return checkpoint
        logger.warning("Skipping incomplete %s (%s): the run was probably killed while saving it.", checkpoint, reason)
    return None


def resolve_resume(resume, output_dir) -> str | None:
    """--resume_from_checkpoint as a checkpoint folder: 'last'/'true' -> the last complete one in output_dir."""
    if resume is None or resume is False or (isinstance(resume, str) and resume.lower() in ("", "false")):
        return None
    if resume is True or resume.lower() in ("true", "last"):
        checkpoint = last_complete_checkpoint(output_dir)
        if checkpoint is None:
            raise UsageError(f"--resume_from_checkpoint last: no complete checkpoint in {output_dir}.")
        return str(checkpoint)
    reason = incomplete_reason(Path(resume)) if Path(resume).is_dir() else "no such folder"
    if reason:
        raise UsageError(
            f"--resume_from_checkpoint {resume}: cannot resume from it ({reason}); "
            "--resume_from_checkpoint last takes the last complete checkpoint."
        )
    return resume


def overlaps(a: Path, b: Path) -> bool:
    """Whether one folder is the other or inside it."""
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def earlier_run(output_dir) -> list[Path]:
    """What an earlier run left in output_dir: its checkpoints and final folder."""
    final = Path(output_dir) / "final"
    return checkpoints(output_dir) + ([final] if final.exists() else [])


def run_name(model: str, data: str) -> str:
    """`<model>-<data>` from a model ("vix-nystrom", a checkpoint folder or Hub id) and a dataset name or path."""

    def last_part(name: str) -> str:
        path = Path(os.path.normpath(name))
        return (path.parent.name if path.name == "final" and path.parent.name else path.name) or name

    data = "digits" if data == "sklearn:digits" else last_part(data)
    return re.sub(r"[^\w.-]+", "-", f"{last_part(model)}-{data}").strip("-").lower()


def default_output_dir(name: str, reuse_last: bool, root="outputs") -> Path:
    """`<root>/<name>`, or `<name>-2`, `-3`, ... when an earlier run holds it. `reuse_last` (resuming, or
    --overwrite_output_dir): the last of those folders that holds a run, so the same command finds it again."""
    base = Path(root) / name
    last_used = None
    for candidate in itertools.chain([base], (base.with_name(f"{name}-{n}") for n in itertools.count(2))):
        if not earlier_run(candidate):
            return (last_used or candidate) if reuse_last else candidate
        last_used = candidate
    raise AssertionError("unreachable: itertools.count never ends")


def check_writable_folder(output_dir) -> None:
    """Refuse an --output_dir that is, or lies inside, an existing file (the Trainer would fail mid-way)."""
    path = Path(output_dir)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == path else f"lies inside {folder}, a file"
                raise UsageError(f"--output_dir {output_dir} {what}, not a folder: pass a folder to write the run to.")
            return


def prepare_output_dir(output_dir, model_name_or_path, resume, overwrite: bool, is_main_process: bool) -> str | None:
    """Check (before anything is written) that this run may write to output_dir; returns the checkpoint to resume.

    The Trainer would otherwise write into any folder: save the new model over the one it loaded (fine-tuning
    from `<output_dir>/final`), and rotate away the checkpoints of an earlier run (`save_total_limit`).
    """
    check_writable_folder(output_dir)
    source = Path(model_name_or_path) if model_name_or_path else None
    if source is not None and source.is_dir() and overlaps(Path(output_dir), source):
        raise UsageError(
            f"--output_dir {output_dir} overlaps --model_name_or_path {model_name_or_path}: this run would write "
            "into or over the model it starts from. Pass another --output_dir."
        )
    checkpoint = resolve_resume(resume, output_dir)
    if checkpoint is not None:
        return checkpoint
    previous = earlier_run(output_dir)
    if previous and not overwrite:
        names = ", ".join(path.name for path in previous)
        raise UsageError(
            f"--output_dir {output_dir} holds an earlier run ({names}). Resume it with --resume_from_checkpoint last, "
            "pass another --output_dir, or pass --overwrite_output_dir true to delete that run first."
        )
    if previous and is_main_process:
        logger.warning("--overwrite_output_dir: deleting the earlier run's %s.", ", ".join(map(str, previous)))
        for path in previous:
            shutil.rmtree(path)
    return None


class RunTotals(TrainerCallback, ExportableState):
    """Training time and mean training loss of the whole run, across resumes.

    `state()` is stored in every checkpoint's trainer_state.json (the Trainer does that for `ExportableState`
    callbacks); a resumed run starts from the totals of the checkpoint it resumes. Time and loss after the last
    checkpoint of a killed session are not counted: that work was lost and is redone. The loss is the mean over
    steps: logged losses (each the mean since the previous log) weighted by the steps they cover, plus the
    Trainer's exact mean for this session. Steps between an earlier session's last log and its checkpoint are
    not covered; with `logging_steps` dividing `save_steps` there are none.
    """

    def __init__(self):
        self.seconds_before = 0.0  # from the checkpoint this session resumed
        self.loss_sum_before = 0.0
        self.loss_steps_before = 0
        self.session_start = self.session_end = None
        self.logged_sum = 0.0  # this session's logged losses, times the steps each covers
        self.logged_steps = 0
        self.last_logged_step = 0
        self.session_start_step = self.session_end_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        # a fresh run holds this callback's own zero state here; a resumed one the checkpoint's totals (or nothing,
        # for a checkpoint written before this callback existed: then the Trainer needs an entry to update)
        saved = state.stateful_callbacks.setdefault(type(self).__name__, self.state())
        attributes = saved.get("attributes", {}) if isinstance(saved, dict) else {}
        self.seconds_before = float(attributes.get("train_seconds", 0.0))
        self.loss_sum_before = float(attributes.get("loss_sum", 0.0))
        self.loss_steps_before = int(attributes.get("loss_steps", 0))
        self.session_start = time.perf_counter()
        self.last_logged_step = self.session_start_step = self.session_end_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and math.isfinite(logs["loss"]):
            steps = state.global_step - self.last_logged_step
            self.logged_sum += logs["loss"] * steps
            self.logged_steps += steps
            self.last_logged_step = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        self.session_end = time.perf_counter()
        self.session_end_step = state.global_step

    def session_seconds(self) -> float:
        if self.session_start is None:
            return 0.0
        return (self.session_end or time.perf_counter()) - self.session_start

    def train_seconds(self) -> float:
        """The whole run's training time so far: the checkpoint's total plus this session's."""
        return self.seconds_before + self.session_seconds()

    def state(self) -> dict:
        return {"args": {}, "attributes": {
            "train_seconds": self.train_seconds(),
            "loss_sum": self.loss_sum_before + self.logged_sum,
            "loss_steps": self.loss_steps_before + self.logged_steps,
        }}

    def whole_run(self, session_loss: float) -> dict:
        """{train_runtime, train_loss} of the whole run, given the Trainer's mean loss over this session's steps."""
        session_steps = self.session_end_step - self.session_start_step
        loss_sum = self.loss_sum_before + session_loss * session_steps
        loss_steps = self.loss_steps_before + session_steps
        return {
            "train_runtime": self.train_seconds(),
            "train_loss": loss_sum / loss_steps if loss_steps else None,
        }
