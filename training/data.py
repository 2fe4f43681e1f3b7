"""Data for the training job, through `datasets`: train / validation / test splits with detected columns.

Sources (`--dataset_name`):
  sklearn:digits             scikit-learn's bundled 1,797 8x8 grayscale digits (offline; the default)
  uoft-cs/cifar10            any Hub id (needs the network), with `--dataset_config_name` if it has configs
  ../shared/data/cifar10     a local folder in the Hub's layout (parquet / arrow / csv files)
  path/to/images             an image folder (one sub-folder per class), via datasets' `imagefolder`

Splits: a `validation` (or `valid`/`val`) split is used as is; without one, a seeded, stratified
`--validation_split_size` fraction is carved from train. The same for `test` (`--test_split_size`).
Checkpoints are selected on validation; test is evaluated once, at the end.

Unreadable images are found before training by decoding every image once (`--check_images`, for sets of up
to `PRECHECK_LIMIT` images): the job stops with an error naming the split, row and file, or, with
`--skip_unreadable_images`, drops and counts them. Larger sets, `--check_images false` and `--streaming true`
find them as they are read (training/lazy_images.py): the job stops naming the file, or skips and counts them.
`--streaming true` reads the data as a `datasets` IterableDataset instead (training/streaming.py).
Images that ViX cannot scale to 8 bits (mode `I` beyond 16 bits, mode `F` outside [0, 1]; see
`modeling_vix.image_processing_vix.to_8bit`) count as unreadable. Labels outside [0, number of labels), other
than -100 (ignored), stop the job with an error naming the split.
"""

import io
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from modeling_vix.image_processing_vix import to_8bit

from .augment import POLICIES
from .errors import UsageError


logger = logging.getLogger(__name__)

IMAGE_COLUMNS = ("image", "img", "pixel_values", "picture")
LABEL_COLUMNS = ("label", "labels", "fine_label", "coarse_label", "class")
VALIDATION_SPLITS = ("validation", "valid", "val", "dev")
ROW_COLUMN = "__vix_row__"  # original row id of a training sample: seeds its augmentation
DIGITS = "sklearn:digits"


