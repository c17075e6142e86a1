"""What an upload must be: the bytes decide (not the name or the declared type), size and
pixel limits hold, damaged files are refused with a clear message, and the client's file name
never chooses where anything is stored."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modelport.builtin.imagenet import PREPROCESSING, ConvertedClassifier
from modelport.images.decoding import to_tensor
from modelport.settings import Settings
from tests.helpers import admin_headers
from tests.images.support import (
    CAT_CLASSES,
    CLASSIFY,
    PREDICTIONS,
    SQLITE_ONLY,
    cat,
    coffee,
    encode,
    photo,
    picture,
    register_classifier,
    serve,
    stored_path,
    upload,
    wait_for_result,
)

PDF = (
    b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"trailer << /Root 1 0 R >>\n%%EOF\n"
)
TEXT = b"Dear customer, this is a plain text file that only claims to be a picture.\n" * 3
pytestmark = SQLITE_ONLY  # the bytes decide; the database plays no part
BOTH_ENDPOINTS = pytest.mark.parametrize("url", [PREDICTIONS, CLASSIFY], ids=["async", "sync"])


def post(
    client: TestClient, url: str, data: bytes, filename: str, content_type: str
) -> httpx.Response:
    return client.post(url, files={"file": (filename, data, content_type)})


# --- content decides ------------------------------------------------------------------------


@BOTH_ENDPOINTS
@pytest.mark.parametrize(
    ("data", "filename"),
    [(PDF, "invoice.jpg"), (TEXT, "holiday.png"), (b"\x00" * 64, "zeros.webp")],
    ids=["pdf", "text", "zeros"],
)
def test_a_file_that_is_not_an_image_is_400_whatever_its_name(
    image_client: TestClient, url: str, data: bytes, filename: str
) -> None:
    response = image_client.post(url, files={"file": (filename, data, "image/jpeg")})

    assert response.status_code == 400, response.text
    assert "not an image" in response.json()["detail"]


@BOTH_ENDPOINTS
def test_an_empty_file_is_400(image_client: TestClient, url: str) -> None:
    response = image_client.post(url, files={"file": ("empty.jpg", b"", "image/jpeg")})

    assert response.status_code == 400
    assert "empty" in response.json()["detail"]


def test_a_real_photo_with_a_wrong_name_and_type_is_accepted(image_client: TestClient) -> None:
    png = photo("chelsea", "PNG")
    accepted = upload(image_client, png, "notes.txt", content_type="text/plain")

    result = wait_for_result(image_client, accepted["id"])

    assert result["status"] == "completed"
    assert result["content_type"] == "image/png"  # from the bytes, not the client's claim
    assert result["filename"] == "notes.txt"
    assert result["top_prediction"] == "Egyptian cat"


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("WEBP", "image/webp"),
        ("GIF", "image/gif"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_every_accepted_format_is_classified(image_client: TestClient, fmt: str, mime: str) -> None:
    data = photo("chelsea", fmt)

    now = image_client.post(CLASSIFY, files={"file": ("cat", data, "application/octet-stream")})
    accepted = upload(image_client, data, "cat", content_type="application/octet-stream")
    later = wait_for_result(image_client, accepted["id"])

    assert now.status_code == 200, now.text
    assert now.json()["predictions"][0]["class_index"] in CAT_CLASSES
    assert later["status"] == "completed"
    assert later["content_type"] == mime
    assert later["all_predictions"][0]["class_index"] in CAT_CLASSES


def test_an_animated_gif_is_read_by_its_first_frame(image_client: TestClient) -> None:
    kitten = Image.open(io.BytesIO(cat()))
    espresso = Image.open(io.BytesIO(coffee())).resize(kitten.size)
    animated = encode(kitten, "GIF", save_all=True, append_images=[espresso], duration=200)
    assert getattr(Image.open(io.BytesIO(animated)), "n_frames", 1) == 2

    response = image_client.post(CLASSIFY, files={"file": ("anim.gif", animated, "image/gif")})

    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["class_index"] in CAT_CLASSES
    first_frame = encode(Image.open(io.BytesIO(animated)).convert("RGB"), "PNG")
    np.testing.assert_array_equal(
        to_tensor(animated, PREPROCESSING, 10**7), to_tensor(first_frame, PREPROCESSING, 10**7)
    )


def test_the_recorded_size_is_the_upright_one(image_client: TestClient) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    tagged = encode(Image.new("RGB", (64, 32), "white"), "JPEG", exif=exif)

    result = wait_for_result(image_client, upload(image_client, tagged)["id"])

    assert (result["width"], result["height"]) == (32, 64)


# --- damaged files --------------------------------------------------------------------------


@BOTH_ENDPOINTS
def test_a_truncated_jpeg_is_400_saying_so(image_client: TestClient, url: str) -> None:
    whole = cat()
    response = post(image_client, url, whole[: len(whole) // 2], "cut.jpg", "image/jpeg")

    assert response.status_code == 400, response.text
    assert "truncated" in response.json()["detail"]
    # Refused at the door: no record and no job for a file that can never be classified.
    listed = image_client.get(PREDICTIONS, headers=admin_headers(image_client)).json()
    assert listed["total"] == 0


def png_declaring(width: int, height: int) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose header claims ``width`` x ``height``
    one-bit pixels: the shape of a decompression bomb, without the bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (1 + (width + 7) // 8) * 8)  # a few rows; the rest missing
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
    )


@BOTH_ENDPOINTS
def test_a_decompression_bomb_is_refused_before_decoding(
    image_client: TestClient, url: str
) -> None:
    bomb = png_declaring(30_000, 30_000)
    assert len(bomb) < 10_000

    response = post(image_client, url, bomb, "bomb.png", "image/png")

    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert "too many pixels" in detail
    assert "40,000,000 allowed" in detail
    assert "decompression bomb" in detail


@BOTH_ENDPOINTS
def test_a_picture_just_over_the_pixel_limit_names_its_size(
    image_client: TestClient, url: str
) -> None:
    response = post(image_client, url, png_declaring(8000, 5001), "large.png", "image/png")

    assert response.status_code == 400, response.text
    assert "8000x5001 pixels, more than the 40,000,000 allowed" in response.json()["detail"]


def test_images_over_the_pixel_limit_are_refused(
    make_settings: Callable[..., Settings], classifier: ConvertedClassifier
) -> None:
    settings = make_settings(max_image_pixels=100 * 100)
    register_classifier(settings, classifier)

    with serve(settings) as client:
        small = client.post(CLASSIFY, files={"file": ("s.png", picture(1, (100, 100)), "")})
        large = client.post(PREDICTIONS, files={"file": ("l.png", picture(1, (101, 100)), "")})

    assert small.status_code == 200, small.text
    assert large.status_code == 400
    assert "101x100" in large.json()["detail"]
    assert "10,000" in large.json()["detail"]


# --- size limit -----------------------------------------------------------------------------


@pytest.fixture
def small_upload_client(
    make_settings: Callable[..., Settings], classifier: ConvertedClassifier
) -> Iterator[TestClient]:
    settings = make_settings(max_upload_bytes=64 * 1024)
    register_classifier(settings, classifier)
    with serve(settings) as client:
        yield client


def noise_png(min_bytes: int) -> bytes:
    data = picture(3, (200, 200))  # random pixels do not compress: ~120 kB
    assert len(data) > min_bytes
    return data


@BOTH_ENDPOINTS
def test_a_file_over_the_upload_limit_is_413(small_upload_client: TestClient, url: str) -> None:
    response = post(small_upload_client, url, noise_png(64 * 1024), "big.png", "image/png")

    assert response.status_code == 413
    assert "larger than 65536 bytes" in response.json()["detail"][0]["msg"]
    assert post(small_upload_client, url, cat(), "cat.jpg", "image/jpeg").status_code in (200, 201)


def multipart(data: bytes, filename: str = "big.png") -> tuple[bytes, str]:
    """A multipart body built by hand: exactly these bytes reach the server."""
    boundary = "modelport-test-boundary"
    body = (
        (
            f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


@BOTH_ENDPOINTS
def test_a_streamed_upload_over_the_limit_is_413(small_upload_client: TestClient, url: str) -> None:
    body, content_type = multipart(noise_png(64 * 1024))

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    response = small_upload_client.post(
        url, content=chunks(), headers={"content-type": content_type}
    )

    assert "content-length" not in response.request.headers
    assert response.status_code == 413, response.text
    assert "larger than 65536 bytes" in response.json()["detail"][0]["msg"]


@BOTH_ENDPOINTS
def test_a_streamed_upload_under_the_limit_is_taken(image_client: TestClient, url: str) -> None:
    body, content_type = multipart(cat())

    response = image_client.post(
        url, content=iter([body[:1000], body[1000:]]), headers={"content-type": content_type}
    )

    assert response.status_code in (200, 201), response.text


# --- where files go -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "kept_as"),
    [
        ("../../etc/passwd", "passwd"),
        ("a/b.png", "b.png"),
        ("..\\..\\windows\\system.ini", "system.ini"),
        ("/absolute/path.png", "path.png"),
        ("..", "upload"),
    ],
)
def test_the_client_s_file_name_never_chooses_where_the_image_is_stored(
    image_client: TestClient, image_settings: Settings, tmp_path: Path, filename: str, kept_as: str
) -> None:
    data = picture(11)
    before = {p for p in tmp_path.rglob("*") if p.is_file()}

    accepted = upload(image_client, data, filename)
    result = wait_for_result(image_client, accepted["id"])

    assert accepted["filename"] == result["filename"] == kept_as
    created = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    stored = stored_path(image_settings, data, ".png")
    assert stored in created
    assert all(p.is_relative_to(image_settings.var_dir) for p in created), created
    assert not any(kept_as in p.name for p in created if kept_as != "upload"), created


def test_images_live_in_the_artifact_store_named_by_content(
    image_client: TestClient, image_settings: Settings
) -> None:
    data = picture(12, fmt="BMP")

    upload(image_client, data, "photo.jpg", content_type="image/jpeg")

    stored = stored_path(image_settings, data, ".bmp")  # the suffix follows the real format
    assert stored.read_bytes() == data
    assert stored.is_relative_to(image_settings.var_dir / "artifacts")


def test_control_characters_are_dropped_from_the_kept_name(image_client: TestClient) -> None:
    body, content_type = multipart(picture(13), "holiday\x07\x1b[31m\x7f.png")

    response = image_client.post(PREDICTIONS, content=body, headers={"content-type": content_type})

    assert response.status_code == 201, response.text
    assert response.json()["filename"] == "holiday[31m.png"


def test_an_upload_without_the_file_field_is_422(image_client: TestClient) -> None:
    response = image_client.post(PREDICTIONS, files={"photo": ("cat.jpg", cat(), "image/jpeg")})

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert (error["loc"], error["type"]) == (["body", "file"], "missing")
