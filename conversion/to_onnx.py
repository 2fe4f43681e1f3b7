"""Export a saved ViX classifier (a folder or a Hub id, any backbone and attention mixer) to ONNX, checked against
PyTorch with onnxruntime before anything is written.

    python -m conversion.to_onnx --model outputs/cifar10_ccn --output_dir cifar10_ccn-onnx
    python -m conversion.to_onnx --model outputs/cifar10_ccn --output_dir cifar10_ccn-onnx --quantize int8
    python -m conversion.to_onnx --model DIR --output_dir OUT --opset 18 --images my_photos/

Writes `OUT/model.onnx` (input `pixel_values` (batch, 3, H, W), output `logits` (batch, num_labels), the batch
dimension dynamic) beside `config.json` and `preprocessor_config.json`, so the folder says what the model expects
and what its outputs mean; `onnx_export.json` records the exporter, the opset and the measured parity. With
`--quantize int8`, also `model_int8.onnx` (onnxruntime's dynamic int8 quantization) and its agreement with fp32.
`conversion.onnx_runtime.OnnxImageClassifier` runs such a folder.

- Exporter: `torch.onnx.export(..., dynamo=True)` (torch.export + onnxscript). optimum's exporter needs
  transformers < 4.58, and the TorchScript exporter (`dynamo=False`) bakes the example's batch size into several
  reshapes (softmax, Nystrom, CvT) and cannot export FNet's FFT: both measured in docs/deploy.md.
- The model is exported in eval mode: the inference form. Dropout is off and Performer redraws its random
  features only in training forwards, so the exported graph computes what `model.eval()` computes; FNet's FFT
  exports as ONNX's DFT.
- Parity: onnxruntime's logits against PyTorch's on real images (the local CIFAR-10 test copy by default, or
  `--images`), through the folder's own image processor, at batch 1 and at the whole set (the dynamic batch).
  Beyond `--rtol` (1e-4) of the logits' scale (max |logit|) the export is refused with the measured difference.
- Nothing is half-written: everything goes to a temporary sibling folder that is moved into place only when the
  export, the parity check and the quantization all succeeded. A user's mistake (a missing or non-ViX folder, an
  opset outside the supported range, an output folder that exists) ends with one `error:` line and exit 2.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForImageClassification, HfArgumentParser
from transformers.utils import logging as hf_logging

from modeling_vix import BACKBONE_CONFIGS, VixImageProcessor

from .common import ConversionError, check_output_dir, first_line, load_images, staged_output_dir


# torch's dynamo exporter writes opset 18 and above (it silently raises a lower request to 18), up to its
# ONNX_MAX_OPSET (23 in torch 2.13); onnxruntime 1.32 runs all of them. 20 is torch's default.
SUPPORTED_OPSETS = range(18, 24)
DEFAULT_OPSET = 20
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
ONNX_FILE = "model.onnx"
INT8_FILE = "model_int8.onnx"
RECORD_FILE = "onnx_export.json"
PARITY_IMAGES = 8


class LogitsOnly(nn.Module):
    """The classifier as ONNX sees it: pixel_values (B, C, H, W) in, logits (B, num_labels) out (no output dict)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


# --------------------------------------------------------------------------------------------------------
# Loading the ViX folder
# --------------------------------------------------------------------------------------------------------


def looks_like_path(spec: str) -> bool:
    """A local path rather than a Hub id (`owner/name`): absolute, relative with ./ or ../, ~, or deeper than one
    slash. Such a --model that does not exist is reported as a missing folder, without asking the Hub."""
    return spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or Path(spec).exists()


def load_vix_folder(spec: str):
    """(model in eval mode, its image processor) from a ViX folder or Hub id; a ConversionError saying what is wrong
    (missing, not a ViX model, no processor) otherwise."""
    if looks_like_path(spec) and not Path(spec).expanduser().is_dir():
        problem = "is a file, not a folder" if Path(spec).expanduser().exists() else "no such folder"
        raise ConversionError(f"--model {spec}: {problem}; give a folder written by save_pretrained (ViX training or "
                              "conversion) or a Hub id.")
    spec = str(Path(spec).expanduser()) if looks_like_path(spec) else spec
    try:
        config = AutoConfig.from_pretrained(spec)
    except (OSError, ValueError, KeyError) as error:
        what = "not a ViX model folder" if Path(spec).is_dir() else "no such local folder, and not loadable as a Hub id"
        raise ConversionError(f"--model {spec}: {what} ({first_line(error)}).") from None
    if config.model_type not in BACKBONE_CONFIGS:
        raise ConversionError(f"--model {spec}: model_type {config.model_type!r} is not a ViX model (one of "
                              f"{', '.join(BACKBONE_CONFIGS)}); convert it to ViX first (python -m "
                              "conversion.from_transformers).")
    try:
        processor = VixImageProcessor.from_pretrained(spec)
    except OSError:
        raise ConversionError(f"--model {spec}: no preprocessor_config.json; the exported folder needs the image "
                              "processor's settings (save the processor with the model).") from None
    model = AutoModelForImageClassification.from_pretrained(spec).eval()
    return model, processor