@dataclass
class DataArguments:
    dataset_name: str = field(
        default=DIGITS,
        metadata={"help": f"'{DIGITS}' (bundled, offline), a Hub id (e.g. uoft-cs/cifar10), a local dataset folder in "
                          "Hub layout, an image folder (one sub-folder per class), or 'imagefolder' with --data_dir."},
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Dataset configuration (Hub datasets)."})
    data_dir: str | None = field(default=None, metadata={"help": "data_dir passed to datasets.load_dataset."})
    dataset_hub_id: str | None = field(
        default=None, metadata={"help": "Hub id to cite in the model card when the data came from a local copy."}
    )
    image_column: str | None = field(default=None, metadata={"help": f"Image column; detected from {IMAGE_COLUMNS}."})
    label_column: str | None = field(default=None, metadata={"help": f"Label column; detected from {LABEL_COLUMNS}."})
    validation_split_size: float = field(
        default=0.1,
        metadata={"help": "Fraction of train carved (seeded, stratified) as validation when there is none."},
    )
    test_split_size: float = field(
        default=0.2, metadata={"help": "Fraction of train carved (seeded, stratified) as test when there is none."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Keep a seeded random subset of train."})
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep a seeded random subset of validation and of test."}
    )
    check_images: bool = field(default=True, metadata={
        "help": "Decode every image once before training, for sets of up to 100,000 images; larger sets (and false) "
                "find unreadable images as they are read."})
    preload_images: bool = field(default=False, metadata={
        "help": "Decode every image once into memory (uint8, at the model's input size) instead of once per epoch: "
                "much faster epochs for small images such as CIFAR (150 MB for CIFAR-10)."})
    skip_unreadable_images: bool = field(
        default=False, metadata={"help": "Drop (and count) unreadable images instead of stopping with an error."}
    )
    augmentation: str = field(default="none", metadata={"help": " | ".join(POLICIES), "choices": POLICIES})
    crop_padding: int = field(default=4, metadata={"help": "Zero padding (pixels) of the random crop."})
    randaugment_num_ops: int = 2
    randaugment_magnitude: float = 9.0
    random_erasing: float = field(default=0.25, metadata={"help": "Random-erasing probability (randaugment policy)."})
    cache_dir: str | None = None
    streaming: bool = field(default=False, metadata={
        "help": "Read the data as a datasets IterableDataset (a Hub id or local files), decoding images as they are "
                "read: for data larger than memory or disk cache. Needs a ClassLabel label column; shuffles with a "
                "buffer of --shuffle_buffer_size; --dataloader_num_workers N reads N shards in parallel."})
    shuffle_buffer_size: int = field(default=10_000, metadata={
        "help": "--streaming: examples held in the shuffle buffer (more: better mixed, more memory)."})


IGNORED_LABEL = -100  # the loss skips these samples (PyTorch's ignore_index)
PRECHECK_LIMIT = 100_000  # images decoded before training at most; larger sets are checked as they are read


class UnreadableImageError(UsageError):
    pass


class LabelError(UsageError):
    pass


def load_digits_dataset():
    """scikit-learn's bundled digits as a one-split DatasetDict of grayscale PIL images (8x8)."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image
    from PIL import Image as PILImage
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = [PILImage.fromarray((image * 255 / 16).astype(np.uint8), mode="L") for image in digits.images]
    features = Features({"image": Image(), "label": ClassLabel(names=[str(d) for d in range(10)])})
    return DatasetDict(train=Dataset.from_dict({"image": images, "label": digits.target.tolist()}, features=features))


def load_raw(args: DataArguments):
    from datasets import DatasetDict, load_dataset

    if args.dataset_name == DIGITS:
        return load_digits_dataset()
    loaded = load_dataset(args.dataset_name, args.dataset_config_name, data_dir=args.data_dir, cache_dir=args.cache_dir)
    if not isinstance(loaded, DatasetDict):
        loaded = DatasetDict(train=loaded)
    return loaded


class ColumnError(UsageError):
    pass


# datasets' imagefolder makes labels from the sub-folder names only when there are two or more of them
ONE_FOLDER = ("The dataset has images but no labels: an image folder gets its labels from its sub-folders, one per "
              "class, and a single sub-folder gives none (a classifier needs at least two classes). ")


def detect_columns(dataset, image_column=None, label_column=None):
    """(image column, label column): the ones given, else the first known name present, else by feature type."""
    from datasets import ClassLabel, Image

    names = list(dataset.column_names or dataset.features)
    features = dataset.features

    def hint(kind):  # images and nothing else: an image folder with one class folder, the usual cause
        image_only = kind == "label" and len(names) == 1 and isinstance(features[names[0]], Image)
        return ONE_FOLDER if image_only else ""

    def pick(given, candidates, feature_type, kind, flag):
        if given is not None:
            if given not in names:
                raise ColumnError(f"{hint(kind)}--{flag} {given!r} is not a column of the dataset; columns: {names}.")
            return given
        for name in candidates:
            if name in names:
                return name
        typed = [name for name in names if isinstance(features[name], feature_type)]
        if len(typed) == 1:
            return typed[0]
        raise ColumnError(
            f"{hint(kind)}Could not detect the {kind} column among {names} (known names: {', '.join(candidates)}); "
            f"pass --{flag}."
        )

    return (
        pick(image_column, IMAGE_COLUMNS, Image, "image", "image_column"),
        pick(label_column, LABEL_COLUMNS, ClassLabel, "label", "label_column"),
    )


def encode_labels(splits, label_column):
    """Make the label column a ClassLabel shared by every split; returns the label names."""
    from datasets import ClassLabel

    feature = splits["train"].features[label_column]
    if isinstance(feature, ClassLabel):
        return splits, list(feature.names)
    values = set()
    for split in splits.values():
        values.update(split.unique(label_column))
    if all(isinstance(v, (int, np.integer)) for v in values):
        # negative labels get no name: -100 (ignored) is fine, others are reported by check_labels
        names = [str(i) for i in range(int(max(values, default=-1)) + 1)]
    else:
        names = sorted(str(v) for v in values)
        splits = splits.map(lambda batch: {label_column: [str(v) for v in batch[label_column]]}, batched=True)
    return splits.cast_column(label_column, ClassLabel(names=names)), names


def _describe(item) -> str:
    if isinstance(item, dict) and item.get("path"):
        return f" (file {item['path']})"
    return ""


def find_unreadable(dataset, image_column, batch_size=1000):
    """[(row, description)] of the images PIL cannot fully decode."""
    from datasets import Image
    from PIL import Image as PILImage

    if not isinstance(dataset.features[image_column], Image):
        return []
    raw = dataset.cast_column(image_column, Image(decode=False)).select_columns([image_column])
    bad = []
    for start, batch in zip(range(0, len(raw), batch_size), raw.iter(batch_size=batch_size), strict=True):
        for offset, item in enumerate(batch[image_column]):
            try:
                if item is None:
                    raise ValueError("missing image")
                source = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
                with PILImage.open(source) as image:
                    image.load()
                    to_8bit(image)  # 16-bit and float images ViX cannot scale raise here, not mid-training
            except Exception as error:  # PIL raises many types for broken files
                bad.append((start + offset, f"{_describe(item)}: {type(error).__name__}: {error}"))
    return bad


def check_images(splits, image_column, skip: bool):
    """Raise UnreadableImageError naming the rows/files, or drop them when `skip`; returns {split: skipped}."""
    skipped = {}
    for name in list(splits):
        bad = find_unreadable(splits[name], image_column)
        if not bad:
            continue
        if not skip:
            listed = "; ".join(f"row {row}{what}" for row, what in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise UnreadableImageError(
                f"{len(bad)} unreadable image(s) in split {name!r}: {listed}{more}. Fix or remove them, or pass "
                "--skip_unreadable_images true to drop and count them."
            )
        bad_rows = {row for row, _ in bad}
        splits[name] = splits[name].select([i for i in range(len(splits[name])) if i not in bad_rows])
        skipped[name] = len(bad)
        logger.warning("Skipped %d unreadable image(s) in split %r (first: row %d%s).", len(bad), name, *bad[0])
    return skipped


def check_label_count(labels: list, label_column: str, dataset_name: str) -> None:
    """A classifier needs two classes or more: one class would train a model that always answers it."""
    if len(labels) < 2:
        found = f"one class ({labels[0]!r})" if labels else "no classes"
        raise LabelError(f"Dataset {dataset_name!r} has {found} in column {label_column!r}: a classifier needs at "
                         "least two. Add the other classes (an image folder: one sub-folder per class).")


def check_labels(splits, label_column, num_labels: int) -> None:
    """Raise LabelError naming the split when a label is outside [0, num_labels) and is not -100 (ignored).

    Checked once here, where the data enters, so the model need not check every batch (a host sync per step).
    """
    for name, split in splits.items():
        bad = sorted(v for v in split.unique(label_column) if v != IGNORED_LABEL and not 0 <= v < num_labels)
        if bad:
            raise LabelError(
                f"Split {name!r} has labels outside [0, {num_labels}) in column {label_column!r}: "
                f"{', '.join(map(str, bad[:5]))}{' ...' if len(bad) > 5 else ''} (-100 marks a sample to ignore)."
            )


def _carve(dataset, size, seed, label_column):
    try:
        return dataset.train_test_split(test_size=size, seed=seed, stratify_by_column=label_column)
    except ValueError:  # a class too small to stratify
        return dataset.train_test_split(test_size=size, seed=seed)


def _subset(dataset, count, seed):
    if count is None or count >= len(dataset):
        return dataset
    return dataset.shuffle(seed=seed).select(range(count))


def load_splits(args: DataArguments, seed: int):
    """DatasetDict(train, validation, test) + info {image_column, label_column, labels, skipped_images, ...}."""
    from datasets import DatasetDict

    raw = load_raw(args)
    if "train" not in raw:
        raise UsageError(f"Dataset {args.dataset_name!r} has no 'train' split; splits: {list(raw)}.")
    image_column, label_column = detect_columns(raw["train"], args.image_column, args.label_column)
    splits = DatasetDict({name: split.select_columns([image_column, label_column]) for name, split in raw.items()})
    splits, labels = encode_labels(splits, label_column)
    check_label_count(labels, label_column, args.dataset_name)
    check_labels(splits, label_column, len(labels))
    precheck = args.check_images and sum(len(split) for split in splits.values()) <= PRECHECK_LIMIT
    skipped = check_images(splits, image_column, args.skip_unreadable_images) if precheck else {}

    train = splits["train"]
    train = train.add_column(ROW_COLUMN, np.arange(len(train), dtype=np.int64))
    carved = []
    test = splits.get("test")
    if test is None:
        parts = _carve(train, args.test_split_size, seed, label_column)
        train, test = parts["train"], parts["test"]
        carved.append("test")
    validation = next((splits[name] for name in VALIDATION_SPLITS if name in splits), None)
    if validation is None:
        parts = _carve(train, args.validation_split_size, seed, label_column)
        train, validation = parts["train"], parts["test"]
        carved.append("validation")
    if carved:
        logger.info("Carved %s from train (seed %d).", " and ".join(carved), seed)
    result = DatasetDict(
        train=_subset(train, args.max_train_samples, seed),
        validation=_subset(validation, args.max_eval_samples, seed),
        test=_subset(test, args.max_eval_samples, seed),
    )
    info = {
        "image_column": image_column, "label_column": label_column, "labels": labels,
        "skipped_images": skipped, "carved_splits": carved, "images_checked": precheck,
        "split_sizes": {name: len(split) for name, split in result.items()},
    }
    return result, info


def dataset_display_name(args: DataArguments) -> str:
    if args.dataset_hub_id:
        return args.dataset_hub_id
    if args.dataset_name == DIGITS:
        return "sklearn-digits"
    if os.path.exists(args.dataset_name):
        return os.path.basename(os.path.normpath(args.dataset_name))
    return args.dataset_name


def dataset_hub_id(args: DataArguments) -> str | None:
    """The Hub id of the data, when there is one (for the card's `datasets:` metadata)."""
    if args.dataset_hub_id:
        return args.dataset_hub_id
    if args.dataset_name == DIGITS or args.dataset_name == "imagefolder" or os.path.exists(args.dataset_name):
        return None
    return args.dataset_name
