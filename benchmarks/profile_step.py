"""Profile full AdamW train steps of one benchmark model: where the time of a step goes.

    python -m benchmarks.profile_step --model vix-nystrom
    python -m benchmarks.profile_step --model vix-nystrom --dtype bf16 --batch 16

Builds the model with `benchmarks.models`, warms up, times a few steps without the profiler, then profiles a few
steps with `torch.profiler` (CPU) and writes `benchmarks/results/profile_<model>_<dtype>.md`:

- the step split into parts: the token mixers' core (forward and its backward), their q/k/v/out projections,
  ViX Nystrom's pseudo-inverse, the rest (embedding, LayerNorms, MLPs, head, loss) and the optimizer; all but
  the core and the pinv is what no change to the mixer removes;
- self time by category (GEMM, conv, attention kernels, activations, LayerNorm, copies, ...), and the top ops;
- FLOPs (torch's `FlopCounterMode` as in the benchmark; per part and per GEMM shape from the profiler, with
  `benchmarks.measure`'s formulas for the CPU flash-attention kernels) and the GFLOP/s they run at, against a
  large matmul timed in the same process;
- the tensors saved for backward (the bulk of peak memory), in the mixers and elsewhere.

Other processes may share the machine (`--threads 1` keeps this one to one core). They can only add time, so
each op call's time is its smallest over the profiled steps; the report gives the unprofiled step beside it.
"""

import os
import re
import statistics
import sys
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from benchmarks.models import BenchSize, build
from model_cards.measure import cpu_flash_attention_backward_flops, cpu_flash_attention_flops, flop_counter


RESULTS_DIR = Path(__file__).resolve().parent / "results"

# The token mixer of each layer: `layers.<i>.attention` in ViX and transformers' ViT, `layers.<i>.0.fn` (the
# attention inside PreNorm) in the authors' vision-xformer models.
MIXER_NAME = re.compile(r"layers\.\d+\.(attention|0\.fn)$")


@dataclass
class ProfileArguments:
    model: str = field(metadata={"help": "a name from benchmarks.models.BUILDERS"})
    dtype: str = field(default="fp32", metadata={"help": "fp32 or bf16 (autocast)"})
    batch_size: int = field(default=16, metadata={"aliases": ["--batch"]})
    image_size: int = 32
    warmup_steps: int = 2
    timed_steps: int = 4
    profiled_steps: int = field(default=4, metadata={"help": "the report keeps each op call's fastest of these"})
    threads: int = field(default=0, metadata={"help": "torch intra-op threads (0: torch's default)"})
    top: int = 25
    output: str = field(default="", metadata={"help": "default: benchmarks/results/profile_<model>_<dtype>.md"})


# ---------------------------------------------------------------------------------------------------------------
# Marking the mixers, running steps
# ---------------------------------------------------------------------------------------------------------------


def mixer_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    mixers = {name: module for name, module in model.named_modules() if MIXER_NAME.search(name)}
    if not mixers:
        raise ValueError(f"no token mixer found in {type(model).__name__} (pattern {MIXER_NAME.pattern})")
    return mixers


def projections(mixer: torch.nn.Module, hidden_size: int) -> list[str]:
    """The mixer's Linear layers on the model width (q, k, v, out): every attention variant pays for them, so
    they are split from the rest of the mixer, its core. Linformer's token projections (N -> k) stay in the core."""
    return [name for name, module in mixer.named_modules()
            if isinstance(module, torch.nn.Linear) and hidden_size in (module.in_features, module.out_features)]


def in_range(function, name: str, state: dict | None = None):
    """`function` run inside a profiler range (and with `state` flagged meanwhile, for the saved tensors).
    The backward of its ops is attributed afterwards through autograd's sequence numbers."""
    def wrapped(*args, **kwargs):
        if state is not None:
            state["in_mixer"] = True
        try:
            with record_function(name):
                return function(*args, **kwargs)
        finally:
            if state is not None:
                state["in_mixer"] = False

    return wrapped


