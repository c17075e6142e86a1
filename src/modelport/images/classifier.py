"""Run an image model: tensor in, the five most likely labels with probabilities out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np

from modelport.images.decoding import read_image
from modelport.serving.model_cache import LoadedModel

TOP_K = 5


@dataclass(frozen=True)
class Classification:
    top5: list[dict[str, Any]]
    model_name: str
    model_version: str
    latency_ms: float


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max())
    return np.asarray(shifted / shifted.sum())


async def classify(model: LoadedModel, data: bytes, max_pixels: int) -> Classification:
    """Decode, preprocess and infer off the event loop."""
    started = time.perf_counter()

    def work() -> np.ndarray:
        _, tensor = read_image(data, model.ref.details["preprocessing"], max_pixels)
        return _probabilities(model, tensor)

    return _top(model, await anyio.to_thread.run_sync(work), started)


async def classify_tensor(model: LoadedModel, tensor: np.ndarray, started: float) -> Classification:
    """Infer off the event loop, on an image already decoded (``read_image``) since
    ``started`` (``time.perf_counter()``)."""
    return _top(model, await anyio.to_thread.run_sync(_probabilities, model, tensor), started)


def _probabilities(model: LoadedModel, tensor: np.ndarray) -> np.ndarray:
    return softmax(np.asarray(model.runtime.predict(tensor), dtype=np.float64)[0])


def _top(model: LoadedModel, probabilities: np.ndarray, started: float) -> Classification:
    labels: list[str] = model.ref.details["labels"]
    best = np.argsort(-probabilities)[:TOP_K]
    return Classification(
        top5=[
            {"label": labels[i], "class_index": int(i), "probability": float(probabilities[i])}
            for i in best
        ],
        model_name=model.ref.model_name,
        model_version=str(model.ref.version),
        latency_ms=(time.perf_counter() - started) * 1000,
    )
