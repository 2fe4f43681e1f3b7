"""--muon: torch's Muon for the transformer layers' weight matrices and AdamW for the rest, as one optimizer that
the Trainer's scheduler and checkpoints treat like any other (training/optimizers.py)."""

import copy

import pytest
import torch
from torch import nn
from transformers import AutoModelForImageClassification

from modeling_vix import BACKBONE_CONFIGS
from training.optimizers import MuonAdamWFactory, muon_parameter_names


SETTINGS = {"lr": 2e-3, "weight_decay": 0.05, "betas": (0.9, 0.98), "eps": 1e-7}


def small_cct():
    torch.manual_seed(0)
    config = BACKBONE_CONFIGS["vix_cct"](num_labels=10, image_size=16, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=64, attention_type="nystrom",
                                         tokenizer_hidden_channels=8, pooling="sequence")
    return AutoModelForImageClassification.from_config(config)


def take_a_step(model, optimizer, seed=1):
    torch.manual_seed(seed)
    pixels, labels = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    optimizer.zero_grad()
    model(pixel_values=pixels, labels=labels).loss.backward()
    optimizer.step()


def test_muon_takes_the_layers_weight_matrices_and_adamw_the_rest():
    model = small_cct()
    names = muon_parameter_names(model)
    linear_weights = {f"{name}.weight" for name, module in model.named_modules() if isinstance(module, nn.Linear)}
    # 2 layers x (q, k, v, output, fc1, fc2)
    assert len(names) == 12 and names <= linear_weights
    assert all(".layers." in name for name in names)
    left = linear_weights - names  # the sequence pooling (a side of 1) and the classifier
    assert left == {"cct.pooler.attention_pool.weight", "classifier.weight"}

    optimizer = MuonAdamWFactory()(model, **SETTINGS)
    by_name = {id(p): name for name, p in model.named_parameters()}
    muon = {by_name[id(p)] for group in optimizer.muon.param_groups for p in group["params"]}
    assert muon == names
    decayed, not_decayed = ({by_name[id(p)] for p in group["params"]} for group in optimizer.adamw.param_groups)
    assert muon | decayed | not_decayed == set(by_name.values())  # every parameter, once
    assert "classifier.weight" in decayed and any("tokenizer" in name for name in decayed)
    assert all(name.endswith("bias") or "norm" in name for name in not_decayed)
    assert [group["weight_decay"] for group in optimizer.param_groups] == [0.05, 0.05, 0.0]


def test_a_step_is_torch_muon_on_the_matrices_and_adamw_on_the_rest():
    model = small_cct()
    reference = copy.deepcopy(model)
    take_a_step(model, MuonAdamWFactory()(model, **SETTINGS))

    names = muon_parameter_names(reference)
    matrices = [p for name, p in reference.named_parameters() if name in names]
    rest = [p for name, p in reference.named_parameters() if name not in names]
    muon = torch.optim.Muon(matrices, lr=2e-3, weight_decay=0.05, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.ndim >= 2], "weight_decay": 0.05},
                               {"params": [p for p in rest if p.ndim < 2], "weight_decay": 0.0}],
                              lr=2e-3, betas=(0.9, 0.98), eps=1e-7)
    torch.manual_seed(1)
    pixels, labels = torch.randn(4, 3, 16, 16), torch.randint(0, 10, (4,))
    reference(pixel_values=pixels, labels=labels).loss.backward()
    muon.step()
    adamw.step()

    for (name, trained), expected in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(trained, expected, rtol=0, atol=0, msg=name)
    moved = [name for name, p in model.named_parameters() if name in names]
    initial = dict(small_cct().named_parameters())
    assert all(not torch.equal(dict(model.named_parameters())[name], initial[name]) for name in moved)


def test_the_scheduler_drives_both_optimizers_also_after_loading_a_checkpoint_state():
    model = small_cct()
    optimizer = MuonAdamWFactory()(model, **SETTINGS)
    take_a_step(model, optimizer)
    state = optimizer.state_dict()

    restored = MuonAdamWFactory()(model, **SETTINGS)
    restored.load_state_dict(copy.deepcopy(state))
    for kind in ("muon", "adamw"):
        saved, loaded = state[kind]["state"], restored.state_dict()[kind]["state"]
        assert saved.keys() == loaded.keys() and len(saved) > 0
        for key in saved:
            assert all(torch.equal(saved[key][name], loaded[key][name]) for name in saved[key])
    scheduler = torch.optim.lr_scheduler.LambdaLR(restored, lambda step: 0.5 ** (step + 1))  # as the Trainer's
    inner = restored.muon.param_groups + restored.adamw.param_groups
    assert all(group["lr"] == pytest.approx(1e-3) for group in inner)
    restored.step()  # no gradients: nothing moves
    scheduler.step()
    assert all(group["lr"] == pytest.approx(5e-4) for group in inner)
    with pytest.raises(ValueError, match="not a MuonAdamW state"):
        restored.load_state_dict(torch.optim.AdamW(model.parameters()).state_dict())


def test_a_model_without_weight_matrices_in_layers_is_refused():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="leave --muon off"):
        MuonAdamWFactory()(model, **SETTINGS)
