"""Decide from the bytes (never the name) whether an upload is an image we take, and turn it
into the tensor the classifier expects."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from modelport.errors import BadRequestError

ACCEPTED_FORMATS = {
    "JPEG": ".jpg",
    "PNG": ".png",
    "WEBP": ".webp",
    "GIF": ".gif",
    "BMP": ".bmp",
    "TIFF": ".tiff",
}
MIME_TYPES = {
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "WEBP": "image/webp",
    "GIF": "image/gif",
    "BMP": "image/bmp",
    "TIFF": "image/tiff",
}
_EXIF_ORIENTATION = 0x0112
_QUARTER_TURNS = {5, 6, 7, 8}  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int

    @property
    def suffix(self) -> str:
        return ACCEPTED_FORMATS[self.format]

    @property
    def mime_type(self) -> str:
        return MIME_TYPES[self.format]


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (header only) and check format and declared size before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except UnidentifiedImageError:
        raise BadRequestError(
            "not an image: the file must be a JPEG, PNG, WebP, GIF, BMP or TIFF picture"
        ) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        # Pillow's own guard tripped while reading the header: far beyond any sane picture.
        raise _too_many_pixels("far too many", max_pixels) from None
    width, height = image.size
    if width * height > max_pixels:
        raise _too_many_pixels(f"{width}x{height}", max_pixels)
    return image


def _too_many_pixels(declared: str, max_pixels: int) -> BadRequestError:
    return BadRequestError(
        f"image declares {declared} pixels, more than the {max_pixels:,} allowed "
        "(a decompression bomb or a far too large picture)"
    )


def inspect_image(data: bytes, max_pixels: int) -> ImageInfo:
    """Check the whole file decodes (a truncated upload is refused here, not in the job)."""
    image = _open(data, max_pixels)
    _decode(image)
    return _info(image)


def _info(image: Image.Image) -> ImageInfo:
    width, height = image.size
    if image.getexif().get(_EXIF_ORIENTATION) in _QUARTER_TURNS:  # shown upright, it is turned
        width, height = height, width
    return ImageInfo(format=str(image.format), width=width, height=height)


def _decode(image: Image.Image) -> None:
    try:
        image.seek(0)  # animated GIF/WebP/TIFF: the first frame is the picture
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise BadRequestError(
            f"the image is damaged or truncated and cannot be read ({exc})"
        ) from None


def to_tensor(data: bytes, preprocessing: dict[str, Any], max_pixels: int) -> np.ndarray:
    """RGB, EXIF orientation applied, resized, normalised ``(x - mean) / scale``, NCHW float32."""
    return read_image(data, preprocessing, max_pixels)[1]


def read_image(
    data: bytes, preprocessing: dict[str, Any], max_pixels: int
) -> tuple[ImageInfo, np.ndarray]:
    """What ``inspect_image`` and ``to_tensor`` give, from one decode of the file."""
    image = _open(data, max_pixels)
    _decode(image)
    upright = ImageOps.exif_transpose(image) or image
    width, height = preprocessing["size"]
    rgb = upright.convert("RGB").resize((width, height), Image.Resampling.BILINEAR)
    pixels = (np.asarray(rgb, dtype=np.float32) - preprocessing["mean"]) / preprocessing["scale"]
    return _info(image), np.ascontiguousarray(pixels.transpose(2, 0, 1)[np.newaxis])