# --------------------------------------------------------------------------------------------------------
# Export, parity, quantization
# --------------------------------------------------------------------------------------------------------


def export_onnx(model: nn.Module, path: Path, sample: torch.Tensor, opset: int = DEFAULT_OPSET) -> Path:
    """Write `model` (a transformers image classifier, exported in eval mode: its inference form) to `path` as one
    ONNX file with a dynamic batch dimension. `sample` (B, C, H, W) with B >= 2 fixes every other dimension (a batch
    of 1 would be specialised)."""
    if sample.shape[0] < 2:
        sample = sample.expand(2, *sample.shape[1:])
    was_training = model.training
    batch = torch.export.Dim("batch", min=1)
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # its per-op registration notes (e.g. "torchvision is not installed")
    try:
        with torch.no_grad():
            torch.onnx.export(LogitsOnly(model).eval(), (sample,), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes={INPUT_NAME: {0: batch}}, dynamo=True,
                              opset_version=opset, external_data=False, verbose=False)
    except Exception as error:  # the exporter raises many types; the user needs the first line of one
        config = getattr(model, "config", None)
        what = (f"{config.model_type} with attention_type {getattr(config, 'attention_type', 'softmax')!r}"
                if config is not None else "the model")
        raise ConversionError(f"{what} does not export to ONNX opset {opset}: {first_line(error)}") from None
    finally:
        exporter_log.setLevel(level)
        model.train(was_training)
    return Path(path)


def ort_session(path: Path, threads: int | None = None):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_session(session, pixel_values) -> np.ndarray:
    pixels = pixel_values.numpy() if isinstance(pixel_values, torch.Tensor) else pixel_values
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(pixels, dtype=np.float32)})[0]


@torch.no_grad()
def onnx_parity(session, model: nn.Module, pixel_values: torch.Tensor) -> dict:
    """onnxruntime's logits against the PyTorch model's, at batch 1 (the first image) and at the whole batch: the
    largest absolute difference, the logits' scale (max |logit| of PyTorch's) and the top-1 agreement."""
    reference = model(pixel_values=pixel_values).logits.float().numpy()
    full = run_session(session, pixel_values)
    single = run_session(session, pixel_values[:1])
    differences = {1: float(np.abs(single - reference[:1]).max()),
                   len(pixel_values): float(np.abs(full - reference).max())}
    return {
        "batch_sizes": sorted(differences),
        "max_abs_logit_diff_by_batch": {str(batch): diff for batch, diff in differences.items()},
        "max_abs_logit_diff": max(differences.values()),
        "logit_scale": float(np.abs(reference).max()),
        "top1_agreement": float((full.argmax(-1) == reference.argmax(-1)).mean()),
    }


def check_parity(parity: dict, rtol: float, inputs: str, what: str) -> None:
    allowed = rtol * max(parity["logit_scale"], 1e-12)
    if not parity["max_abs_logit_diff"] <= allowed:  # also refuses NaN
        raise ConversionError(
            f"{what}: onnxruntime's logits differ from PyTorch's by {parity['max_abs_logit_diff']:.3e} (> {rtol:.0e} "
            f"x logit scale {parity['logit_scale']:.3g} = {allowed:.2e}) on {inputs}; nothing was written.")


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: np.ndarray | None = None) -> Path:
    """int8 weights for onnxruntime: dynamic quantization (weights int8 offline, activations quantized per batch at
    run time) by default; static (activations' ranges fixed from `calibration` pixel batches (N, C, H, W)) when
    `calibration` is given. The float model is first shape-inferred and optimised (`quant_pre_process`), as
    onnxruntime recommends. docs/deploy.md has the measured accuracy of both."""
    from onnxruntime.quantization import QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = Path(int8_path).with_suffix(".prepared.onnx")
    try:
        # onnxruntime's symbolic shape inference fails on the dynamo exporter's graphs (an Unsqueeze of unknown
        # rank); ONNX's own shape inference and the graph optimisation are enough for the quantizer.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        if calibration is None:
            quantize_dynamic(str(prepared), str(int8_path), weight_type=QuantType.QInt8)
        else:
            quantize_static(str(prepared), str(int8_path), CalibrationBatches(calibration),
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True)
    except Exception as error:  # the quantizer raises many types; the user needs the first line of one
        raise ConversionError(f"onnxruntime's int8 quantization failed: {first_line(error)}") from None
    finally:
        prepared.unlink(missing_ok=True)
    return Path(int8_path)


class CalibrationBatches:
    """onnxruntime's CalibrationDataReader protocol over pixel batches: `get_next()` gives {input: batch} or None."""

    def __init__(self, pixels: np.ndarray, batch_size: int = 64):
        self.batches = iter([pixels[start:start + batch_size].astype(np.float32)
                             for start in range(0, len(pixels), batch_size)])

    def get_next(self):
        batch = next(self.batches, None)
        return None if batch is None else {INPUT_NAME: batch}


