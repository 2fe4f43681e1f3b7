"""Seeded image augmentation in plain torch (torchvision does not install beside the CPU torch here).

Every sample draws its randomness from its own generator, seeded by (run seed, epoch, row id). So the
augmentation of a sample does not depend on batch composition, on the number of processes, on dataloader
workers, or on whether the run was resumed from a checkpoint mid-epoch: a resumed run sees exactly the
images an uninterrupted run would have seen.

Policies (`--augmentation`):
  none        no augmentation (the paper's protocol)
  flip        horizontal flip only (short CPU-budget runs, which underfit rather than overfit)
  crop        random crop after zero padding (`--crop_padding` pixels)
  crop_flip   crop + horizontal flip (the usual CIFAR baseline)
  randaugment crop + flip + RandAugment-lite (`--randaugment_num_ops` ops of strength
              `--randaugment_magnitude` out of 10) + random erasing (`--random_erasing` probability)

Images are float tensors in [0, 1], shape (C, H, W), before normalization.
"""

import math

import torch
import torch.nn.functional as F


POLICIES = ("none", "flip", "crop", "crop_flip", "randaugment")


def sample_generator(seed: int, epoch: int, row: int) -> torch.Generator:
    """A generator whose stream depends only on (seed, epoch, row)."""
    mixed = ((seed * 1_000_003 + epoch) * 1_000_033 + row) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def _uniform(generator, low=0.0, high=1.0) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


def _randint(generator, low: int, high: int) -> int:
    """Integer in [low, high]."""
    return int(torch.randint(low, high + 1, (), generator=generator))


def random_crop(image, padding: int, generator):
    """Zero-pad every side by `padding`, then crop back to the original size at a random offset."""
    if padding <= 0:
        return image
    _, height, width = image.shape
    padded = F.pad(image, (padding, padding, padding, padding))
    top, left = _randint(generator, 0, 2 * padding), _randint(generator, 0, 2 * padding)
    return padded[:, top : top + height, left : left + width]


def random_flip(image, generator, p: float = 0.5):
    return image.flip(-1) if _uniform(generator) < p else image


def _gray(image):
    if image.shape[0] == 1:
        return image
    return (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2]).unsqueeze(0)


def _blend(image, other, factor):
    return (other + factor * (image - other)).clamp(0, 1)


def _affine(image, matrix, fill=0.5):
    """Apply a 2x3 affine matrix in normalized coordinates, filling uncovered pixels with `fill`."""
    theta = torch.tensor(matrix, dtype=image.dtype).unsqueeze(0)
    grid = F.affine_grid(theta, (1, *image.shape), align_corners=False)
    with_mask = torch.cat([image, torch.ones_like(image[:1])]).unsqueeze(0)
    out = F.grid_sample(with_mask, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    mask = out[-1:]
    return out[:-1] + (1 - mask) * fill


def _signed(magnitude, generator):
    return magnitude if _uniform(generator) < 0.5 else -magnitude


# Each op: (image, strength in [0, 1], generator) -> image. Ranges follow RandAugment (Cubuk et al. 2020).
def _identity(image, m, g):
    return image


def _autocontrast(image, m, g):
    low = image.amin(dim=(1, 2), keepdim=True)
    high = image.amax(dim=(1, 2), keepdim=True)
    scale = torch.where(high > low, 1 / (high - low).clamp_min(1e-6), torch.ones_like(high))
    return ((image - low) * scale).clamp(0, 1)


def _brightness(image, m, g):
    return _blend(image, torch.zeros_like(image), 1 + _signed(0.9 * m, g))


def _contrast(image, m, g):
    return _blend(image, _gray(image).mean().expand_as(image), 1 + _signed(0.9 * m, g))


def _color(image, m, g):
    return _blend(image, _gray(image).expand_as(image), 1 + _signed(0.9 * m, g))


def _sharpness(image, m, g):
    kernel = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=image.dtype) / 13
    channels = image.shape[0]
    smooth = F.conv2d(image.unsqueeze(0), kernel.expand(channels, 1, 3, 3), padding=1, groups=channels)[0]
    smooth[:, 0], smooth[:, -1] = image[:, 0], image[:, -1]  # the border keeps its own pixels
    smooth[:, :, 0], smooth[:, :, -1] = image[:, :, 0], image[:, :, -1]
    return _blend(image, smooth, 1 + _signed(0.9 * m, g))


