"""Fashion-MNIST from Debian's `dataset-fashion-mnist` package (idx files, no network) as a local dataset in the
Hub's layout (`image`, `label`; train and test splits), so the training job reads it like any dataset:

    apt-get install dataset-fashion-mnist
    python -m training.fashion_mnist outputs/data/fashion_mnist
    python -m training.train --dataset_name outputs/data/fashion_mnist ...

Where the Hub is reachable, `--dataset_name zalando-datasets/fashion_mnist` is the same data.
"""

import argparse
import gzip
import sys
from pathlib import Path

import numpy as np


DEBIAN_FOLDER = Path("/usr/share/datasets/fashion-mnist")
LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SPLITS = {"train": "train", "test": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """An idx file (MNIST's format: big-endian dims after a magic number whose last byte is the rank)."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    rank = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * rank).reshape(shape)


def build(source: Path, output: Path) -> None:
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage

    features = Features({"image": Image(), "label": ClassLabel(names=LABELS)})
    splits = {}
    for split, prefix in SPLITS.items():
        images = read_idx(source / f"{prefix}-images-idx3-ubyte.gz")  # (N, 28, 28)
        labels = read_idx(source / f"{prefix}-labels-idx1-ubyte.gz")  # (N,)
        pictures = [PILImage.fromarray(image, mode="L") for image in images]
        splits[split] = Dataset.from_dict({"image": pictures, "label": labels.tolist()}, features=features)
    write_parquet(DatasetDict(splits), output)


def write_parquet(dataset, output: Path) -> None:
    """data/<split>-00000-of-00001.parquet, the layout `load_dataset(folder)` reads."""
    (output / "data").mkdir(parents=True, exist_ok=True)
    for split, part in dataset.items():
        part.to_parquet(str(output / "data" / f"{split}-00000-of-00001.parquet"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.fashion_mnist", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--source", type=Path, default=DEBIAN_FOLDER)
    args = parser.parse_args(argv)
    missing = [name for prefix in SPLITS.values() for name in (f"{prefix}-images-idx3-ubyte.gz",
                                                                 f"{prefix}-labels-idx1-ubyte.gz")
               if not (args.source / name).is_file()]
    if missing:
        print(f"error: {args.source} lacks {', '.join(missing)}; install Debian's dataset-fashion-mnist "
              "(apt-get install dataset-fashion-mnist) or pass --source", file=sys.stderr)
        return 2
    if args.output_dir.exists():
        print(f"error: {args.output_dir} exists; choose a new folder", file=sys.stderr)
        return 2
    build(args.source, args.output_dir)
    print(f"wrote {args.output_dir} (train 60,000 and test 10,000 images, 28x28 grayscale, 10 classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
