"""The offline Fashion-MNIST builder: idx files read as written, and a missing source is one error line."""

import gzip

import numpy as np
import pytest

from training.fashion_mnist import main, read_idx


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_read_back_with_their_shape(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28))
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "labels.gz", np.array([9, 0, 4]))
    assert np.array_equal(read_idx(tmp_path / "images.gz"), images)
    assert read_idx(tmp_path / "labels.gz").tolist() == [9, 0, 4]


def test_builds_the_hub_layout_and_refuses_a_missing_source(tmp_path, capsys):
    source = tmp_path / "debian"
    source.mkdir()
    assert main([str(tmp_path / "out"), "--source", str(source)]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err and not (tmp_path / "out").exists()
    rng = np.random.default_rng(1)
    for prefix, count in (("train", 4), ("t10k", 2)):
        write_idx(source / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, size=(count, 28, 28)))
        write_idx(source / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count))
    assert main([str(tmp_path / "out"), "--source", str(source)]) == 0
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(tmp_path / "out"))
    assert {split: len(part) for split, part in loaded.items()} == {"train": 4, "test": 2}
    assert loaded["train"].features["label"].names[9] == "Ankle boot"
    assert loaded["test"][1]["image"].size == (28, 28) and loaded["test"][1]["label"] == 1
