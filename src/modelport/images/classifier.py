"""Run an image model: tensor in, the five most likely labels with probabilities out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np

from modelport.images.decoding import to_tensor
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
    details = model.ref.details
    started = time.perf_counter()

    def work() -> np.ndarray:
        tensor = to_tensor(data, details["preprocessing"], max_pixels)
        return softmax(np.asarray(model.runtime.predict(tensor), dtype=np.float64)[0])

    probabilities = await anyio.to_thread.run_sync(work)
    labels: list[str] = details["labels"]
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