def mark_mixers(model: torch.nn.Module, hidden_size: int, state: dict) -> None:
    for mixer in mixer_modules(model).values():
        mixer.forward = in_range(mixer.forward, MIXER_CORE, state)
        for name in projections(mixer, hidden_size):
            linear = mixer.get_submodule(name)
            linear.forward = in_range(linear.forward, MIXER_PROJECTIONS)
        kernel = getattr(mixer, "kernel", None)  # ViX's attention kernel, beside the module's projections
        if hasattr(kernel, "pseudo_inverse"):  # ViX Nystrom's m x m pinv iteration: its cost does not depend on N
            kernel.pseudo_inverse = in_range(kernel.pseudo_inverse, PINV)
            mark_nystrom_pinv_steps()


def mark_nystrom_pinv_steps() -> None:
    """ViX Nystrom's training node runs its pinv iteration (forward, recompute, backward) through these two
    functions of `nystrom_vix` (looked up at call time, so wrapping the module's names reaches them)."""
    from modeling_vix import nystrom_vix

    for name in ("pinv_steps", "pinv_backward"):
        function = getattr(nystrom_vix, name)
        if not getattr(function, "marked_as_pinv", False):
            wrapped = in_range(function, PINV)
            wrapped.marked_as_pinv = True
            setattr(nystrom_vix, name, wrapped)


def train_step(model, optimizer, pixels, labels, autocast) -> None:
    """One step as `benchmarks.measure` times it, in named ranges so each op can be put in its phase."""
    with record_function("forward"), autocast:
        loss = torch.nn.functional.cross_entropy(model(pixels), labels)
    with record_function("backward"):
        loss.backward()
    with record_function("optimizer"):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def time_steps(steps: int, run_step) -> list[float]:
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - start)
    return times


# ---------------------------------------------------------------------------------------------------------------
# Categories and regions of profiled events
# ---------------------------------------------------------------------------------------------------------------

CATEGORIES = (
    "GEMM (mm, bmm, addmm, linear, matmul)",
    "conv",
    "attention kernels (softmax, sdpa)",
    "FFT",
    "activations (gelu, relu, ...)",
    "layer_norm",
    "elementwise arithmetic (add, mul, exp, dropout, ...)",
    "copies, reshapes, cat, allocation",
    "reductions (sum, mean, max, norm)",
    "optimizer (AdamW)",
    "framework (Python, autograd, ranges)",
    "other aten ops",
)
(GEMM, CONV, ATTENTION, FFT, ACTIVATION, LAYER_NORM, ELEMENTWISE, COPY, REDUCTION, OPTIMIZER, FRAMEWORK,
 OTHER) = CATEGORIES

GEMM_OPS = {"mm", "bmm", "addmm", "baddbmm", "addbmm", "matmul", "linear", "einsum", "dot", "mv", "addmv",
            "_addmm_activation"}
ACTIVATION_OPS = {"gelu", "gelu_backward", "relu", "relu_", "threshold_backward", "silu", "silu_backward", "sigmoid",
                  "sigmoid_backward", "tanh", "tanh_backward", "elu", "elu_backward"}
REDUCTION_OPS = {"sum", "mean", "amax", "amin", "max", "min", "norm", "linalg_vector_norm", "var", "std", "var_mean",
                 "cumsum", "logsumexp", "prod", "argmax", "argmin", "sum_to_size"}
COPY_OPS = {"copy_", "clone", "contiguous", "_to_copy", "to", "cat", "stack", "view", "reshape", "_reshape_alias",
            "permute", "transpose", "t", "expand", "expand_as", "as_strided", "select", "slice", "unsqueeze",
            "squeeze", "flatten", "unflatten", "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones",
            "ones_like", "full", "new_zeros", "new_empty", "new_empty_strided", "new_ones", "zero_", "fill_",
            "index_select", "index", "split", "split_with_sizes", "chunk", "unbind", "narrow", "pad",
            "constant_pad_nd", "_unsafe_view", "detach", "detach_", "alias", "resize_", "lift_fresh", "repeat",
            "unfold", "roll", "movedim", "resolve_conj", "resolve_neg", "_conj", "real", "view_as_real", "view_as",
            "type_as", "slice_backward", "select_backward", "unsafe_split", "_unsafe_split", "expand_copy"}
