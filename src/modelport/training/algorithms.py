"""The algorithms a training job may use, and the holdout metrics it records."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator

Algorithm = Literal[
    "linear_regression", "ridge", "logistic_regression", "random_forest", "gradient_boosting"
]
Task = Literal["regression", "classification"]

# Parameters a caller may set, per algorithm, with the types they must have.
ALLOWED_PARAMS: dict[str, dict[str, type]] = {
    "linear_regression": {},
    "ridge": {"alpha": float},
    "logistic_regression": {"C": float, "max_iter": int},
    "random_forest": {"n_estimators": int, "max_depth": int, "min_samples_leaf": int},
    "gradient_boosting": {"n_estimators": int, "max_depth": int, "learning_rate": float},
}
_BOUNDS = {
    "n_estimators": (1, 500),
    "max_depth": (1, 64),
    "min_samples_leaf": (1, 10_000),
    "max_iter": (1, 10_000),
    "alpha": (0.0, 1e6),
    "C": (1e-6, 1e6),
    "learning_rate": (1e-4, 10.0),
}


def task_for(algorithm: str, requested: Task | None) -> Task:
    if algorithm in ("linear_regression", "ridge"):
        return "regression"
    if algorithm == "logistic_regression":
        return "classification"
    return requested or "regression"


def check_params(algorithm: str, params: dict[str, Any]) -> dict[str, Any]:
    """Only known parameters, of the right type, within sane bounds; a message otherwise."""
    allowed = ALLOWED_PARAMS[algorithm]
    checked: dict[str, Any] = {}
    for key, value in params.items():
        if key not in allowed:
            raise ValueError(f"{algorithm} takes no parameter {key!r}; allowed: {sorted(allowed)}")
        kind = allowed[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or (kind is int and not float(value).is_integer())
        ):
            raise ValueError(f"parameter {key!r} must be a {kind.__name__}")
        low, high = _BOUNDS[key]
        if not low <= value <= high:
            raise ValueError(f"parameter {key!r} must be between {low} and {high}")
        checked[key] = kind(value)
    return checked


# scikit-learn is imported inside build and fit_with_holdout: they run in the training child,
# while the server imports this module only for the names and checks above.
def build(algorithm: str, task: Task, params: dict[str, Any], seed: int) -> BaseEstimator:
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        GradientBoostingRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

    if algorithm == "linear_regression":
        return LinearRegression(**params)
    if algorithm == "ridge":
        return Ridge(**params)
    if algorithm == "logistic_regression":
        return LogisticRegression(**{"max_iter": 1000, **params})
    if algorithm == "random_forest":
        forest = RandomForestClassifier if task == "classification" else RandomForestRegressor
        return forest(**{"n_estimators": 100, "random_state": seed, **params})
    boosting = GradientBoostingClassifier if task == "classification" else GradientBoostingRegressor
    return boosting(**{"random_state": seed, **params})


@dataclass(frozen=True)
class Trained:
    model: BaseEstimator
    metrics: dict[str, float]


def fit_with_holdout(
    estimator: BaseEstimator,
    features: np.ndarray,
    target: np.ndarray,
    task: Task,
    test_size: float,
    seed: int,
) -> Trained:
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        mean_absolute_error,
        r2_score,
        root_mean_squared_error,
    )
    from sklearn.model_selection import train_test_split

    stratify = target if task == "classification" and _can_stratify(target, test_size) else None
    x_train, x_test, y_train, y_test = train_test_split(
        features, target, test_size=test_size, random_state=seed, stratify=stratify
    )
    estimator.fit(x_train, y_train)
    predicted = estimator.predict(x_test)
    metrics: dict[str, float] = {
        "train_rows": float(len(y_train)),
        "holdout_rows": float(len(y_test)),
    }
    if task == "classification":
        metrics["holdout_accuracy"] = float(accuracy_score(y_test, predicted))
        metrics["holdout_f1_macro"] = float(f1_score(y_test, predicted, average="macro"))
    else:
        metrics["holdout_mae"] = float(mean_absolute_error(y_test, predicted))
        metrics["holdout_rmse"] = float(root_mean_squared_error(y_test, predicted))
        metrics["holdout_r2"] = float(r2_score(y_test, predicted))
    return Trained(model=estimator, metrics=metrics)


def _can_stratify(target: np.ndarray, test_size: float) -> bool:
    _, counts = np.unique(target, return_counts=True)
    return bool(counts.min() >= 2 and len(counts) <= test_size * len(target))
