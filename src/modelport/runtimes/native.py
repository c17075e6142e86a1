"""What every native runtime shares: scikit-learn, XGBoost and LightGBM models served by their
own libraries (``sklearn.py``, ``xgboost.py``, ``lightgbm.py``).

They serve the versions whose conversion to ONNX was impossible or did not match the original
model. Each one exposes what an upload needs to describe the model (task, features, classes)
and the same ``predict`` / ``predict_outputs`` as the ONNX runtime:

- classifiers give ``{"label": (rows,), "probabilities": (rows, classes)}``;
- regressors give ``{"prediction": (rows, targets)}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar, Literal

import numpy as np

from modelport.errors import ModelRunError, public_text

Task = Literal["classification", "regression"]
CLASSIFICATION: Task = "classification"
REGRESSION: Task = "regression"
NATIVE_FLAVORS = ("sklearn", "sklearn-pickle", "xgboost", "lightgbm")


class NativeRuntime:
    """What every native model offers; subclasses fill in the facts and ``predict_outputs``."""

    flavor: str
    input_name: ClassVar[str] = "features"
    input_dtype: ClassVar[type[np.generic]] = np.float64
    task: Task
    n_features: int
    feature_names: list[str] | None = None  # as the model knows them
    classes: list[Any] | None = None  # JSON-friendly class labels, for classifiers

    def predict_outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The first output: labels for classifiers, values for regressors."""
        return next(iter(self.predict_outputs(features).values()))

    def feature_ranges(self) -> list[tuple[float, float] | None]:
        """Where the model's splits lie per feature, for verification rows (None: unknown)."""
        return [None] * self.n_features

    def _classified(self, probabilities: np.ndarray) -> dict[str, np.ndarray]:
        """Labels as the library's scikit-learn wrapper picks them: the most likely class."""
        if probabilities.ndim == 1:  # binary models give P(class 1)
            probabilities = np.column_stack([1.0 - probabilities, probabilities])
        classes = np.asarray(self.classes if self.classes is not None else [])
        labels = classes[np.argmax(probabilities, axis=1)]
        return {"label": labels, "probabilities": probabilities.astype(np.float64)}


@contextmanager
def model_run(library: str) -> Iterator[None]:
    """What the library raises while predicting is the model failing on this input: a
    ModelRunError whose library text is for the log, not for the caller."""
    try:
        yield
    except Exception as exc:
        raise ModelRunError(f"{library}: {type(exc).__name__}: {exc}") from exc


def json_class(value: Any) -> Any:
    """A class label as JSON holds it: integers stay integers, everything else is a string."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return str(value)


def split_ranges(
    splits: list[tuple[np.ndarray, np.ndarray]], n_features: int
) -> list[tuple[float, float] | None]:
    """Per feature, the span of the thresholds trees split it at (None: never split)."""
    lows = np.full(n_features, np.inf)
    highs = np.full(n_features, -np.inf)
    for features, thresholds in splits:
        used = (features >= 0) & (features < n_features) & np.isfinite(thresholds)
        np.minimum.at(lows, features[used], thresholds[used])
        np.maximum.at(highs, features[used], thresholds[used])
    return [
        (float(low), float(high)) if low <= high else None
        for low, high in zip(lows, highs, strict=True)
    ]


def first_line(exc: BaseException) -> str:
    return public_text((str(exc).strip().splitlines() or [type(exc).__name__])[0])
