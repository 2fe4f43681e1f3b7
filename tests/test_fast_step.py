"""The fast CPU-budget protocol: each speed-up changes how fast a step runs, not what it computes.

- `--channels_last`: the same logits and gradients as channels-first;
- `--sdpa_backend math`: the same logits as torch's default attention kernel, for every attention mixer;
- `tokenizer_batch_norm`: CCT's tokenizer gains a BatchNorm per conv, which trains and reloads;
- the training job records both settings in metrics.json; the step benchmark renders its ratios against `before`.
"""

import json

import pytest
import torch

from benchmarks import training_step
from conftest import tiny_cct_config
from modeling_vix import VixCctForImageClassification
from training.train import attention_backend, main


ATTENTION_MIXERS = ("softmax", "nystrom", "performer", "linformer")


def tiny_bn_cct(attention_type="softmax"):
    torch.manual_seed(0)
    config = tiny_cct_config(attention_type=attention_type, tokenizer_batch_norm=True, tokenizer_num_layers=2,
                             tokenizer_stride=1, tokenizer_pooling_stride=2, attention_probs_dropout_prob=0.0,
                             drop_path_rate=0.0)  # no randomness in training mode: two models compare exactly
    return VixCctForImageClassification(config)


def pixels(batch=4):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_tokenizer_batch_norm_adds_one_batch_norm_per_conv_and_round_trips(tmp_path):
    model = tiny_bn_cct()
    norms = [layer.normalization for layer in model.cct.embeddings.tokenizer.layers]
    assert len(norms) == 2 and all(isinstance(norm, torch.nn.BatchNorm2d) for norm in norms)
    model.train()(pixels(), labels=torch.tensor([0, 1, 2, 3])).loss.backward()
    assert all(norm.weight.grad is not None for norm in norms)
    assert int(norms[0].num_batches_tracked) == 1
    model.eval().save_pretrained(tmp_path)
    reloaded = VixCctForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(pixels()).logits, model(pixels()).logits)
    plain = VixCctForImageClassification(tiny_cct_config())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in plain.modules())  # off by default, as in CCT


def test_channels_last_gives_the_same_logits_and_gradients():
    reference, converted = tiny_bn_cct(), tiny_bn_cct().to(memory_format=torch.channels_last)
    labels = torch.tensor([0, 1, 2, 3])
    outputs = [model.train()(pixels(), labels=labels) for model in (reference, converted)]
    torch.testing.assert_close(outputs[1].logits, outputs[0].logits, rtol=0, atol=1e-5)
    for output in outputs:
        output.loss.backward()
    conv = [model.cct.embeddings.tokenizer.layers[0].convolution.weight for model in (reference, converted)]
    assert conv[1].is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv[1].grad, conv[0].grad, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention_type", ATTENTION_MIXERS)
@torch.no_grad()
def test_math_attention_backend_gives_the_default_kernels_logits(attention_type):
    model = tiny_bn_cct(attention_type).eval()
    expected = model(pixels()).logits
    with attention_backend("math"):
        actual = model(pixels()).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5)


def _enabled_sdpa_backends() -> dict[str, bool]:
    """torch's global switches for the fused attention kernels (they govern the CPU's flash kernel too)."""
    backends = torch.backends.cuda
    return {"flash": backends.flash_sdp_enabled(), "efficient": backends.mem_efficient_sdp_enabled(),
            "math": backends.math_sdp_enabled()}


def test_math_backend_holds_inside_the_block_only():
    """The job wraps training and the test evaluation in attention_backend(...): "math" switches the fused kernels
    off inside the block and restores torch's choice after it; "default" leaves torch's choice alone."""
    before = _enabled_sdpa_backends()
    assert before["flash"]  # torch's default: the fused CPU kernel may run, so switching it off is observable
    with attention_backend("math"):
        assert _enabled_sdpa_backends() == {"flash": False, "efficient": False, "math": True}
    assert _enabled_sdpa_backends() == before
    with attention_backend("default"):
        assert _enabled_sdpa_backends() == before