ELEMENTWISE_OPS = {"add", "add_", "mul", "mul_", "sub", "sub_", "rsub", "div", "div_", "exp", "exp_", "neg", "pow",
                   "sqrt", "rsqrt", "clamp", "clamp_", "clamp_min", "where", "addcmul", "addcmul_", "addcdiv_",
                   "lerp_", "reciprocal", "abs", "sign", "log", "square", "masked_fill", "masked_fill_", "dropout",
                   "native_dropout", "native_dropout_backward", "eq", "ne", "gt", "lt", "ge", "le", "bitwise_not",
                   "sqrt_", "maximum", "minimum"}


def category_of(name: str) -> str:
    """Category of a profiled op by its name (self time only, so nothing is counted twice)."""
    if not name.startswith("aten::"):
        return FRAMEWORK  # record_function ranges, autograd nodes, custom autograd Functions: Python and bookkeeping
    op = name[len("aten::"):]
    if op in GEMM_OPS:
        return GEMM
    if "conv" in op and "conj" not in op:
        return CONV
    if ("softmax" in op and "log_softmax" not in op) or "scaled_dot_product" in op or "flash_attention" in op:
        return ATTENTION
    if op.startswith("_fft") or op.startswith("fft_"):
        return FFT
    if op in ACTIVATION_OPS:
        return ACTIVATION
    if "layer_norm" in op:
        return LAYER_NORM
    if op in ELEMENTWISE_OPS:
        return ELEMENTWISE
    if op in COPY_OPS:
        return COPY
    if op in REDUCTION_OPS:
        return REDUCTION
    return OTHER


MIXER_CORE, PINV, MIXER_PROJECTIONS, REST = "mixer core", "mixer core: pinv", "mixer projections", "rest"
MARKED = (MIXER_CORE, PINV, MIXER_PROJECTIONS)  # the ranges put around forwards
CORE_PARTS = (MIXER_CORE, PINV)  # what a different mixer could remove
PARTS = (MIXER_CORE, PINV, MIXER_PROJECTIONS, REST, "optimizer")
REGIONS = tuple(f"{part}; {phase}" for part in PARTS[:4] for phase in ("forward", "backward")) + (
    "optimizer", "outside"
)
BACKWARD_NODE = "autograd::engine::evaluate_function: "


def forward_parts(events) -> dict[int, str]:
    """Autograd sequence number -> part (mixer core or projections) of the forward ops run inside a marked range:
    the backward node of each such op carries the same number."""
    parts = {}
    for event in events:
        if event.sequence_nr >= 0:
            part = next((a.name for a in ancestors(event) if a.name in MARKED), None)
            if part is not None:
                parts[event.sequence_nr] = part
    return parts


def ancestors(event):
    """The event itself, then its enclosing events outward."""
    while event is not None:
        yield event
        event = event.cpu_parent


def region_of(event, parts: dict[int, str]) -> str:
    """The innermost enclosing range decides (a projection sits inside its mixer)."""
    for ancestor in ancestors(event):
        if ancestor.name in MARKED:
            return f"{ancestor.name}; forward"
        if ancestor.name.startswith(BACKWARD_NODE):
            return f"{parts.get(ancestor.sequence_nr, REST)}; backward"
        if ancestor.name in ("forward", "backward"):  # "backward": the engine's own time outside any node
            return f"{REST}; {ancestor.name}"
        if ancestor.name == "optimizer":
            return "optimizer"
    return "outside"


def part_of(region: str) -> str:
    return region.split("; ")[0]


def event_flops(event) -> float:
    """FLOPs of one profiled call: the profiler's own count for GEMMs and convs, and for the CPU flash-attention
    kernels (which it does not count) `benchmarks.measure`'s formulas on the recorded input shapes."""
    if event.name == "aten::_scaled_dot_product_flash_attention_for_cpu":
        return cpu_flash_attention_flops(*event.input_shapes)
    if event.name == "aten::_scaled_dot_product_flash_attention_for_cpu_backward":
        return cpu_flash_attention_backward_flops(*event.input_shapes)
    return event.flops or 0


