"""`--precision auto|bf16|fp16|fp32`: the mixed precision of a training run, by default chosen from the hardware.

bf16 autocast pays only where the device computes in bf16 natively: GPUs of compute capability 8+ (Ampere on), and
CPUs with the AVX512-BF16 or AMX-BF16 instructions. Elsewhere bf16 matmuls and convs fall to slow paths (measured:
a CPU recipe ran 9x slower per step in bf16 than in fp32 on an AVX2-only AMD EPYC). So `auto` is bf16 only where
it is native: on a GPU without it fp16, on a CPU without it fp32. An explicit choice runs as asked.

transformers' TrainingArguments refuse bf16 without a GPU unless `use_cpu` is set. On a machine with no accelerator
that flag changes nothing else (the Trainer trains on the CPU either way), so where bf16 is chosen there, `use_cpu` is
set for the run (`Precision.use_cpu`) and the reason says so; it is not written to recipe.yaml. On a machine with an
accelerator, `auto` picks bf16 for the CPU only when `--use_cpu true` asks to train on the CPU.

`--bf16` / `--fp16` (TrainingArguments) still work: given with `--precision auto` they decide, as they did before
`--precision` existed; given with an explicit `--precision`, they must agree with it.
"""

from pathlib import Path
from typing import NamedTuple

import torch

from .errors import UsageError


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # the x86 bf16 instructions, as /proc/cpuinfo names them


def read_cpu_flags(path="/proc/cpuinfo") -> frozenset:
    """The CPU's feature flags from /proc/cpuinfo (Linux x86); empty where there is no such file or line."""
    try:
        text = Path(path).read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):  # every core lists the same flags: the first line is enough
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_bf16_flag(flags) -> str | None:
    """The native bf16 instruction set among `flags` (avx512_bf16 first), or None."""
    return next((flag for flag in NATIVE_BF16_FLAGS if flag in flags), None)


def cpu_precision_info(read_flags=read_cpu_flags) -> dict:
    """What decides CPU speed in bf16, for metrics.json and the benchmark reports: torch's kernel level
    (DEFAULT, AVX2, AVX512, ...) and whether the CPU has native bf16 instructions."""
    return {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_native_bf16": cpu_bf16_flag(read_flags()) is not None}


def cpu_only_machine() -> bool:
    """Whether torch sees no accelerator at all (no CUDA, MPS, XPU, ...): the Trainer trains on the CPU anyway."""
    return not torch.accelerator.is_available()


def native_cuda_bf16() -> bool:
    """Whether the current GPU computes bf16 natively (not torch's emulation on pre-Ampere GPUs)."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


class Precision(NamedTuple):
    name: str  # what runs: bf16, fp16 or fp32
    reason: str  # one line: why
    record: dict  # the metrics.json keys: precision, precision_requested, precision_reason, cpu_capability, ...
    use_cpu: bool = False  # TrainingArguments need use_cpu=True for this (bf16 on a CPU-only machine)


def contradiction(name: str, bf16: bool | None, fp16: bool | None) -> str | None:
    """The first given --bf16/--fp16 that disagrees with running `name` (None: not given), as a flag."""
    for flag, value in (("bf16", bf16), ("fp16", fp16)):
        if value is not None and value != (name == flag):
            return f"--{flag} {str(value).lower()}"
    return None


def choose(requested: str, device: str, bf16, fp16, use_cpu: bool, flags, cuda_bf16) -> tuple[str, str]:
    """(precision, reason) for `requested` on `device` ("cuda" or "cpu"), given --bf16/--fp16 (None: not given).
    `use_cpu`: whether the Trainer may train bf16 on the CPU (--use_cpu true, or a machine without accelerator)."""
    if bf16 and fp16:
        raise UsageError("--bf16 true and --fp16 true: choose one (or use --precision).")
    if requested != "auto":
        if given := contradiction(requested, bf16, fp16):
            raise UsageError(f"--precision {requested} contradicts {given} (from the recipe or a flag): drop one.")
        slow = device == "cpu" and requested == "bf16" and cpu_bf16_flag(flags) is None
        return requested, f"--precision {requested}" + (
            "; this CPU has no native bf16, so its bf16 matmuls and convs run on slow paths" if slow else "")
    if bf16 is not None or fp16 is not None:  # the flags of old recipes and commands decide, as before
        name = "bf16" if bf16 else "fp16" if fp16 else "fp32"
        given = ", ".join(f"--{flag} {str(value).lower()}" for flag, value in (("bf16", bf16), ("fp16", fp16))
                          if value is not None)
        return name, f"auto: {given} given"
    if device == "cuda":
        if cuda_bf16():
            return "bf16", "auto: the GPU computes bf16 natively, compute capability 8.0 or above"
        return "fp16", "auto: the GPU has no native bf16, compute capability below 8.0"
    # no parentheses in these reasons: the model card shows them as "fp32 (<reason>)"
    capability = f"torch capability {torch.backends.cpu.get_cpu_capability()}"
    flag = cpu_bf16_flag(flags)
    if not flags:
        return "fp32", f"auto: no CPU flags to read (no /proc/cpuinfo), {capability}; bf16 may be slow here"
    if flag is None:
        return "fp32", f"auto: CPU has no {' or '.join(NATIVE_BF16_FLAGS)}, {capability}; bf16 would be slow"
    if not use_cpu:  # an accelerator is present but the run is on the CPU: only --use_cpu true makes that bf16
        return "fp32", f"auto: CPU has {flag}, but transformers trains bf16 on a CPU only with --use_cpu true"
    return "bf16", f"auto: CPU has {flag}, {capability}"


def resolve_precision(requested: str = "auto", device: str = "cpu", *, bf16: bool | None = None,
                      fp16: bool | None = None, use_cpu: bool = True, cpu_only=cpu_only_machine,
                      read_flags=read_cpu_flags, cuda_bf16=native_cuda_bf16) -> Precision:
    """The precision a run uses. `device`: "cuda" or "cpu", where the Trainer will train; `bf16` / `fp16`: the
    TrainingArguments flags as given (None: not given); `use_cpu`: --use_cpu as given; `cpu_only`, `read_flags`
    and `cuda_bf16` read the hardware (tests pass their own). A contradiction between `requested` and the flags is
    a UsageError. bf16 on a CPU-only machine comes with `use_cpu=True`, which TrainingArguments need for it."""
    if requested not in PRECISIONS:
        raise UsageError(f"--precision {requested}: choose one of {', '.join(PRECISIONS)}.")
    flags = read_flags()
    set_use_cpu = device == "cpu" and not use_cpu and cpu_only()
    name, reason = choose(requested, device, bf16, fp16, use_cpu or set_use_cpu, flags, cuda_bf16)
    set_use_cpu = set_use_cpu and name == "bf16"
    if set_use_cpu:
        reason += "; use_cpu set, which transformers needs for bf16 without a GPU"
    record = {"precision": name, "precision_requested": requested, "precision_reason": reason,
              **cpu_precision_info(lambda: flags)}
    return Precision(name, reason, record, set_use_cpu)
