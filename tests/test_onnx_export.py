"""ONNX export (`conversion.to_onnx`) and its onnxruntime loader (`conversion.onnx_runtime`).

- every backbone (vix, vix_cct, vix_pit, vix_cvt, vix_levit) x every attention_type its config accepts, tiny random
  models: exported once per combination (module-scoped), then onnxruntime's logits match PyTorch's within 1e-4 of
  the logits' scale on real images at batch 1 and batch 16 (the export's example had batch 2), and the graph's batch
  dimension is symbolic;
- the CLI end to end on a saved folder with `--quantize int8` and `--images`: the written folder's files, the loader's
  predictions, nothing left beside it;
- the CLI's refusals (missing folder, not a ViX folder, unsupported opset, an output folder that exists, parity
  beyond the tolerance): one `error:` line, exit 2, nothing written.
"""

import json

import numpy as np
import pytest
import torch

from conftest import tiny_cct_config, tiny_config, tiny_cvt_config, tiny_levit_config, tiny_pit_config
from modeling_vix import BACKBONES, MIXER_CAPABILITIES, VixImageProcessor


pytest.importorskip("onnxruntime", reason="the [export] extra (onnx, onnxscript, onnxruntime) is not installed")
pytest.importorskip("onnxscript", reason="the [export] extra (onnx, onnxscript, onnxruntime) is not installed")

import onnx  # noqa: E402 (after the skip: the extra is optional)

from conversion import to_onnx  # noqa: E402
from conversion.onnx_runtime import OnnxImageClassifier  # noqa: E402


TINY_CONFIGS = {"vix": tiny_config, "vix_cct": tiny_cct_config, "vix_pit": tiny_pit_config,
                "vix_cvt": tiny_cvt_config, "vix_levit": tiny_levit_config}
# CvT and LeViT attend (queries and keys: the capability RoPE also needs), so they take no fnet / mixer.
ATTENTION_ONLY = {"vix_cvt", "vix_levit"}
BATCH_SIZES = (1, 16)  # both differ from the export's example batch (2)


def case_settings(backbone: str, attention: str) -> dict | None:
    """The config settings of one (backbone, mixer), or None where the config refuses the mixer."""
    can = MIXER_CAPABILITIES[attention]
    if backbone in ATTENTION_ONLY and not can.supports_rope:
        return None
    settings = {"attention_type": attention}
    if backbone == "vix_levit" and not can.supports_attention_bias:  # Performer cannot add LeViT's attention bias
        settings["attention_bias"] = False
    return settings


CASES = [pytest.param((backbone, settings), id=f"{backbone}-{attention}")
         for backbone in BACKBONES for attention in MIXER_CAPABILITIES
         if (settings := case_settings(backbone, attention)) is not None]
# Performer with redraws: the export is the eval-mode model, which never redraws.
CASES.append(pytest.param(("vix", {"attention_type": "performer", "performer_redraw_interval": 1}),
                          id="vix-performer-redraw"))
REFUSED = [(backbone, attention) for backbone in BACKBONES for attention in MIXER_CAPABILITIES
           if case_settings(backbone, attention) is None]


def test_the_matrix_is_every_combination_the_configs_accept():
    covered = {(case.values[0][0], case.values[0][1]["attention_type"]) for case in CASES}
    assert covered | set(REFUSED) == {(b, a) for b in BACKBONES for a in MIXER_CAPABILITIES}
    for backbone, attention in REFUSED:
        with pytest.raises(ValueError):
            TINY_CONFIGS[backbone](attention_type=attention)


@pytest.fixture(scope="module", params=CASES)
def exported(request, tmp_path_factory, cifar_pixels):
    """(model, onnxruntime session, onnx path) of one tiny random model, exported once for the module."""
    backbone, settings = request.param
    torch.manual_seed(0)
    model = BACKBONES[backbone][2](TINY_CONFIGS[backbone](**settings)).eval()
    path = tmp_path_factory.mktemp("onnx") / to_onnx.ONNX_FILE
    to_onnx.export_onnx(model, path, cifar_pixels[:2])
    return model, to_onnx.ort_session(path), path


@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_onnxruntime_matches_pytorch(exported, cifar_pixels, batch):
    model, session, _ = exported
    pixels = cifar_pixels[:batch]
    with torch.no_grad():
        expected = model(pixel_values=pixels).logits.numpy()
    logits = to_onnx.run_session(session, pixels)
    assert logits.shape == expected.shape == (batch, 10)
    scale = np.abs(expected).max()
    assert np.abs(logits - expected).max() <= 1e-4 * scale


def test_the_graph_has_a_symbolic_batch_dimension(exported):
    graph = onnx.load(str(exported[2])).graph
    assert [tensor.name for tensor in graph.input] == [to_onnx.INPUT_NAME]
    assert [tensor.name for tensor in graph.output] == [to_onnx.OUTPUT_NAME]
    for tensor in (graph.input[0], graph.output[0]):
        batch = tensor.type.tensor_type.shape.dim[0]
        assert batch.dim_param and not batch.HasField("dim_value"), tensor.name


