"""VixImageProcessor: PIL images, numpy HWC/CHW arrays or torch CHW tensors -> normalized RGB `pixel_values`.

Built on transformers' `PilBackend` (numpy on CPU), so it needs no torchvision. Grayscale, RGBA, CMYK
and palette images are converted to RGB first. Defaults fit CIFAR: 32x32, CIFAR-10 channel statistics.
"""

from transformers.image_processing_backends import PilBackend
from transformers.image_utils import PILImageResampling


# Per-channel mean / std of the CIFAR-10 training set (the usual published values).
CIFAR10_MEAN = [0.4914, 0.4822, 0.4465]
CIFAR10_STD = [0.2470, 0.2435, 0.2616]


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


__all__ = ["VixImageProcessor"]
