"""Images decoded as they are read, with unreadable ones found there: the job stops naming the file, or (with
`--skip_unreadable_images true`) the image is dropped from its batch and counted.

Used by `--streaming true` (nothing can be decoded before training: the data is read once, as it streams) and by
the map-style path when the data is too large to decode every image first (`data.PRECHECK_LIMIT`); smaller sets
are still checked before training (`data.check_images`), so a broken file stops the job before anything is written.

The image column is read undecoded (`datasets.Image(decode=False)`: path and bytes), so a failure names its file.
Rows keep their place in the batch, marked by `READABLE`; `ReadableImagesCollator` drops the unreadable ones
(the map-style path must return one row per index it was asked for). Counts are shared with DataLoader worker
processes (a `multiprocessing` value), and count reads: an unreadable file in every epoch counts once per epoch.
"""

import io
import logging
import multiprocessing
import zlib

import torch
from transformers import DefaultDataCollator

from modeling_vix.image_processing_vix import to_8bit

from .data import ROW_COLUMN, UnreadableImageError


logger = logging.getLogger(__name__)

READABLE = "__vix_readable__"  # per row: False for an unreadable image, dropped by ReadableImagesCollator


class SkippedReads:
    """How many unreadable images each split skipped, counted across DataLoader worker processes."""

    def __init__(self, splits):
        self.counts = {name: multiprocessing.Value("q", 0) for name in splits}

    def add(self, split: str) -> None:
        with self.counts[split].get_lock():
            self.counts[split].value += 1

    def totals(self) -> dict:
        return {name: count.value for name, count in self.counts.items() if count.value}


def describe(item) -> str:
    if isinstance(item, dict) and item.get("path"):
        return f"file {item['path']}"
    return "an image stored in the dataset (no file name)"


def decode(item):
    """A PIL image from datasets' undecoded form ({"path", "bytes"}), fully loaded and scalable to 8 bits."""
    from PIL import Image as PILImage

    if item is None:
        raise ValueError("missing image")
    if not isinstance(item, dict):  # already decoded (a PIL image)
        image = item
    else:
        image = PILImage.open(io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"])
    image.load()
    return to_8bit(image)  # 16-bit and float images ViX cannot scale raise here


def stable_row_id(item) -> int:
    """A sample's id for seeding its augmentation where there is no row number (a stream): its path, or bytes."""
    key = (item.get("path") or item.get("bytes")) if isinstance(item, dict) else None
    return zlib.crc32(key.encode() if isinstance(key, str) else key or b"")


def make_transform(processor, image_column: str, label_column: str, augmenter=None, split: str = "train",
                   skipped: SkippedReads | None = None):
    """A batched transform (datasets `set_transform`, or `IterableDataset.map(batched=True)` for a stream): images
    (undecoded {"path", "bytes"}, or PIL) -> `pixel_values` (C, H, W) per row (augmented with per-sample seeds
    when `augmenter` is active, then normalised), `labels`, and `READABLE`.

    16-bit and float images are scaled to 8 bits here too (`to_8bit`), not only in VixImageProcessor, so that a
    checkpoint's own processor (fine-tuning) gets them right as well. `skipped` None: an unreadable image stops
    the job (UnreadableImageError naming the split and the file); else it is counted there and its row marked."""
    mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(-1, 1, 1)
    std = torch.tensor(processor.image_std, dtype=torch.float32).view(-1, 1, 1)

    def transform(batch):
        items = batch[image_column]
        images, readable = [], []
        for item in items:
            try:
                images.append(decode(item))
                readable.append(True)
            except Exception as error:  # PIL raises many types for broken files
                what = f"unreadable image in split {split!r}: {describe(item)} ({type(error).__name__}: {error})"
                if skipped is None:
                    raise UnreadableImageError(f"{what}. Fix or remove it, or pass --skip_unreadable_images true to "
                                               "drop and count unreadable images.") from None
                skipped.add(split)
                logger.warning("Skipped an %s.", what)
                readable.append(False)
        good = iter(())
        if images:  # (B', C, H, W) in [0, 1] for the readable rows
            pixels = processor(images, do_normalize=False, return_tensors="pt")["pixel_values"].float()
            if augmenter is not None and augmenter.active:
                rows = batch[ROW_COLUMN] if ROW_COLUMN in batch else [stable_row_id(item) for item in items]
                pixels = augmenter(pixels, [row for row, ok in zip(rows, readable, strict=True) if ok])
            if processor.do_normalize:
                pixels = (pixels - mean) / std
            good = iter(pixels)
        placeholder = torch.zeros(0)  # an unreadable row: dropped by ReadableImagesCollator
        return {"pixel_values": [next(good) if ok else placeholder for ok in readable],
                "labels": list(batch[label_column]), READABLE: readable}

    return transform


class ReadableImagesCollator(DefaultDataCollator):
    """DefaultDataCollator without the rows whose image was unreadable (skipped and counted by the transform)."""

    def __call__(self, features, return_tensors=None):
        kept = [{key: value for key, value in feature.items() if key != READABLE}
                for feature in features if feature.get(READABLE, True)]
        if not kept:
            raise UnreadableImageError(f"every image of a batch of {len(features)} was unreadable: check the data.")
        return super().__call__(kept, return_tensors)
