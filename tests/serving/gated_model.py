"""A real scikit-learn model that waits at a gate and refuses poisoned rows.

Its first step, ``gate``, holds every call until a test opens ``GATE``: a batch stays running
for exactly as long as the test needs, with no clock involved. It also records every row it is
asked about (``SEEN``) and fails the whole call when one row's residual sugar is ``POISON``.
Its answers are a weighted sum of the features (a different weight each, so rows and columns
that reach the wrong caller show). The model is pickled by reference to this module, so the
server loads it in the test process and shares the gate.
"""

from __future__ import annotations

import io
import threading
from typing import Any

import joblib
import numpy as np
from sklearn.linear_model import LinearRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from modelport.builtin.wine import FEATURE_NAMES

GATE = threading.Event()
ENTERED = threading.Event()  # set when a call reaches the gate
SEEN: list[list[float]] = []
SUGAR = FEATURE_NAMES.index("residual_sugar")
POISON = 13.0
HANG_GUARD_SECONDS = 60.0  # a test that forgets the gate fails instead of hanging


def gate(features: np.ndarray) -> np.ndarray:
    ENTERED.set()
    if not GATE.wait(HANG_GUARD_SECONDS):
        raise TimeoutError("the test never opened the gate")
    SEEN.extend(np.asarray(features).tolist())
    if (features[:, SUGAR] == POISON).any():
        raise ValueError(f"residual sugar {POISON} is poison to this model")
    return features


def gated_model_bytes() -> bytes:
    """The fitted pipeline, as joblib saves it (flavor ``sklearn-pickle``)."""
    rng = np.random.default_rng(7)
    features = rng.uniform(0.1, 1.0, size=(64, len(FEATURE_NAMES)))
    target = features @ np.linspace(0.005, 0.015, len(FEATURE_NAMES))  # wine rows: 0.1 to 8
    GATE.set()
    model: Any = make_pipeline(FunctionTransformer(gate), LinearRegression())
    model.fit(features, target)
    SEEN.clear()
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()
