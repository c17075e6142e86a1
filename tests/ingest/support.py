"""Shared by the runtime tests: small real datasets and "serves like the original" checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.datasets import make_classification, make_regression

from modelport.ingest.preparation import PreparedModel
from modelport.runtimes.loader import load_runtime
from modelport.runtimes.native import json_class

TOLERANCE = 1e-4
FEATURES = ["alcohol", "acidity", "sugar", "sulphates", "density"]


def classification_data(n_classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    features, labels = make_classification(
        n_samples=300,
        n_features=len(FEATURES),
        n_informative=3,
        n_redundant=0,
        n_classes=n_classes,
        random_state=seed,
    )
    return features, labels


def regression_data(seed: int = 0, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    features, values = make_regression(
        n_samples=300, n_features=len(FEATURES), noise=0.5, random_state=seed
    )
    return features, values * scale


def frame(features: np.ndarray, names: list[str] | None = None) -> pd.DataFrame:
    """A DataFrame, so scikit-learn (and XGBoost, LightGBM) record the feature names."""
    return pd.DataFrame(features, columns=names or FEATURES)


def probe_rows(n_features: int, seed: int = 7) -> np.ndarray:
    """Rows the model never saw: wider than the training data, not just the sample rows."""
    return np.random.default_rng(seed).normal(scale=2.0, size=(40, n_features))


def assert_classifies_like(
    prepared: PreparedModel, rows: np.ndarray, labels: Any, probabilities: Any
) -> None:
    """The stored artifact, loaded the way the server loads it, gives the original's answers."""
    runtime = load_runtime(prepared.flavor, prepared.artifact)
    outputs = runtime.predict_outputs(rows)
    assert [json_class(v) for v in outputs["label"]] == [json_class(v) for v in labels]
    assert [json_class(v) for v in runtime.predict(rows)] == [json_class(v) for v in labels]
    np.testing.assert_allclose(outputs["probabilities"], probabilities, rtol=0, atol=TOLERANCE)


def assert_regresses_like(prepared: PreparedModel, rows: np.ndarray, values: Any) -> None:
    runtime = load_runtime(prepared.flavor, prepared.artifact)
    expected = np.asarray(values, dtype=np.float64).reshape(len(rows), -1)
    got = np.asarray(runtime.predict(rows), dtype=np.float64).reshape(len(rows), -1)
    assert np.all(np.abs(got - expected) <= TOLERANCE * np.maximum(1.0, np.abs(expected)))
    (only,) = runtime.predict_outputs(rows).values()
    np.testing.assert_array_equal(np.asarray(only).reshape(got.shape), got)


def input_names(prepared: PreparedModel) -> list[str]:
    return [spec.name for spec in prepared.signature.inputs]


def output_names(prepared: PreparedModel) -> list[str]:
    return [spec.name for spec in prepared.signature.outputs]