def _solarize(image, m, g):
    threshold = 1.0 - m
    return torch.where(image >= threshold, 1 - image, image)


def _posterize(image, m, g):
    bits = 8 - int(round(4 * m))
    levels = 2**bits
    return torch.floor(image * (levels - 1e-6)) / (levels - 1)


def _rotate(image, m, g):
    angle = math.radians(_signed(30 * m, g))
    return _affine(image, [[math.cos(angle), -math.sin(angle), 0], [math.sin(angle), math.cos(angle), 0]])


def _shear_x(image, m, g):
    return _affine(image, [[1, _signed(0.3 * m, g), 0], [0, 1, 0]])


def _shear_y(image, m, g):
    return _affine(image, [[1, 0, 0], [_signed(0.3 * m, g), 1, 0]])


def _translate_x(image, m, g):
    return _affine(image, [[1, 0, _signed(0.6 * m, g)], [0, 1, 0]])  # up to 30% of the width


def _translate_y(image, m, g):
    return _affine(image, [[1, 0, 0], [0, 1, _signed(0.6 * m, g)]])


RANDAUGMENT_OPS = {
    "identity": _identity, "autocontrast": _autocontrast, "brightness": _brightness, "contrast": _contrast,
    "color": _color, "sharpness": _sharpness, "solarize": _solarize, "posterize": _posterize, "rotate": _rotate,
    "shear_x": _shear_x, "shear_y": _shear_y, "translate_x": _translate_x, "translate_y": _translate_y,
}


def randaugment(image, num_ops: int, magnitude: float, generator):
    """RandAugment-lite: `num_ops` ops drawn uniformly, each at strength magnitude/10."""
    names = list(RANDAUGMENT_OPS)
    for _ in range(num_ops):
        op = RANDAUGMENT_OPS[names[_randint(generator, 0, len(names) - 1)]]
        image = op(image, min(max(magnitude / 10, 0.0), 1.0), generator)
    return image


def random_erasing(image, p: float, generator, area=(0.02, 0.33), ratio=(0.3, 3.3)):
    """With probability p, fill a random rectangle with uniform noise (Zhong et al. 2020)."""
    if p <= 0 or _uniform(generator) >= p:
        return image
    channels, height, width = image.shape
    for _ in range(10):
        target = _uniform(generator, *area) * height * width
        aspect = math.exp(_uniform(generator, math.log(ratio[0]), math.log(ratio[1])))
        h, w = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < h < height and 0 < w < width:
            top, left = _randint(generator, 0, height - h), _randint(generator, 0, width - w)
            image = image.clone()
            image[:, top : top + h, left : left + w] = torch.rand((channels, h, w), generator=generator)
            return image
    return image


class Augmenter:
    """Applies a policy to a batch of [0, 1] images, one seeded generator per (epoch, row).

    `epoch` is set by `EpochCallback` at the start of every training epoch (also after a resume).
    """

    def __init__(self, policy="none", seed=0, crop_padding=4, randaugment_num_ops=2, randaugment_magnitude=9.0,
                 random_erasing=0.25):
        if policy not in POLICIES:
            raise ValueError(f"augmentation={policy!r} is not supported; choose one of {', '.join(POLICIES)}.")
        self.policy, self.seed, self.epoch = policy, seed, 0
        self.crop_padding, self.num_ops, self.magnitude = crop_padding, randaugment_num_ops, randaugment_magnitude
        self.erasing = random_erasing

    @property
    def active(self) -> bool:
        return self.policy != "none"

    def augment_one(self, image, row: int):
        generator = sample_generator(self.seed, self.epoch, row)
        if self.policy != "flip":
            image = random_crop(image, self.crop_padding, generator)
        if self.policy in ("flip", "crop_flip", "randaugment"):
            image = random_flip(image, generator)
        if self.policy == "randaugment":
            image = randaugment(image, self.num_ops, self.magnitude, generator)
            image = random_erasing(image, self.erasing, generator)
        return image

    def __call__(self, images, rows):
        if not self.active:
            return images
        return torch.stack([self.augment_one(image, int(row)) for image, row in zip(images, rows, strict=True)])