# --------------------------------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vix_folder(tmp_path_factory):
    """A saved tiny CCT with Nystrom attention (a folder as training writes it) and its PyTorch model."""
    torch.manual_seed(0)
    model = BACKBONES["vix_cct"][2](tiny_cct_config(attention_type="nystrom")).eval()
    folder = tmp_path_factory.mktemp("vix") / "cct"
    model.save_pretrained(folder)
    VixImageProcessor().save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, cifar_images):
    folder = tmp_path_factory.mktemp("images")
    for index, image in enumerate(cifar_images[0][:6]):
        image.save(folder / f"{index}.png")
    return folder


@pytest.fixture(scope="module")
def cli_export(vix_folder, image_folder, tmp_path_factory):
    """The CLI run once with --quantize int8 and --images: (return code, output folder)."""
    output = tmp_path_factory.mktemp("exports") / "cct-onnx"
    code = to_onnx.main(["--model", str(vix_folder[0]), "--output_dir", str(output), "--quantize", "int8",
                         "--images", str(image_folder)])
    return code, output


def test_cli_writes_a_self_describing_folder(cli_export):
    code, output = cli_export
    assert code == 0
    files = {path.name for path in output.iterdir()}
    assert {"model.onnx", "model_int8.onnx", "config.json", "preprocessor_config.json", "onnx_export.json"} <= files
    assert not any(name.endswith(".safetensors") for name in files)
    assert [path.name for path in output.parent.iterdir()] == [output.name]  # no staging folder left
    record = json.loads((output / "onnx_export.json").read_text())
    assert record["parity"]["batch_sizes"] == [1, 6] and "6 real images" in record["parity"]["inputs"]
    assert record["parity"]["max_abs_logit_diff"] <= 1e-4 * record["parity"]["logit_scale"]
    assert json.loads((output / "config.json").read_text())["model_type"] == "vix_cct"


@pytest.mark.parametrize("file", [to_onnx.ONNX_FILE, to_onnx.INT8_FILE])
def test_the_loader_predicts_what_pytorch_predicts(cli_export, vix_folder, cifar_images, cifar_pixels, file):
    _, output = cli_export
    classifier = OnnxImageClassifier(output, file=file)
    with torch.no_grad():
        expected = vix_folder[1](pixel_values=cifar_pixels).logits
    predictions = classifier(cifar_images[0], top_k=2)
    assert len(predictions) == 16 and all(len(top) == 2 for top in predictions)
    labels = [vix_folder[1].config.id2label[int(i)] for i in expected.argmax(-1)]
    agreement = np.mean([top[0]["label"] == label for top, label in zip(predictions, labels, strict=True)])
    # fp32 is the same model; int8 may flip a near-tie of this untrained model's almost flat logits
    assert agreement == 1.0 if file == to_onnx.ONNX_FILE else agreement >= 0.75
    assert all(top[0]["score"] >= top[1]["score"] for top in predictions)


def run_cli_expecting_error(capsys, argv) -> str:
    code = to_onnx.main(argv)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_cli_refuses_a_missing_folder(capsys, tmp_path):
    line = run_cli_expecting_error(capsys, ["--model", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")])
    assert "no such folder" in line
    assert sorted(tmp_path.iterdir()) == []


def test_cli_refuses_a_folder_that_is_not_vix(capsys, tmp_path):
    from transformers import ViTConfig

    ViTConfig().save_pretrained(tmp_path / "vit")
    (tmp_path / "empty").mkdir()
    for folder, message in (("vit", "'vit' is not a ViX model"), ("empty", "not a ViX model folder")):
        line = run_cli_expecting_error(capsys, ["--model", str(tmp_path / folder), "--output_dir", str(tmp_path / "o")])
        assert message in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("opset", [17, 24])
def test_cli_refuses_an_unsupported_opset(capsys, tmp_path, vix_folder, opset):
    line = run_cli_expecting_error(capsys, ["--model", str(vix_folder[0]), "--output_dir", str(tmp_path / "o"),
                                            "--opset", str(opset)])
    assert f"--opset {opset} is not supported: choose 18-23" in line
    assert sorted(tmp_path.iterdir()) == []


def test_cli_refuses_an_output_folder_that_exists(capsys, tmp_path, vix_folder):
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "keep.txt").write_text("mine")
    line = run_cli_expecting_error(capsys, ["--model", str(vix_folder[0]), "--output_dir", str(tmp_path / "o")])
    assert "exists and is not empty" in line
    assert [path.name for path in (tmp_path / "o").iterdir()] == ["keep.txt"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["o"]


def test_cli_refuses_logits_beyond_the_tolerance_and_writes_nothing(capsys, tmp_path, vix_folder):
    # Nystrom's pseudo-inverse iterations never round exactly alike in two runtimes: a 1e-12 tolerance fails.
    line = run_cli_expecting_error(capsys, ["--model", str(vix_folder[0]), "--output_dir", str(tmp_path / "o"),
                                            "--rtol", "1e-12"])
    assert "onnxruntime's logits differ from PyTorch's by" in line and "nothing was written" in line
    assert sorted(tmp_path.iterdir()) == []