def summarize(events, self_seconds: list[float]) -> dict:
    """Self CPU seconds of one step (`self_seconds[i]` for `events[i]`) by (op, category), by category, by
    region, and by region and category. An op's category is its name's, except inside the optimizer, where
    every op counts as optimizer."""
    parts = forward_parts(events)
    by_op, by_category, by_region = defaultdict(float), defaultdict(float), defaultdict(float)
    by_region_category, flops_by_part = defaultdict(float), defaultdict(float)
    op_calls, by_shape = defaultdict(int), defaultdict(lambda: [0, 0.0, 0.0])  # calls, seconds, FLOPs
    for event, seconds in zip(events, self_seconds, strict=True):
        region = region_of(event, parts)
        category = OPTIMIZER if region == "optimizer" else category_of(event.name)
        by_op[event.name, category] += seconds
        op_calls[event.name, category] += 1
        by_category[category] += seconds
        by_region[region] += seconds
        by_region_category[region, category] += seconds
        if category in (GEMM, CONV, ATTENTION):
            flops = event_flops(event)
            flops_by_part[part_of(region)] += flops
            shapes = " ".join("x".join(map(str, shape)) for shape in event.input_shapes if shape)
            entry = by_shape[event.name, shapes, part_of(region)]
            entry[0], entry[1], entry[2] = entry[0] + 1, entry[1] + seconds, entry[2] + flops
    return {
        "flops_by_part": dict(flops_by_part), "by_shape": dict(by_shape),
        "total": sum(by_op.values()), "by_op": dict(by_op), "op_calls": dict(op_calls),
        "by_category": dict(by_category), "by_region": dict(by_region), "by_region_category": dict(by_region_category),
    }


# ---------------------------------------------------------------------------------------------------------------
# FLOPs and saved tensors
# ---------------------------------------------------------------------------------------------------------------


def count_flops(model, pixels, labels) -> dict:
    """FLOPs of one forward + backward, in all and by category (as in `category_of`)."""
    counter = flop_counter()
    with counter:
        torch.nn.functional.cross_entropy(model(pixels), labels).backward()
    model.zero_grad(set_to_none=True)
    counts = counter.get_flop_counts()
    by_category = defaultdict(float)
    for op, flops in counts["Global"].items():
        by_category[category_of("aten::" + str(op).removeprefix("aten."))] += flops
    return {"total": float(counter.get_total_flops()), "by_category": dict(by_category)}


