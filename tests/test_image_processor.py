"""VixImageProcessor: any PIL / numpy / torch image -> normalized RGB pixel_values (N, 3, 32, 32) float32."""

import io
import json

import numpy as np
import PIL
import pytest
import torch
from PIL import Image

from modeling_vix import VixImageProcessor
from modeling_vix.image_processing_vix import CIFAR10_MEAN, CIFAR10_STD


MODES = ("RGB", "L", "RGBA", "CMYK", "P", "LA", "1", "I;16")
SIZES = ((50, 40), (32, 32), (7, 100), (333, 17), (1, 1))  # PIL (width, height)


@pytest.fixture
def processor():
    return VixImageProcessor()


def _random_image(width, height, seed=0) -> Image.Image:
    rng = np.random.RandomState(seed)
    return Image.fromarray(rng.randint(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _pixels(processor, images, **kwargs) -> torch.Tensor:
    return processor(images, return_tensors="pt", **kwargs)["pixel_values"]


def _expected_constant(rgb):
    """(v / 255 - mean) / std per channel, in float64."""
    return (np.asarray(rgb, dtype=np.float64) / 255.0 - np.asarray(CIFAR10_MEAN)) / np.asarray(CIFAR10_STD)


def _assert_constant_image(pixels, rgb):
    """Every pixel of every channel equals the normalized colour (float32 rounding only)."""
    expected = torch.tensor(_expected_constant(rgb), dtype=torch.float32)[:, None, None].expand(3, *pixels.shape[-2:])
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)


def test_defaults_are_cifar(processor):
    assert processor.size == {"height": 32, "width": 32}
    assert list(processor.image_mean) == CIFAR10_MEAN and list(processor.image_std) == CIFAR10_STD
    assert processor.do_resize and processor.do_rescale and processor.do_normalize and processor.do_convert_rgb
    assert processor.rescale_factor == pytest.approx(1 / 255)
    assert processor.model_input_names == ["pixel_values"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_pil_modes_and_sizes(processor, mode, size):
    image = _random_image(*size).convert(mode)
    assert image.mode == mode
    pixels = _pixels(processor, image)
    assert pixels.shape == (1, 3, 32, 32)
    assert pixels.dtype == torch.float32
    assert torch.isfinite(pixels).all()


def test_mixed_batch_of_modes_and_sizes(processor):
    images = [_random_image(w, h, seed=i).convert(mode)
              for i, ((w, h), mode) in enumerate(zip(SIZES * 2, MODES, strict=False))]  # 10 sizes for 8 modes
    pixels = _pixels(processor, images)
    assert pixels.shape == (len(images), 3, 32, 32) and pixels.dtype == torch.float32
    # Batching does not change any image's result.
    for i, image in enumerate(images):
        assert torch.equal(pixels[i], _pixels(processor, image)[0])


@pytest.mark.parametrize("rgb", [(0, 0, 0), (255, 255, 255), (10, 200, 77), (128, 64, 250)])
def test_constant_colour_is_normalized_with_mean_and_std(processor, rgb):
    # Resizing a constant image (50x40 -> 32x32, bilinear) keeps it constant, so every pixel is known exactly.
    pixels = _pixels(processor, Image.new("RGB", (50, 40), rgb))[0]
    _assert_constant_image(pixels, rgb)


def test_mean_and_std_come_from_the_processor():
    custom = VixImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.5, 1.0])
    pixels = _pixels(custom, Image.new("RGB", (8, 8), (255, 0, 51)))[0]
    torch.testing.assert_close(pixels[:, 0, 0], torch.tensor([2.0, -1.0, -0.3]), rtol=0, atol=1e-6)
    raw = _pixels(VixImageProcessor(do_normalize=False), Image.new("RGB", (8, 8), (255, 0, 51)))[0]
    torch.testing.assert_close(raw[:, 0, 0], torch.tensor([1.0, 0.0, 0.2]), rtol=0, atol=1e-6)


def test_grayscale_becomes_three_equal_channels(processor):
    pixels = _pixels(processor, Image.new("L", (50, 40), 90))[0]
    _assert_constant_image(pixels, (90, 90, 90))


def test_cmyk_and_palette_colours(processor):
    # PIL's CMYK -> RGB: R = 255 - C - K (clipped) etc.; no ink is white.
    _assert_constant_image(_pixels(processor, Image.new("CMYK", (50, 40), (0, 0, 0, 0)))[0], (255, 255, 255))
    _assert_constant_image(_pixels(processor, Image.new("CMYK", (50, 40), (255, 0, 0, 0)))[0], (0, 255, 255))
    palette_image = Image.new("P", (50, 40), 1)
    palette_image.putpalette([0, 0, 0, 12, 34, 56] + [0] * (256 * 3 - 6))
    _assert_constant_image(_pixels(processor, palette_image)[0], (12, 34, 56))


