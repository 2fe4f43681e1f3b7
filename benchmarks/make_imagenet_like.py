"""An ImageNet-shaped image classification set made from nothing: JPEGs of ImageNet's typical size (256 px) in many
classes, in the Hub's parquet layout (`data/<split>-NNNNN-of-MMMMM.parquet`, an `image` and a ClassLabel `label`
column), so that `datasets.load_dataset(folder)` reads it as it reads a Hub dataset, map-style or streaming.

    python -m benchmarks.make_imagenet_like --output_dir outputs/imagenet_like    # 20k images, 100 classes
    python -m benchmarks.make_imagenet_like --output_dir outputs/tiny_like --num_images 600 --num_classes 10

Each class is a colour and a stripe orientation; each image adds a random phase, a blob and noise, so the JPEGs
cost what photographs of that size cost to decode (about 10-20 kB each) and the classes can be learned. The data
is for measuring input pipelines (benchmarks/streaming.py), not accuracy.
"""

import io
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from transformers import HfArgumentParser


@dataclass
class MakeArguments:
    output_dir: Path = field(metadata={"help": "Folder to write (must not exist)."})
    num_images: int = field(default=20_000,
                            metadata={"help": "Training images; validation and test get 5 percent each."})
    num_classes: int = 100
    image_size: int = 256
    images_per_shard: int = 500
    jpeg_quality: int = 90
    seed: int = 0


def class_image(label: int, num_classes: int, size: int, rng) -> np.ndarray:
    """(size, size, 3) uint8: the class's hue and stripe angle, a random phase, a random blob, noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    angle = math.pi * label / num_classes
    stripes = 0.5 + 0.5 * np.sin(2 * math.pi * (6 * (x * math.cos(angle) + y * math.sin(angle)) + rng.random()))
    centre = rng.random(2)
    blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / 0.02)
    hue = 2 * math.pi * label / num_classes
    colour = 0.5 + 0.5 * np.array([math.cos(hue), math.cos(hue + 2.1), math.cos(hue + 4.2)])
    image = stripes[..., None] * colour + 0.4 * blob[..., None] + rng.normal(0, 0.05, (size, size, 3))
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


def jpeg(array: np.ndarray, quality: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_split(args: MakeArguments, split: str, count: int, rng) -> int:
    """Write `count` images of `split` in shards of `images_per_shard`; returns the bytes written."""
    from datasets import ClassLabel, Dataset, Features, Image

    names = [f"class_{i:03d}" for i in range(args.num_classes)]
    features = Features({"image": Image(), "label": ClassLabel(names=names)})
    shards = max(1, math.ceil(count / args.images_per_shard))
    written = 0
    for shard in range(shards):
        labels = [int(label) for label in rng.integers(0, args.num_classes, min(args.images_per_shard, count))]
        count -= len(labels)
        images = [{"bytes": jpeg(class_image(label, args.num_classes, args.image_size, rng), args.jpeg_quality),
                   "path": None} for label in labels]
        path = args.output_dir / "data" / f"{split}-{shard:05d}-of-{shards:05d}.parquet"
        written += sum(len(image["bytes"]) for image in images)
        Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(path)
    return written


def write_metadata(args: MakeArguments, sizes: dict, written: dict) -> None:
    """README.md with the `dataset_info` a Hub dataset carries: the split sizes, which a stream cannot count."""
    import yaml

    info = {"dataset_info": {"features": [{"name": "image", "dtype": "image"}, {"name": "label", "dtype": {
        "class_label": {"names": {i: f"class_{i:03d}" for i in range(args.num_classes)}}}}],
        "splits": [{"name": split, "num_bytes": written[split], "num_examples": count}
                   for split, count in sizes.items()]},
        "configs": [{"config_name": "default", "data_files": [
            {"split": split, "path": f"data/{split}-*"} for split in sizes]}]}
    text = (f"---\n{yaml.safe_dump(info, sort_keys=False)}---\n\nSynthetic ImageNet-shaped images made by "
            "benchmarks/make_imagenet_like.py of the ViX repository, for input-pipeline measurements.\n")
    (args.output_dir / "README.md").write_text(text)


def main(argv=None) -> None:
    (args,) = HfArgumentParser(MakeArguments).parse_args_into_dataclasses(args=argv)
    if args.output_dir.exists():
        sys.exit(f"error: {args.output_dir} exists; choose a new folder.")
    (args.output_dir / "data").mkdir(parents=True)
    rng = np.random.default_rng(args.seed)
    start = time.perf_counter()
    held_out = max(args.num_classes, args.num_images // 20)
    sizes = {"train": args.num_images, "validation": held_out, "test": held_out}
    written = {split: write_split(args, split, count, rng) for split, count in sizes.items()}
    write_metadata(args, sizes, written)
    total = sum(written.values())
    print(f"wrote {sum(sizes.values()):,} JPEGs ({args.image_size} px, {args.num_classes} classes, "
          f"{total / 2**20:,.0f} MiB) to {args.output_dir} in {time.perf_counter() - start:.0f} s: {sizes}")


if __name__ == "__main__":
    main()
