"""vision-xformer (the paper authors' package) -> ViX: logits on real CIFAR-10 images, tiny and paper-sized.

CI installs the package with `pip install --no-deps vision-xformer==0.2.0` (its torchvision requirement would
pull a CUDA torch; its runtime imports are torch, einops, performer_pytorch, linformer).
"""

import contextlib
import warnings

import pytest
import torch

from conversion.common import ConversionError
from conversion.from_vision_xformer import convert_vision_xformer, main
from test_conversion_common import (  # noqa: F401
    WritesAFileWhenUnpickled,
    _one_thread,
    assert_cli_refuses,
    assert_nothing_written,
    randomize,
    report,
    truncated_copy,
)


vision_xformer = pytest.importorskip(
    "vision_xformer", reason="vision-xformer is not installed (pip install --no-deps vision-xformer==0.2.0)"
)
ATOL = 1e-4

TINY = dict(image_size=32, patch_size=4, num_classes=10, dim=32, depth=2, heads=4, mlp_dim=64, dim_head=8)
# The paper's CIFAR-10 model with the package's defaults: 32x32, patch 1 (1,024 patches + cls = 1,025 tokens),
# dim 128, depth 4, 4 heads, MLP 256, dim_head 64 (the package's default), 64 Nystrom landmarks, Linformer k 64.
PAPER = dict(image_size=32, patch_size=1, num_classes=10, dim=128, depth=4, heads=4, mlp_dim=256)


@contextlib.contextmanager
def torch_qr():
    """vision-xformer's ViP draws features with `torch.qr` (removed from recent torch); tests build the source
    model with torch.linalg.qr standing in when it is missing."""
    if hasattr(torch, "qr"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch.qr's deprecation warning
            yield
        return
    torch.qr = lambda a, some=True: torch.linalg.qr(a, mode="reduced" if some else "complete")
    try:
        yield
    finally:
        del torch.qr


def build(name: str, size: str):
    sizes = TINY if size == "tiny" else PAPER
    landmarks, k = (16, 16) if size == "tiny" else (64, 64)
    no_heads = {key: value for key, value in sizes.items() if key not in ("heads", "dim_head")}
    with torch_qr():
        model = {
            "ViN": lambda: vision_xformer.ViN(**sizes, num_landmarks=landmarks),
            "ViP": lambda: vision_xformer.ViP(**sizes),
            "ViL": lambda: vision_xformer.ViL(**sizes, k=k),  # the package's default: one kv head, share_kv
            "ViL_kv_per_head": lambda: vision_xformer.ViL(**sizes, k=k, one_kv_head=False, share_kv=False),
            "FNet": lambda: vision_xformer.FNet(**no_heads),
        }[name]()
    return randomize(model).eval()


EXACT = [(name, size) for size in ("tiny", "paper") for name in ("ViN", "ViL", "ViL_kv_per_head", "FNet")]


@pytest.mark.parametrize("name,size", EXACT, ids=[f"{n}-{s}" for n, s in EXACT])
@torch.no_grad()
def test_converted_logits_match_the_source(name, size, cifar_images, tmp_path):
    """From the state dict saved to disk (and, tiny, from the model instance): the source's logits, and a folder
    that loads with AutoModelForImageClassification. Paper size at batch 2 (1,025 tokens)."""
    images = cifar_images[0][: 4 if size == "tiny" else 2]
    source = build(name, size)
    path = tmp_path / "source.pt"
    torch.save(source.state_dict(), path)
    # What the weights do not show: the landmark count (the package default, 64, for the paper size) and the
    # head count of a ViL with one key/value head per query head.
    given = {"num_landmarks": 16} if (name, size) == ("ViN", "tiny") else {}
    if name == "ViL_kv_per_head":
        given["num_attention_heads"] = TINY["heads"] if size == "tiny" else PAPER["heads"]
    result = convert_vision_xformer(path, tmp_path / "vix", images=images, **given)
    parity = report(result, f"vision-xformer {name} {size}")
    assert parity["max_abs_logit_diff"] <= ATOL  # against the package's model rebuilt from the file
    pixels = result.processor(images, return_tensors="pt")["pixel_values"]
    expected = source(pixels)
    assert expected.abs().max() > 0.5  # random weights, not a trivial model
    torch.testing.assert_close(result.model(pixels).logits, expected, atol=ATOL, rtol=0)  # against the original

    config = result.config
    assert config.patch_embedding_norm and config.layer_norm_eps == 1e-5
    if name == "ViN":
        assert (config.nystrom_padding, config.nystrom_pinv_scale) == ("zeros_front", "global")
        if size == "paper":
            assert config.num_tokens == 1025 and config.nystrom_num_landmarks == 64 and config.head_dim == 64
    card = (tmp_path / "vix" / "README.md").read_text()
    assert "vision-xformer" in card and f"{parity['max_abs_logit_diff']:.2e}" in card

    if size == "tiny":
        from transformers import AutoModelForImageClassification

        reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "vix").eval()
        torch.testing.assert_close(reloaded(pixels).logits, expected, atol=ATOL, rtol=0)
        from_instance = convert_vision_xformer(source, images=images)
        assert report(from_instance, f"vision-xformer {name} {size}, instance")["max_abs_logit_diff"] <= ATOL