def test_training_job_records_the_fast_step_settings(tmp_path):
    main(["--model_type", "vix_cct", "--tokenizer_batch_norm", "true", "--tokenizer_num_layers", "2",
          "--tokenizer_hidden_channels", "8", "--hidden_size", "16", "--intermediate_size", "32",
          "--num_hidden_layers", "1", "--num_attention_heads", "2", "--tokenizer_stride", "1",
          "--tokenizer_pooling_stride", "2", "--max_steps", "2", "--max_train_samples", "64",
          "--max_eval_samples", "32", "--channels_last", "true", "--sdpa_backend", "math", "--preload_images", "true",
          "--output_dir", str(tmp_path), "--disable_tqdm", "true"])
    metrics = json.loads((tmp_path / "final" / "metrics.json").read_text())
    assert (metrics["channels_last"], metrics["sdpa_backend"]) == (True, "math")


def test_step_benchmark_reads_each_model_from_its_recipe_and_renders_ratios_per_recipe():
    config = training_step.recipe_config("fast/cifar10_ccn_bn.yaml")
    assert config.tokenizer_batch_norm and config.num_tokens == 64 and config.nystrom_num_landmarks == 16
    levit = training_step.recipe_config("cpu/cifar10_levip.yaml")
    assert (levit.model_type, levit.attention_type, levit.num_labels) == ("vix_levit", "performer", 10)
    report = {"machine": {"cpu": "Test CPU", "cores": 2, "torch": "2"}, "batch_size": 128, "steps": 8,
              "warmup_steps": 3, "command": "python -m benchmarks.training_step",
              "results": [{"recipe": "a.yaml", "attention_type": "softmax", "path": "before", "step_time_s": 0.4,
                           "first_step_s": 1.0},
                          {"recipe": "a.yaml", "attention_type": "softmax", "path": "fast", "step_time_s": 0.2,
                           "first_step_s": 1.0},
                          {"recipe": "b.yaml", "attention_type": "performer", "path": "before", "step_time_s": 0.3,
                           "first_step_s": 1.0},
                          {"recipe": "b.yaml", "attention_type": "performer", "path": "fast", "step_time_s": 0.6,
                           "first_step_s": 1.0}]}
    text = training_step.markdown(report)
    assert "| a.yaml | softmax | this checkout | fast | 0.200 | 0.200-0.200 | 2.00x |" in text
    assert "| b.yaml | performer | this checkout | fast | 0.600 | 0.600-0.600 | 0.50x |" in text
    # Against another commit: each path's ratio is that commit's step over this checkout's.
    against = {**report, "compare_commit": "abc1234", "results": [
        {**report["results"][1], "code": "abc1234", "step_time_s": 0.3}, {**report["results"][1], "step_time_s": 0.2}]}
    text = training_step.markdown(against)
    assert "| a.yaml | softmax | this checkout | fast | 0.200 | 0.200-0.200 | 1.50x |" in text
    assert "| a.yaml | softmax | abc1234 | fast | 0.300 | 0.300-0.300 | 1.00x |" in text


def test_step_benchmark_rounds_combine_into_their_median_and_range():
    rounds = [{"recipe": "a.yaml", "attention_type": "softmax", "path": "fast", "step_time_s": t, "first_step_s": 1.0}
              for t in (0.3, 0.1, 0.2)]
    combined = training_step.combine_rounds(rounds)
    assert combined["step_time_s"] == 0.2 and combined["round_step_times_s"] == [0.3, 0.1, 0.2]
    report = {"machine": {"cpu": "Test CPU", "cores": 2, "torch": "2"}, "batch_size": 128, "steps": 8,
              "warmup_steps": 3, "repeats": 3, "command": "python -m benchmarks.training_step --repeats 3",
              "results": [combined]}
    assert "| a.yaml | softmax | this checkout | fast | 0.200 | 0.100-0.300 |" in training_step.markdown(report)
    failed = training_step.combine_rounds(rounds[:2] + [{"recipe": "a.yaml", "path": "fast", "error": "boom"}])
    assert failed["error"] == "boom"


@pytest.mark.parametrize("flags, named", [(["--paths", "fastest"], "--paths fastest"),
                                          (["--repeats", "0"], "--repeats 0"),
                                          (["--recipes", "cpu/no_such.yaml"], "--recipes cpu/no_such.yaml")])
def test_step_benchmark_refuses_an_unknown_path_or_recipe_in_one_line(flags, named, capsys):
    with pytest.raises(SystemExit) as exit_info:
        training_step.main(flags)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert named in error and len(error.strip().splitlines()) == 1
