"""`--streaming true`: train from a `datasets` IterableDataset (a Hub id, or local parquet / arrow / image files),
reading and decoding each image once per epoch as the batches need it, never the whole set first.

- Splits: `train`, a validation split (`validation`/`valid`/`val`/`dev`) and `test` are read as they are. A missing
  validation or test split is carved from the head of the train stream: the first `--max_eval_samples` examples
  (for each carved split, in that order), which the train stream then skips. A stream has no length, so
  `--validation_split_size` cannot apply.
- Labels: the label column must be a `ClassLabel` (the Hub's parquet metadata and image folders have one), so the
  label set is known without reading the data.
- Order: `shuffle(seed, buffer_size=--shuffle_buffer_size)` shuffles the shard order and, within a buffer, the
  examples; the Trainer re-seeds it every epoch (`set_epoch`). `--max_train_samples N` keeps the first N.
- Steps: the Trainer needs `--max_steps` for a stream. When the train split's size is known (the dataset's metadata),
  `--num_train_epochs` is turned into steps here; otherwise `--max_steps` must be given.
- Workers: `--dataloader_num_workers N` reads N shards in parallel, so N should not exceed the dataset's shard count
  (parquet files; an image folder streams as one shard, so extra workers idle and datasets says so).
- Resume: `--resume_from_checkpoint last` continues where the run stopped: the Trainer replays the interrupted
  epoch's stream up to the checkpoint's step (reading and decoding those batches again, training none twice);
  the per-epoch shuffle and per-sample augmentation seeds make the data the same as without the interruption.
"""

import logging
import math

from .data import VALIDATION_SPLITS, detect_columns
from .errors import UsageError
from .lazy_images import make_transform


logger = logging.getLogger(__name__)


def open_stream(args):
    """The IterableDatasetDict of `--dataset_name` (a Hub id or local files)."""
    from datasets import IterableDatasetDict, load_dataset

    if args.dataset_name.startswith("sklearn:"):
        raise UsageError(f"--streaming true reads a Hub id or local files; {args.dataset_name} is built in memory: "
                         "drop --streaming.")
    loaded = load_dataset(args.dataset_name, args.dataset_config_name, data_dir=args.data_dir,
                          cache_dir=args.cache_dir, streaming=True)
    return loaded if isinstance(loaded, IterableDatasetDict) else IterableDatasetDict(train=loaded)


def label_names(train, label_column: str) -> list[str]:
    from datasets import ClassLabel

    feature = train.features[label_column]
    if not isinstance(feature, ClassLabel):
        raise UsageError(f"--streaming true needs a ClassLabel label column, so that the label set is known without "
                         f"reading the data; {label_column!r} is {type(feature).__name__}. Cast it "
                         "(datasets' cast_column) and save the data, or drop --streaming.")
    return list(feature.names)


def known_size(dataset, split: str) -> int | None:
    """The split's example count from the dataset's metadata, if it has one."""
    splits = dataset.info.splits or {}
    info = splits.get(split) if hasattr(splits, "get") else None
    return info.num_examples if info is not None and info.num_examples else None


def streaming_splits(args, seed: int):
    """(splits {train, validation, test} of IterableDataset with undecoded images, info) as `data.load_splits`."""
    from datasets import Image

    stream = open_stream(args)
    if "train" not in stream:
        raise UsageError(f"Dataset {args.dataset_name!r} has no 'train' split; splits: {list(stream)}.")
    train = stream["train"]
    if train.features is None:
        raise UsageError(f"Dataset {args.dataset_name!r} does not declare its columns, which --streaming true needs "
                         "to find the image and label columns without reading the data.")
    image_column, label_column = detect_columns(train, args.image_column, args.label_column)
    labels = label_names(train, label_column)
    if len(labels) < 2:
        raise UsageError(f"Dataset {args.dataset_name!r} has {len(labels)} class(es) in column {label_column!r}: a "
                         "classifier needs at least two.")

    def prepared(split):
        return split.select_columns([image_column, label_column]).cast_column(image_column, Image(decode=False))

    sizes = {"train": known_size(train, "train")}
    train = prepared(train)
    held_out, carved = {}, []
    for name, candidates in (("validation", VALIDATION_SPLITS), ("test", ("test",))):
        found = next((candidate for candidate in candidates if candidate in stream), None)
        if found is not None:
            held_out[name] = prepared(stream[found])
            sizes[name] = known_size(stream[found], found)
            continue
        if not args.max_eval_samples:
            raise UsageError(f"--streaming true: {args.dataset_name!r} has no {name} split, and a stream cannot be "
                             f"split by fraction. Give --max_eval_samples N to hold out the first N training "
                             f"examples as {name}.")
        held_out[name], train = train.take(args.max_eval_samples), train.skip(args.max_eval_samples)
        sizes[name] = args.max_eval_samples
        sizes["train"] = sizes["train"] - args.max_eval_samples if sizes["train"] else None
        carved.append(name)
    if carved:
        logger.info("Carved %s from the head of the train stream (%d examples each).", " and ".join(carved),
                    args.max_eval_samples)
    if args.max_train_samples:
        train = train.take(args.max_train_samples)
        sizes["train"] = min(sizes["train"], args.max_train_samples) if sizes["train"] else args.max_train_samples
    if args.max_eval_samples:
        for name in held_out:
            held_out[name] = held_out[name].take(args.max_eval_samples)
            sizes[name] = min(sizes[name], args.max_eval_samples) if sizes[name] else args.max_eval_samples
    splits = {"train": train.shuffle(seed=seed, buffer_size=args.shuffle_buffer_size), **held_out}
    info = {"image_column": image_column, "label_column": label_column, "labels": labels, "skipped_images": {},
            "carved_splits": carved, "images_checked": False, "streaming": True,
            "split_sizes": {name: size for name, size in sizes.items() if size}}
    return splits, info


def with_transforms(splits: dict, processor, image_column: str, label_column: str, augmenter, skipped,
                    batch_size: int):
    """Each split decoded (and the train split augmented) as it is read, `batch_size` images at a time (the
    training batch: a larger one would make a worker decode several batches before handing over the first)."""
    out = {}
    for name, split in splits.items():
        transform = make_transform(processor, image_column, label_column, augmenter if name == "train" else None,
                                   split=name, skipped=skipped)
        out[name] = split.map(transform, batched=True, batch_size=batch_size,
                              remove_columns=[image_column, label_column])
    return out


def streaming_max_steps(training, train_size: int | None) -> int:
    """--max_steps for a stream: as given, else the steps of --num_train_epochs over a train split of known size."""
    if training.max_steps > 0:
        return training.max_steps
    if not train_size:
        raise UsageError("--streaming true: the train split's size is not in the dataset's metadata, so the number "
                         "of steps cannot come from --num_train_epochs: give --max_steps N.")
    batch = training.per_device_train_batch_size * training.world_size * training.gradient_accumulation_steps
    return math.ceil(training.num_train_epochs * math.ceil(train_size / batch))
