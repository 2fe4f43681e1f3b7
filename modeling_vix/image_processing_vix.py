"""VixImageProcessor: PIL images, numpy HWC/CHW arrays or torch CHW tensors -> normalized RGB `pixel_values`.

Built on transformers' `PilBackend` (numpy on CPU), so it needs no torchvision. Grayscale, RGBA, CMYK
and palette images are converted to RGB first. Defaults fit CIFAR: 32x32, CIFAR-10 channel statistics.

16-bit and float images are brought to 8 bits first (`to_8bit`), because transformers' RGB conversion clips
them at 255 (a 16-bit image comes out almost white, a float one black) and its resize works on 8-bit images
anyway.
"""

import numpy as np
from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling


# Per-channel mean / std of the CIFAR-10 training set (the usual published values).
CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
UINT16_MAX = 65535


def _rounded_uint8(fraction: np.ndarray) -> np.ndarray:
    return np.rint(fraction * 255).astype(np.uint8)


def to_8bit(image):
    """16-bit and float images as 8-bit arrays on the same scale; any other image unchanged.

    - PIL modes `I;16*` and `I`, and numpy / torch `uint16` arrays: 16-bit intensities, so value / 65535 is
      the fraction of full scale (16-bit PNG and TIFF files open in these modes). Mode `I` holds 32-bit
      integers with no stated range: values outside [0, 65535] are refused rather than guessed. An 8-bit
      image converted to mode `I` keeps values 0-255 and so reads as nearly black: convert it to `L` instead.
    - PIL mode `F` (32-bit float, e.g. float TIFF): read as fractions in [0, 1]. Other ranges (HDR, raw
      sensor values, NaN) have no meaning we could assume, so they are refused with a ValueError.
    Float numpy / torch arrays are left to transformers' own convention (rescaled unless `do_rescale=False`).

    PIL images come back as (H, W, 1) uint8 arrays, which the processor reads as grayscale.
    """
    mode = getattr(image, "mode", None)
    mode = mode if isinstance(mode, str) else None  # PIL's mode string (a torch tensor has a `mode()` method)
    if mode in SIXTEEN_BIT_MODES or mode == "I":
        values = np.asarray(image).astype(np.float64)
        if values.size and (values.min() < 0 or values.max() > UINT16_MAX):
            raise ValueError(
                f"A mode {mode!r} image with values in [{values.min():g}, {values.max():g}] is not 16-bit data; "
                f"ViX reads mode 'I' as 0-{UINT16_MAX}. Convert it to 8-bit ('L' or 'RGB') first."
            )
        return _rounded_uint8(values / UINT16_MAX)[..., None]
    if mode == "F":
        values = np.asarray(image)
        if not np.isfinite(values).all():
            raise ValueError("A float (mode 'F') image with NaN or infinite values: ViX reads float images as "
                             "intensities in [0, 1]. Fix or drop the image.")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise ValueError(
                f"A float (mode 'F') image with values in [{values.min():g}, {values.max():g}]: ViX reads "
                "float images as intensities in [0, 1]. Scale it to [0, 1] or convert it to 8-bit first."
            )
        return _rounded_uint8(values.astype(np.float64))[..., None]
    if mode is None and str(getattr(image, "dtype", "")) in ("uint16", "torch.uint16"):
        values = np.asarray(image.numpy() if hasattr(image, "numpy") else image, dtype=np.float64)
        return _rounded_uint8(values / UINT16_MAX)
    return image


class VixImageProcessor(PilBackend):
    model_input_names = ["pixel_values"]
    resample = PILImageResampling.BILINEAR
    image_mean = CIFAR10_MEAN
    image_std = CIFAR10_STD
    size = {"height": 32, "width": 32}
    do_convert_rgb = True
    do_resize = True
    do_rescale = True
    do_normalize = True

    def process_image(self, image, *args, **kwargs):
        """One input image -> channels-first array; 16-bit and float images are scaled to 8 bits first."""
        return super().process_image(to_8bit(image), *args, **kwargs)


__all__ = ["VixImageProcessor"]