def test_transparency_is_composited_on_white(processor):
    """transformers' convert_to_rgb blends alpha onto white: opaque pixels keep their colour, transparent ones
    become white (not black, as a plain `.convert("RGB")` of RGBA would drop alpha and keep the colour)."""
    _assert_constant_image(_pixels(processor, Image.new("RGBA", (50, 40), (10, 200, 77, 255)))[0], (10, 200, 77))
    _assert_constant_image(_pixels(processor, Image.new("RGBA", (50, 40), (0, 0, 0, 0)))[0], (255, 255, 255))
    _assert_constant_image(_pixels(processor, Image.new("LA", (50, 40), (0, 0)))[0], (255, 255, 255))


def test_numpy_hwc_and_torch_chw_match_pil(processor):
    image = _random_image(50, 40)
    array = np.array(image)  # (40, 50, 3) uint8, channels last
    tensor = torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, 40, 50) uint8, channels first
    expected = _pixels(processor, image)
    assert torch.equal(_pixels(processor, array), expected)
    assert torch.equal(_pixels(processor, tensor), expected)
    # A batch mixing all three input types.
    assert torch.equal(_pixels(processor, [image, array, tensor]), expected.expand(3, -1, -1, -1))


def test_numpy_grayscale_and_rgba(processor):
    for gray in (np.full((40, 50, 1), 90, dtype=np.uint8), np.full((1, 40, 50), 90, dtype=np.uint8)):
        _assert_constant_image(_pixels(processor, gray)[0], (90, 90, 90))
    # A bare (H, W) array is not taken for one grayscale image: transformers' input parsing (make_flat_list_of_images,
    # not ViX code) expects 3-dim images and raises ValueError. Add a channel axis, or pass a PIL "L" image.
    with pytest.raises(ValueError):
        processor(np.full((40, 50), 90, dtype=np.uint8), return_tensors="pt")
    rgba = np.zeros((40, 50, 4), dtype=np.uint8)  # fully transparent -> white, as for PIL
    _assert_constant_image(_pixels(processor, rgba)[0], (255, 255, 255))


def test_return_types(processor):
    image = _random_image(50, 40)
    assert isinstance(processor(image, return_tensors="np")["pixel_values"], np.ndarray)
    assert processor(image, return_tensors="np")["pixel_values"].dtype == np.float32
    unbatched = processor([image, image])["pixel_values"]  # no return_tensors: a list of per-image arrays
    assert len(unbatched) == 2 and tuple(np.asarray(unbatched[0]).shape) == (3, 32, 32)


def test_matches_the_resize_it_documents(processor):
    """pixel_values are PIL bilinear resize -> /255 -> normalize, nothing more."""
    image = _random_image(50, 40)
    resized = np.asarray(image.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float64)
    expected = (resized / 255.0 - np.asarray(CIFAR10_MEAN)) / np.asarray(CIFAR10_STD)
    expected = torch.tensor(expected.transpose(2, 0, 1), dtype=torch.float32)
    torch.testing.assert_close(_pixels(processor, image)[0], expected, rtol=0, atol=1e-5)


def test_size_override_at_call_and_construction(processor):
    image = _random_image(50, 40)
    assert _pixels(processor, image, size={"height": 64, "width": 64}).shape == (1, 3, 64, 64)
    assert _pixels(processor, image, size={"height": 24, "width": 48}).shape == (1, 3, 24, 48)
    assert _pixels(processor, image).shape == (1, 3, 32, 32)  # a call override does not stick
    bigger = VixImageProcessor(size={"height": 64, "width": 64})
    assert _pixels(bigger, image).shape == (1, 3, 64, 64)
    # do_resize=False keeps the input size (here 40 x 50).
    assert _pixels(processor, image, do_resize=False).shape == (1, 3, 40, 50)


def test_save_and_load_round_trip(tmp_path):
    from transformers import AutoImageProcessor

    custom = VixImageProcessor(
        size={"height": 48, "width": 40},
        image_mean=[0.5, 0.4, 0.3],
        image_std=[0.2, 0.3, 0.4],
        do_normalize=True,
        resample=Image.Resampling.BICUBIC,
    )
    custom.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "VixImageProcessor"
    assert saved["size"] == {"height": 48, "width": 40}
    assert saved["image_mean"] == [0.5, 0.4, 0.3] and saved["image_std"] == [0.2, 0.3, 0.4]
    assert saved["auto_map"]["AutoImageProcessor"] == "image_processing_vix.VixImageProcessor"

    image = _random_image(50, 40)
    for loaded in (VixImageProcessor.from_pretrained(tmp_path), AutoImageProcessor.from_pretrained(tmp_path)):
        assert type(loaded) is VixImageProcessor
        assert loaded.to_dict() == custom.to_dict()
        assert int(loaded.resample) == int(Image.Resampling.BICUBIC)
        pixels = _pixels(loaded, image)
        assert pixels.shape == (1, 3, 48, 40)
        assert torch.equal(pixels, _pixels(custom, image))


def test_default_round_trip(tmp_path, processor):
    processor.save_pretrained(tmp_path)
    loaded = VixImageProcessor.from_pretrained(tmp_path)
    assert loaded.to_dict() == processor.to_dict()


