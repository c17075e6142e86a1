"""Shared by the image tests: the built-in classifier (converted once per process), test
pictures, and small helpers around the image-prediction API."""

from __future__ import annotations

import functools
import io
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from skimage import data as skimage_data

from modelport.app import create_app
from modelport.builtin.imagenet import ConvertedClassifier, convert_efficientnet, register_imagenet
from modelport.db.engine import create_engine, create_session_factory
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from tests.helpers import run, wait_until_ready

PREDICTIONS = "/api/v1/images/predictions"
CLASSIFY = "/api/v1/models/imagenet-classifier/predict"
# For tests where the database plays no part (what an upload is, what the model answers):
# SQLite only, instead of once per backend.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
CAT_CLASSES = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_LABELS = {"espresso", "cup", "coffee mug"}


@functools.cache
def built_in_classifier() -> ConvertedClassifier:
    """EfficientNet-Lite0 converted to ONNX: about ten seconds, so once per test process."""
    return convert_efficientnet()


def register_classifier(settings: Settings, converted: ConvertedClassifier) -> int:
    """Register the built-in classifier in the settings' database and store (version number)."""

    async def register() -> int:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                version = await register_imagenet(session, open_artifact_store(settings), converted)
                await session.commit()
                return version.version
        finally:
            await engine.dispose()

    return int(run(register()))


@contextmanager
def serve(settings: Settings, *, preload: bool = True) -> Iterator[TestClient]:
    """The app started (lifespan) on ``settings``; with ``preload``, once its models loaded."""
    with TestClient(create_app(settings)) as client:
        if preload:
            wait_until_ready(client)
        yield client


# --- pictures -------------------------------------------------------------------------------


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@functools.cache
def photo(name: str, fmt: str = "JPEG") -> bytes:
    """scikit-image's bundled ``chelsea`` (a cat) or ``coffee`` (an espresso) encoded as ``fmt``."""
    pixels = getattr(skimage_data, name)()
    return encode(Image.fromarray(pixels), fmt)


def cat() -> bytes:
    return photo("chelsea")


def coffee() -> bytes:
    return photo("coffee")


def picture(seed: int = 0, size: tuple[int, int] = (48, 32), fmt: str = "PNG") -> bytes:
    """A small made-up picture, different for every ``seed`` (so stored files differ too)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), fmt)


# --- the API --------------------------------------------------------------------------------


def upload(
    client: TestClient,
    data: bytes,
    filename: str = "photo.jpg",
    headers: dict[str, str] | None = None,
    content_type: str = "image/jpeg",
) -> dict[str, Any]:
    """POST one image for background classification; returns the 201 body."""
    response = client.post(
        PREDICTIONS, files={"file": (filename, data, content_type)}, headers=headers or {}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def wait_for_result(
    client: TestClient,
    image_id: str,
    headers: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Poll GET until the image is no longer pending; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        response = client.get(f"{PREDICTIONS}/{image_id}", headers=headers or {})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] != "pending":
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"image {image_id} still pending after {timeout}s")
        time.sleep(0.05)


def stored_path(settings: Settings, data: bytes, suffix: str) -> Path:
    """Where the content-addressed store keeps ``data`` (named by its sha256, never the client)."""
    import hashlib

    digest = hashlib.sha256(data).hexdigest()
    return settings.var_dir / "artifacts" / "sha256" / digest[:2] / f"{digest}{suffix}"


def new_email() -> str:
    return f"user-{uuid.uuid4().hex[:8]}@example.com"
