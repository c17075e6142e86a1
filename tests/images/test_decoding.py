"""Decoding on its own: what the classifier is given for a photo."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from modelport.builtin.imagenet import PREPROCESSING
from modelport.errors import BadRequestError
from modelport.images.decoding import inspect_image, to_tensor
from tests.images.support import cat, encode, photo


def test_exif_orientation_is_applied() -> None:
    """A phone photo stored sideways with "rotate 90" in its EXIF is classified upright."""
    sideways = Image.new("RGB", (64, 32), "white")
    sideways.paste((255, 0, 0), (0, 0, 32, 16))  # a red block in one corner
    sideways.paste((0, 0, 255), (32, 16, 64, 32))  # a blue block in the opposite one
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the viewer must rotate 90 degrees clockwise
    tagged = encode(sideways, "JPEG", exif=exif, quality=95)
    decoded = Image.open(io.BytesIO(tagged))
    decoded.load()
    upright = encode(decoded.transpose(Image.Transpose.ROTATE_270), "PNG")  # lossless copy
    as_stored = encode(decoded, "PNG")

    tensor = to_tensor(tagged, PREPROCESSING, 10**7)

    np.testing.assert_array_equal(tensor, to_tensor(upright, PREPROCESSING, 10**7))
    assert not np.array_equal(tensor, to_tensor(as_stored, PREPROCESSING, 10**7))


def test_the_tensor_is_what_the_model_expects() -> None:
    tensor = to_tensor(photo("chelsea", "PNG"), PREPROCESSING, 10**7)

    assert tensor.shape == (1, 3, 224, 224)
    assert tensor.dtype == np.float32
    assert tensor.flags["C_CONTIGUOUS"]
    assert -1.0 <= float(tensor.min()) < 0 < float(tensor.max()) <= 1.0


def test_a_greyscale_or_transparent_picture_becomes_three_channels() -> None:
    grey = encode(Image.new("L", (40, 30), 128), "PNG")
    transparent = encode(Image.new("RGBA", (40, 30), (255, 0, 0, 0)), "PNG")

    for data in (grey, transparent):
        assert to_tensor(data, PREPROCESSING, 10**7).shape == (1, 3, 224, 224)


def test_inspect_reports_the_real_format_and_size() -> None:
    info = inspect_image(cat(), 10**7)

    assert (info.format, info.width, info.height) == ("JPEG", 451, 300)
    assert (info.suffix, info.mime_type) == (".jpg", "image/jpeg")


def test_inspect_refuses_a_truncated_file_naming_the_problem() -> None:
    whole = photo("chelsea", "PNG")

    with pytest.raises(BadRequestError, match="damaged or truncated"):
        inspect_image(whole[: len(whole) - 2000], 10**7)


def test_the_pixel_limit_is_checked_on_the_header() -> None:
    data = encode(Image.new("RGB", (120, 100)), "PNG")

    assert inspect_image(data, 120 * 100).width == 120
    with pytest.raises(BadRequestError, match="120x100 pixels, more than the 11,999 allowed"):
        inspect_image(data, 120 * 100 - 1)
    with pytest.raises(BadRequestError, match="more than the 11,999 allowed"):
        to_tensor(data, PREPROCESSING, 120 * 100 - 1)
