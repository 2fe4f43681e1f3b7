"""Folders saved before the attention modules owned their projections (kernel tensors at `attention.X`, CvT's at
`attention.mixer.X`) load into today's models with the logits they had, and are saved again under today's names.

The fixtures were written by the code before that change (tiny random models, their kernel tensors made non-zero,
and the logits that code gave on the stored input), so a renamed tensor that failed to load would change the logits.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForImageClassification

import modeling_vix  # noqa: F401  (registers the model types)


LEGACY = Path(__file__).parent / "fixtures" / "legacy_checkpoints"
FOLDERS = sorted(path.name for path in LEGACY.iterdir())


@pytest.mark.parametrize("name", FOLDERS)
def test_legacy_folder_loads_with_its_logits(name, tmp_path):
    expected = load_file(LEGACY / name / "expected_logits.safetensors")
    model, info = AutoModelForImageClassification.from_pretrained(LEGACY / name, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    with torch.no_grad():
        logits = model.eval()(expected["pixel_values"]).logits
    torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-5)

    model.save_pretrained(tmp_path)
    new_keys = set(load_file(tmp_path / "model.safetensors"))
    assert new_keys == set(model.state_dict())  # today's names on disk, not the legacy ones transformers renamed from
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(expected["pixel_values"]).logits, logits)


def test_fixtures_cover_every_moved_key_layout():
    layouts = {".attention.mixer.q_proj", ".attention.residual_conv", ".attention.seq_proj_k",
               ".attention.projection_matrix", ".attention.steps_since_redraw", ".attention.kernel.residual_conv"}
    keys = {key for name in FOLDERS for key in load_file(LEGACY / name / "model.safetensors")}
    assert {layout for layout in layouts if any(layout in key for key in keys)} == layouts