@pytest.mark.parametrize("size", ["tiny", "paper"])
def test_vip_converts_exactly_with_the_global_key_stabilizer(size, cifar_images, tmp_path):
    """Every ViP tensor lands in ViX unchanged (the Performer features too), and with the compatibility setting
    performer_key_stabilizer="global" (performer-pytorch 1.0's one maximum over the batch) the logits match."""
    source = build("ViP", size)
    result = convert_vision_xformer(source, tmp_path / "vip", images=cifar_images[0][:2])
    parity = report(result, f"vision-xformer ViP {size}")
    assert parity["expected_exact"] and parity["max_abs_logit_diff"] <= ATOL
    attention = source.transformer.layers[0][0].fn
    mixer = result.model.vix.layers[0].attention
    assert torch.equal(mixer.kernel.projection_matrix, attention.fast_attention.projection_matrix)
    assert torch.equal(mixer.q_proj.bias, attention.to_q.bias)
    assert torch.equal(mixer.o_proj.weight, attention.to_out.weight)
    assert result.config.performer_redraw_interval == 0
    assert result.config.performer_key_stabilizer == "global"


def test_vip_differs_without_the_global_key_stabilizer(cifar_images):
    """The per-(sample, head) default is not the authors' numerics: the compatibility setting is what matters."""
    result = convert_vision_xformer(build("ViP", "tiny"), images=cifar_images[0][:2], atol=None)
    model = result.model.eval()
    pixels = result.processor(cifar_images[0][:2], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        exact = model(pixels).logits
        for layer in model.vix.layers:
            layer.attention.kernel.global_key_stabilizer = False
        default = model(pixels).logits
    assert (exact - default).abs().max() > 10 * ATOL


def test_cli(tmp_path, cifar_images, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0 and "--checkpoint" in capsys.readouterr().out
    source = build("ViN", "tiny")
    from safetensors.torch import save_file

    save_file(source.state_dict(), tmp_path / "vin.safetensors")
    cifar_images[0][0].save(tmp_path / "image.png")
    result = main(["--checkpoint", str(tmp_path / "vin.safetensors"), "--output_dir", str(tmp_path / "out"),
                   "--num_landmarks", "16", "--images", str(tmp_path / "image.png")])
    assert result.parity[0]["max_abs_logit_diff"] <= ATOL and (tmp_path / "out" / "model.safetensors").exists()


# ---------------------------------------------------------------------------------------------------------
# Errors: a clear message, nothing written
# ---------------------------------------------------------------------------------------------------------


def test_errors_write_nothing(tmp_path):
    source = build("ViN", "tiny")
    out = tmp_path / "out"
    state = source.state_dict()

    unknown = {**state, "transformer.layers.0.0.fn.extra_gate": torch.zeros(3)}
    with pytest.raises(ConversionError, match="extra_gate"):
        convert_vision_xformer(unknown, out)
    assert_nothing_written(out)

    wrong_shape = {**state, "transformer.layers.1.1.fn.net.3.bias": torch.zeros(7)}
    with pytest.raises(ConversionError, match=r"shape mismatches: vix\.layers\.1\.mlp\.fc2\.bias \(7,\)"):
        convert_vision_xformer(wrong_shape, out)
    assert_nothing_written(out)

    with pytest.raises(ConversionError, match="pool='mean'"):
        convert_vision_xformer(state, out, pool="mean")
    mean_model = randomize(vision_xformer.ViN(**TINY, num_landmarks=16, pool="mean"))
    with pytest.raises(ConversionError, match="includ"):
        convert_vision_xformer(mean_model, out)
    with pytest.raises(ConversionError, match="not the paper's FNet"):
        convert_vision_xformer(vision_xformer.FNet2D(num_classes=10, dim=32, depth=1, mlp_dim=64), out)
    with pytest.raises(ConversionError, match="Unsupported source architecture"):
        convert_vision_xformer(torch.nn.Linear(2, 2), out)
    with pytest.raises(ConversionError, match="Not a vision-xformer model"):
        convert_vision_xformer({"weight": torch.zeros(2, 2)}, out)
    with pytest.raises(ConversionError, match="num_attention_heads"):
        convert_vision_xformer(build("ViL_kv_per_head", "tiny").state_dict(), out)
    with pytest.raises(ConversionError, match="contradicts"):
        convert_vision_xformer(state, out, num_attention_heads=2)
    assert_nothing_written(out)

    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(ConversionError, match="not empty"):
        convert_vision_xformer(source, out)
    assert (out / "keep.txt").read_text() == "user data"


def test_broken_checkpoints_are_one_line_errors(tmp_path, capsys):
    """A truncated .safetensors, a pickle named .safetensors (never unpickled) and a state dict without
    `pos_embedding`: the converter's own error, exit 2, one line, nothing written."""
    from safetensors.torch import save_file

    state = build("ViN", "tiny").state_dict()
    save_file(state, tmp_path / "vin.safetensors")
    truncated = truncated_copy(tmp_path / "vin.safetensors", tmp_path / "truncated.safetensors")
    marker = tmp_path / "unpickled"
    torch.save({"pos_embedding": WritesAFileWhenUnpickled(marker)}, tmp_path / "pickle.safetensors")
    torch.save({k: v for k, v in state.items() if k != "pos_embedding"}, tmp_path / "no_positions.pt")
    cases = {truncated: "truncated.safetensors is not a readable safetensors file",
             tmp_path / "pickle.safetensors": "pickle.safetensors is not a readable safetensors file",
             tmp_path / "no_positions.pt": "no_positions.pt.* has no 'pos_embedding'"}
    for checkpoint, message in cases.items():
        assert_cli_refuses(main, ["--checkpoint", checkpoint, "--num_landmarks", 16], tmp_path / "out", capsys,
                           message)
    assert not marker.exists()