def saved_tensor_mb(model, pixels, labels, autocast, state) -> dict:
    """MB of distinct storages that autograd saves for backward in one forward, by where they are first saved
    (in a mixer or elsewhere). Parameters are left out: they are held whatever the mixer."""
    seen = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {"mixers": 0.0, "rest": 0.0}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            saved["mixers" if state["in_mixer"] else "rest"] += storage.nbytes() / 2**20
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        loss = torch.nn.functional.cross_entropy(model(pixels), labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return saved


# ---------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------


def percent(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def part_seconds(summary: dict, part: str) -> float:
    return sum(seconds for region, seconds in summary["by_region"].items() if part_of(region) == part)


def markdown(args: ProfileArguments, facts: dict) -> str:
    summary, flops = facts["summary"], facts["flops"]
    total, step = summary["total"], facts["step_time_s"]
    tokens = BenchSize(image_size=args.image_size).num_tokens
    core = sum(part_seconds(summary, part) for part in CORE_PARTS)
    lines = [
        f"# Profile: {args.model}, {args.dtype}, {tokens} tokens, batch {args.batch_size}, one AdamW train step",
        "",
        f"Command: `{facts['command']}`; torch {torch.__version__}, {torch.get_num_threads()} threads. "
        f"Per-step figures: each op call's smallest self time over {args.profiled_steps} profiled steps (the "
        f"steps in full: {', '.join(f'{t:.3f}' for t in facts['profiled_totals'])} s), after {args.warmup_steps} "
        "warm-up steps; other processes can only add time to an op. "
        f"Load average when it started: {facts['load_average']:.2f} (other processes share this machine).",
        "",
        f"- Unprofiled step, fastest of {args.timed_steps}: **{step:.3f} s** (median {facts['step_median_s']:.3f} s); "
        f"profiled step (sum of the fastest op calls): {total:.3f} s. Shares below are of the profiled step.",
        f"- FLOPs of forward + backward (torch's FlopCounterMode, as in the benchmark): {flops['total'] / 1e9:.1f} "
        f"GFLOP ({sum(summary['flops_by_part'].values()) / 1e9:.1f} counted from the profiled GEMM, conv and "
        f"attention-kernel calls); whole step: {flops['total'] / total / 1e9:.0f} GFLOP/s at the profiled time "
        f"({flops['total'] / step / 1e9:.0f} at the fastest unprofiled); a 2048 x 2048 {args.dtype} matmul in this "
        f"process, fastest of 10: **{facts['matmul_gflops']:.0f} GFLOP/s** (the ceiling).",
        f"- Saved for backward (what drives peak memory): {facts['saved']['mixers']:.0f} MB first saved in the mixers, "
        f"{facts['saved']['rest']:.0f} MB elsewhere (parameters excluded).",
        f"- **All but the mixer core: {total - core:.3f} s of the profiled step ({percent(total - core, total)})**: "
        "what no change to the mixer's core removes.",
        "",
        "## Parts of the step",
        "",
        "Mixer core: the token mixer (attention module) of each layer, forward and its backward, without its q/k/v/out "
        "Linear layers on the model width (mixer projections) and, for ViX Nystrom, without the iterative "
        "pseudo-inverse of the m x m landmark kernel (pinv: forward, its checkpoint recompute and backward). "
        "Rest: embedding, LayerNorms, MLPs, residual adds, head, loss.",
        "",
        "| part | s / step | share | GFLOP (GEMM + attention kernels) | GFLOP/s |",
        "|---|---|---|---|---|",
    ]
    for part in PARTS:
        seconds = part_seconds(summary, part)
        part_flops = summary["flops_by_part"].get(part, 0.0)
        rate = f"{part_flops / seconds / 1e9:.0f}" if part_flops and seconds else ""
        lines.append(f"| {part} | {seconds:.3f} | {percent(seconds, total)} | {part_flops / 1e9:.1f} | {rate} |")
    lines += ["", "| region | s / step | share |", "|---|---|---|"]
    for region in REGIONS:
        seconds = summary["by_region"].get(region, 0.0)
        if seconds:
            lines.append(f"| {region} | {seconds:.3f} | {percent(seconds, total)} |")
    lines += [
        "",
        "## Categories (self CPU time)",
        "",
        "| category | s / step | share | of it in the mixer core | GFLOP | GFLOP/s inside |",
        "|---|---|---|---|---|---|",
    ]
    for category in CATEGORIES:
        seconds = summary["by_category"].get(category, 0.0)
        if not seconds:
            continue
        in_core = sum(summary["by_region_category"].get((f"{part}; {phase}", category), 0.0)
                      for part in CORE_PARTS for phase in ("forward", "backward"))
        category_flops = flops["by_category"].get(category, 0.0)
        rate = f"{category_flops / seconds / 1e9:.0f}" if category_flops else ""
        gflop = f"{category_flops / 1e9:.1f}" if category_flops else ""
        lines.append(f"| {category} | {seconds:.3f} | {percent(seconds, total)} | {percent(in_core, seconds)} | "
                     f"{gflop} | {rate} |")
    lines += [
        "",
        "GFLOP/s divide counted FLOPs by profiled self time (profiler overhead included, so a lower bound); the "
        "2048 x 2048 matmul above is the ceiling. GFLOP here: FlopCounterMode's; in the parts and shapes tables: "
        "the profiler's count for GEMMs and convs, `benchmarks.measure`'s formulas for the flash-attention kernels.",
        "",
        f"## Top {args.top} ops by self CPU time",
        "",
        "| op | calls / step | s / step | share | category |",
        "|---|---|---|---|---|",
    ]
    ranked = sorted(summary["by_op"].items(), key=lambda item: -item[1])[: args.top]
    for (name, category), seconds in ranked:
        lines.append(f"| `{name[:70]}` | {summary['op_calls'][name, category]} | {seconds:.4f} | "
                     f"{percent(seconds, total)} | {category} |")
    lines += [
        "",
        "## GEMM, conv and attention-kernel calls by input shapes (top 15 by time)",
        "",
        "| op | input shapes | part | calls / step | s / step | GFLOP | GFLOP/s |",
        "|---|---|---|---|---|---|---|",
    ]
    shapes = sorted(summary["by_shape"].items(), key=lambda item: -item[1][1])[:15]
    for (name, shape, part), (calls, seconds, shape_flops) in shapes:
        rate = f"{shape_flops / seconds / 1e9:.0f}" if shape_flops and seconds else ""
        lines.append(f"| `{name}` | {shape[:80]} | {part} | {calls} | {seconds:.4f} | "
                     f"{shape_flops / 1e9:.2f} | {rate} |")
    others = sorted(((n, s) for (n, c), s in summary["by_op"].items() if c == OTHER), key=lambda x: -x[1])
    if others:
        lines += ["", "Ops in 'other aten ops': " + ", ".join(f"`{n}` {s:.4f} s" for n, s in others[:10]) + "."]
    return "\n".join(lines) + "\n"


def matmul_ceiling(dtype: str, n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of the fastest of a few large square matmuls: the ceiling, as `benchmarks.measure.matmul_peak`
    measures it, but the fastest rather than the median, since other processes share this machine."""
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    a, b = torch.randn(n, n, dtype=torch_dtype), torch.randn(n, n, dtype=torch_dtype)
    a @ b  # warm-up
    return 2 * n**3 / min(time_steps(repeats, lambda: a @ b)) / 1e9


def profile_steps(run_step, steps: int) -> tuple[list, list[float], list[float]]:
    """Profile `steps` steps one by one; return the first step's events, each op call's smallest self time over
    the steps, and each step's total. Other processes share this machine and can only add time to an op, so
    the smallest over a few steps is the undisturbed cost (the steps run the same ops in the same order)."""
    runs = []
    for _ in range(steps):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True, with_flops=True) as profiler:
            run_step()
        runs.append(list(profiler.events()))
    totals = [sum(event.self_cpu_time_total for event in run) / 1e6 for run in runs]
    if any([e.name for e in run] != [e.name for e in runs[0]] for run in runs):
        raise RuntimeError("the profiled steps ran different ops, so their op calls cannot be matched")
    fastest = [min(run[i].self_cpu_time_total for run in runs) / 1e6 for i in range(len(runs[0]))]
    return runs[0], fastest, totals


def main(argv=None):
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(ProfileArguments).parse_args_into_dataclasses(args=argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_average = os.getloadavg()[0]
    torch.manual_seed(0)
    size = BenchSize(image_size=args.image_size)
    model = build(args.model, size)
    state = {"in_mixer": False}
    mark_mixers(model, size.hidden_size, state)
    pixels = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    labels = torch.randint(0, size.num_labels, (args.batch_size,))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if args.dtype == "bf16" else nullcontext()
    flops = count_flops(model, pixels, labels)
    saved = saved_tensor_mb(model, pixels, labels, autocast, state)

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    run_step = lambda: train_step(model, optimizer, pixels, labels, autocast)  # noqa: E731
    time_steps(args.warmup_steps, run_step)
    step_times = time_steps(args.timed_steps, run_step)
    events, fastest, totals = profile_steps(run_step, args.profiled_steps)
    facts = {
        "summary": summarize(events, fastest), "flops": flops, "saved": saved, "profiled_totals": totals,
        "step_time_s": min(step_times), "step_median_s": statistics.median(step_times),
        "command": "python -m benchmarks.profile_step " + " ".join(sys.argv[1:] if argv is None else argv),
        "load_average": load_average,
        "matmul_gflops": matmul_ceiling(args.dtype),
    }
    output = Path(args.output) if args.output else RESULTS_DIR / f"profile_{args.model}_{args.dtype}.md"
    output.write_text(markdown(args, facts))
    print(f"wrote {output}: fastest step {min(step_times):.3f} s, profiled {facts['summary']['total']:.3f} s")


if __name__ == "__main__":
    main()