# --------------------------------------------------------------------------------------------------------
# The folder
# --------------------------------------------------------------------------------------------------------


@dataclass
class OnnxExport:
    output_dir: Path
    record: dict


def export_folder(model_spec: str, output_dir, *, opset: int = DEFAULT_OPSET, quantize: str | None = None,
                  images=None, rtol: float = 1e-4, overwrite: bool = False) -> OnnxExport:
    """The whole command: load, export, check parity, optionally quantize, and move the finished folder into place."""
    if opset not in SUPPORTED_OPSETS:
        raise ConversionError(f"--opset {opset} is not supported: choose {SUPPORTED_OPSETS.start}-"
                              f"{SUPPORTED_OPSETS.stop - 1} (torch's ONNX exporter's range; default {DEFAULT_OPSET}).")
    if quantize not in (None, "", "int8"):
        raise ConversionError(f"--quantize {quantize}: the only quantization is int8.")
    output_dir = check_output_dir(output_dir, overwrite)
    model, processor = load_vix_folder(model_spec)
    loaded, inputs = load_images(images, limit=PARITY_IMAGES)
    if loaded is None:
        raise ConversionError(f"no real images for the parity check ({inputs}); pass --images FILES_OR_FOLDER.")
    pixel_values = processor(loaded, return_tensors="pt")["pixel_values"]
    if pixel_values.shape[1] != model.config.num_channels:
        raise ConversionError(f"the processor gives {pixel_values.shape[1]} channels, the model takes "
                              f"{model.config.num_channels}; nothing was written.")

    with staged_output_dir(output_dir) as staging:
        export_onnx(model, staging / ONNX_FILE, pixel_values[:2], opset)
        parity = onnx_parity(ort_session(staging / ONNX_FILE), model, pixel_values)
        check_parity(parity, rtol, inputs, f"{model.config.model_type} ({model.config.attention_type})")
        record = {"source": str(model_spec), "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
                  "opset": opset, "input": INPUT_NAME, "output": OUTPUT_NAME, "dynamic_axes": {INPUT_NAME: [0],
                  OUTPUT_NAME: [0]}, "parity": {**parity, "rtol": rtol, "inputs": inputs}}
        if quantize == "int8":
            quantize_int8(staging / ONNX_FILE, staging / INT8_FILE)
            int8 = onnx_parity(ort_session(staging / INT8_FILE), model, pixel_values)
            if not np.isfinite(int8["max_abs_logit_diff"]):
                raise ConversionError("the int8 model gives non-finite logits; nothing was written.")
            record["int8"] = {"file": INT8_FILE, "method": "onnxruntime quantize_dynamic (QInt8 weights)",
                              "parity_vs_pytorch": {**int8, "inputs": inputs}}
        model.config.save_pretrained(staging)  # config.json (labels, sizes) and its configuration file
        processor.save_pretrained(staging)
        (staging / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return OnnxExport(output_dir, record)


# --------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------


@dataclass
class OnnxArguments:
    model: str = field(metadata={"help": "A saved ViX folder (save_pretrained) or a Hub id."})
    output_dir: str = field(metadata={"help": "Folder to write (must be absent or empty)."})
    opset: int = field(default=DEFAULT_OPSET, metadata={
        "help": f"ONNX opset, {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}."})
    quantize: str = field(default="", metadata={
        "help": "'int8': also write model_int8.onnx (onnxruntime dynamic quantization).", "choices": ("", "int8")})
    images: list[str] | None = field(default=None, metadata={
        "help": "Real images for the parity check: files, folders or a parquet file (Hub image layout). Default: the "
                "local CIFAR-10 test copy when present, else scikit-learn's digits."})
    rtol: float = field(default=1e-4, metadata={
        "help": "Refuse to write when onnxruntime's logits differ from PyTorch's by more than this x max |logit|."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output folder."})


def main(argv=None) -> int:
    hf_logging.disable_progress_bar()  # a failed export prints one line, not weight-loading bars above it
    parser = HfArgumentParser(OnnxArguments, prog="python -m conversion.to_onnx", description=__doc__.split("\n")[0])
    args, remaining = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
    if remaining:
        parser.error(f"unrecognized arguments: {' '.join(remaining)}")
    try:
        result = export_folder(args.model, args.output_dir, opset=args.opset, quantize=args.quantize or None,
                               images=args.images, rtol=args.rtol, overwrite=args.overwrite)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    parity = result.record["parity"]
    print(f"parity vs PyTorch: max abs logit diff {parity['max_abs_logit_diff']:.3e} (logit scale "
          f"{parity['logit_scale']:.3g}) at batch sizes {parity['batch_sizes']} on {parity['inputs']}")
    if "int8" in result.record:
        int8 = result.record["int8"]["parity_vs_pytorch"]
        print(f"int8: top-1 agreement with PyTorch {int8['top1_agreement']:.0%}, max abs logit diff "
              f"{int8['max_abs_logit_diff']:.3e}")
    print(f"wrote {result.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