def test_matches_cifar_fixture(processor, cifar_images, cifar_pixels):
    assert cifar_pixels.shape == (16, 3, 32, 32) and cifar_pixels.dtype == torch.float32
    # 32x32 CIFAR images are not resized; per-channel statistics are roughly standardized.
    raw = torch.tensor(np.stack([np.asarray(im) for im in cifar_images[0]]), dtype=torch.float64).permute(0, 3, 1, 2)
    expected = (raw / 255 - torch.tensor(CIFAR10_MEAN, dtype=torch.float64)[:, None, None]) / torch.tensor(
        CIFAR10_STD, dtype=torch.float64
    )[:, None, None]
    torch.testing.assert_close(cifar_pixels, expected.float(), rtol=0, atol=1e-5)
    assert cifar_pixels.mean().abs() < 0.5 and 0.5 < cifar_pixels.std() < 1.5


# --------------------------------------------------------------------------------------------------
# Corrupt files. Nothing here is ViX's own code: PIL raises, and the processor lets the error through.
#   - bytes that are no image at all: PIL.UnidentifiedImageError (an OSError) from Image.open;
#   - a truncated JPEG / PNG: Image.open succeeds (it is lazy) and reads the header; the pixels are decoded
#     when the processor converts the image, which raises OSError("image file is truncated ...").
# The processor also accepts a file path, and then raises the same errors.
# --------------------------------------------------------------------------------------------------


def _encoded(fmt) -> bytes:
    buffer = io.BytesIO()
    _random_image(200, 160).save(buffer, fmt)
    return buffer.getvalue()


def test_garbage_bytes_are_not_an_image(tmp_path, processor):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(PIL.UnidentifiedImageError):
        Image.open(path)
    with pytest.raises(OSError):
        processor(str(path), return_tensors="pt")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file_raises_oserror_when_processed(tmp_path, processor, fmt):
    data = _encoded(fmt)
    path = tmp_path / f"truncated.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    image = Image.open(path)  # lazy: the header is intact
    assert image.size == (200, 160)
    with pytest.raises(OSError, match="truncated"):
        processor(image, return_tensors="pt")
    with pytest.raises(OSError, match="truncated"):
        processor(str(path), return_tensors="pt")


def test_intact_file_path_is_accepted(tmp_path, processor):
    path = tmp_path / "ok.png"
    image = _random_image(50, 40)
    image.save(path)
    assert torch.equal(_pixels(processor, str(path)), _pixels(processor, image))


# --------------------------------------------------------------------------------------------------
# 16-bit and float images. transformers' RGB conversion clips them at 255: a 0-1 gradient in mode I;16 or I came
# out at mean ~1.0 (white), in mode F at ~0.0 (black), against 0.5 for the same gradient in 8 bits. The processor
# reads I;16 / I as 0-65535 and F as 0-1, and refuses what it cannot read that way (see `to_8bit`).
# --------------------------------------------------------------------------------------------------


def _gradient(mode, full_scale=1.0) -> Image.Image:
    fraction = np.tile(np.linspace(0, 1, 64), (48, 1)) * full_scale
    if mode == "L":
        return Image.fromarray(np.rint(fraction * 255).astype(np.uint8))
    if mode == "F":
        return Image.fromarray(fraction.astype(np.float32))
    array = np.rint(fraction * 65535)
    return Image.fromarray(array.astype(np.uint16) if mode == "I;16" else array.astype(np.int64).astype(np.int32))


@pytest.mark.parametrize("mode", ["I;16", "I", "F"])
def test_16_bit_and_float_images_keep_their_scale(mode):
    raw = VixImageProcessor(do_normalize=False)
    image = _gradient(mode)
    assert image.mode == mode
    expected = _pixels(raw, _gradient("L"))
    assert expected.mean().item() == pytest.approx(0.5, abs=0.01)
    torch.testing.assert_close(_pixels(raw, image), expected, rtol=0, atol=1e-6)


def test_16_bit_arrays_keep_their_scale():
    raw = VixImageProcessor(do_normalize=False)
    expected = _pixels(raw, _gradient("L").convert("RGB"))
    array16 = np.asarray(_gradient("I;16"))[..., None].repeat(3, -1)  # (H, W, 3) uint16
    torch.testing.assert_close(_pixels(raw, array16), expected, rtol=0, atol=1e-6)
    tensor16 = torch.from_numpy(array16.astype(np.int32)).permute(2, 0, 1).to(torch.uint16)
    torch.testing.assert_close(_pixels(raw, tensor16), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("image, message", [
    (_gradient("I", full_scale=1.5), r"mode 'I' image with values in \[0, 98302\] is not 16-bit data"),
    (_gradient("F", full_scale=255.0), r"float \(mode 'F'\) image with values in \[0, 255\].*\[0, 1\]"),
    (Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32)), r"mode 'F'\) image with NaN"),
])
def test_images_that_cannot_be_read_on_a_known_scale_are_refused(processor, image, message):
    with pytest.raises(ValueError, match=message):
        processor(image, return_tensors="pt")
