"""`--streaming true` (training/streaming.py) and images decoded as they are read (training/lazy_images.py): a
stream of parquet shards trains, resumes to the weights of an uninterrupted run, and an unreadable image stops the
job naming its file or is skipped and counted, for a stream and for the map-style path. Tiny model, a few steps."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from test_training import TINY, Interrupt, write_image_folder
from training.train import main


def png_bytes(array) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def parquet_stream(tmp_path_factory):
    """The Hub's parquet layout: train in 3 shards (72 images of 3 classes), validation and test in one each."""
    from datasets import ClassLabel, Dataset, Features
    from datasets import Image as ImageFeature

    root = tmp_path_factory.mktemp("stream")
    (root / "data").mkdir()
    rng = np.random.default_rng(0)
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=["a", "b", "c"])})

    def write(split, count, shards):
        for shard in range(shards):
            labels = [int(i % 3) for i in range(count)]
            images = [{"bytes": png_bytes(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)), "path": None}
                      for _ in labels]
            Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(
                root / "data" / f"{split}-{shard:05d}-of-{shards:05d}.parquet")

    write("train", 24, 3)
    write("validation", 12, 1)
    write("test", 12, 1)
    return root


STREAM = ["--streaming", "true", "--shuffle_buffer_size", "16", "--per_device_train_batch_size", "8",
          "--per_device_eval_batch_size", "12", "--augmentation", "crop_flip", "--max_steps", "4",
          "--save_strategy", "steps", "--save_steps", "2", "--eval_strategy", "no", "--load_best_model_at_end", "false",
          "--report_to", "none", *TINY]


def test_a_stream_trains_and_resumes_to_the_uninterrupted_weights(parquet_stream, tmp_path):
    """72 streamed images, batch 8, 4 steps; killed after step 3 (checkpoint-2 saved), resumed from it."""
    common = ["--dataset_name", str(parquet_stream), *STREAM]
    full = main(["--output_dir", str(tmp_path / "full"), *common])
    assert full["streaming"] is True and full["global_steps"] == 4 and full["split_sizes"]["test"] == 12
    killed = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        main(["--output_dir", str(killed), *common], callbacks=[Interrupt(at=3)])
    resumed = main(["--output_dir", str(killed), *common, "--resume_from_checkpoint", "last"])
    assert resumed["global_steps"] == 4
    a = load_file(tmp_path / "full" / "final" / "model.safetensors")
    b = load_file(killed / "final" / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)  # the same data, in the same order, trained once
    assert resumed["test_accuracy"] == full["test_accuracy"]


def test_a_stream_needs_a_step_count_and_files(parquet_stream, tmp_path, capsys):
    from datasets import Dataset

    unsized = tmp_path / "unsized"  # parquet files without the Hub's metadata: no split sizes
    shard = parquet_stream / "data" / "train-00000-of-00003.parquet"
    Dataset.from_parquet(str(shard)).to_parquet(unsized / "x.parquet")
    for argv, message in (
        (["--dataset_name", str(unsized), "--streaming", "true", "--max_eval_samples", "4"], "give --max_steps N"),
        (["--dataset_name", str(unsized), "--streaming", "true", "--max_steps", "1"], "Give --max_eval_samples N"),
        (["--streaming", "true"], "sklearn:digits is built in memory"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--output_dir", str(tmp_path / "run"), *TINY])
        assert exit_info.value.code == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0]
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("mode", ["streaming", "map-style, not checked first"])
def test_unreadable_images_found_as_they_are_read(tmp_path, capsys, mode):
    write_image_folder(tmp_path / "images", corrupt=True)
    read = ["--streaming", "true", "--max_eval_samples", "4"] if mode == "streaming" else ["--check_images", "false"]
    common = ["--dataset_name", str(tmp_path / "images"), *read, "--max_steps", "2",
              "--per_device_train_batch_size", "16", "--eval_strategy", "no", "--save_strategy", "no",
              "--load_best_model_at_end", "false", "--report_to", "none", *TINY]
    with pytest.raises(SystemExit) as exit_info:
        main(["--output_dir", str(tmp_path / "stopped"), *common])
    assert exit_info.value.code == 2
    assert "broken.png" in capsys.readouterr().err
    metrics = main(["--output_dir", str(tmp_path / "skipped"), *common, "--skip_unreadable_images", "true"])
    assert sum(metrics["skipped_image_reads"].values()) >= 1  # one file, counted each time it is read
    saved = json.loads((tmp_path / "skipped" / "final" / "metrics.json").read_text())
    assert saved["skipped_image_reads"] == metrics["skipped_image_reads"]
