"""`--preload_images`: decode every image once, at the model's input size, into one uint8 tensor in memory, so an
epoch indexes a tensor instead of decoding and processing every image again.

Without it, every epoch decodes every image and runs the image processor one image at a time (datasets'
`set_transform` is called per item by the Trainer's sampler), which on a 2-core CPU costs a large share of a small
model's step (benchmarks/results/input_pipeline.md). With it, the processor runs once, on chunks of images, at
start-up. The samples are the same: the processor does what it does in the per-item path (RGB, 8-bit scaling,
resize) except rescaling and normalising, which each item does in torch; augmentation keeps its per-sample seeds
(run seed, epoch, row). So a preloaded run sees the images of a per-item run: exactly when the processor does not
resize (CIFAR at 32x32), else up to the rounding of resized pixels to 8 bits.

Memory: height x width x channels bytes per image (CIFAR-10's 50k images: 150 MB), so it is for datasets that fit;
the default stays off.
"""

import torch
from torch.utils.data import Dataset

from modeling_vix.image_processing_vix import to_8bit

from .data import ROW_COLUMN


class PreloadedImages(Dataset):
    """A split decoded once: uint8 pixels (N, C, H, W) at the processor's size, labels (N,), row ids (N,).

    Items are what the per-item path gives: `pixel_values` (C, H, W) rescaled, augmented (when an `augmenter` is
    given: the training split) and normalised, and `labels`.
    """

    def __init__(self, split, processor, image_column: str, label_column: str, augmenter=None,
                 chunk_size: int = 1000):
        pixels, labels, rows = [], [], []
        for start in range(0, len(split), chunk_size):
            chunk = split[start : start + chunk_size]  # a dict of columns, images decoded by datasets
            images = [to_8bit(image) for image in chunk[image_column]]
            # do_rescale=False: 0-255 values after resizing, stored as uint8 (rounded when the resize interpolates)
            values = processor(images, do_rescale=False, do_normalize=False, return_tensors="pt")["pixel_values"]
            pixels.append(values.round().clamp(0, 255).to(torch.uint8))
            labels.extend(chunk[label_column])
            rows.extend(chunk[ROW_COLUMN] if ROW_COLUMN in chunk else range(start, start + len(images)))
        self.pixels = torch.cat(pixels)
        self.labels = torch.tensor(labels, dtype=torch.long)
        self.rows = torch.tensor(rows, dtype=torch.long)
        self.augmenter = augmenter if augmenter is not None and augmenter.active else None
        self.do_normalize = processor.do_normalize
        self.mean = torch.tensor(processor.image_mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(processor.image_std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict:
        pixels = self.pixels[index].float() / 255  # (C, H, W) in [0, 1]
        if self.augmenter is not None:
            pixels = self.augmenter.augment_one(pixels, int(self.rows[index]))
        if self.do_normalize:
            pixels = (pixels - self.mean) / self.std
        return {"pixel_values": pixels, "labels": self.labels[index]}


__all__ = ["PreloadedImages"]
