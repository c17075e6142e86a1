"""What one training job may cost: an estimate checked at submit, and the limits its process
runs under (time, memory, artifact size)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

# scikit-learn's defaults where the request leaves a parameter out (see algorithms.build).
_DEFAULT_TREES = 100
_DEFAULT_BOOSTING_DEPTH = 3
_DEFAULT_MAX_ITER = 1000


@dataclass(frozen=True)
class TrainingLimits:
    """The settings ``MODELPORT_TRAINING_*``, as the training service uses them."""

    max_cost: int = 200_000_000
    time_limit_seconds: float = 300.0
    memory_limit_bytes: int = 2 * 1024**3
    max_artifact_bytes: int = 100 * 1_048_576


@dataclass(frozen=True)
class Cost:
    """Rows times the passes the algorithm makes over them, and how that was counted."""

    units: int
    explanation: str  # e.g. "20,000 rows x 500 trees x depth 64"
    advice: str  # what lowers it


def unlimited_depth(rows: int) -> int:
    """The depth counted for a tree without ``max_depth``: about what a fully grown tree on
    ``rows`` rows reaches (twice a balanced tree's log2(rows))."""
    return 2 * math.ceil(math.log2(max(rows, 2)))


def estimate(algorithm: str, params: dict[str, Any], rows: int, features: int) -> Cost:
    """The cost of training ``algorithm`` on ``rows`` x ``features``: rows times the passes
    over them (a tree level, a boosting stage's level, an optimiser iteration, a feature of
    the normal equations). Each pass costs about the same per row, so one budget fits all."""
    if algorithm in ("random_forest", "gradient_boosting"):
        trees = int(params.get("n_estimators", _DEFAULT_TREES))
        default_depth = None if algorithm == "random_forest" else _DEFAULT_BOOSTING_DEPTH
        depth = params.get("max_depth", default_depth)
        counted = int(depth) if depth is not None else unlimited_depth(rows)
        how = f"depth {counted}" if depth is not None else f"unlimited depth counted as {counted}"
        return Cost(
            rows * trees * counted,
            f"{rows:,} rows x {trees:,} trees x {how}",
            "lower n_estimators or max_depth, or train on fewer rows",
        )
    if algorithm == "logistic_regression":
        iterations = int(params.get("max_iter", _DEFAULT_MAX_ITER))
        return Cost(
            rows * iterations,
            f"{rows:,} rows x max_iter {iterations:,}",
            "lower max_iter, or train on fewer rows",
        )
    return Cost(
        rows * features,
        f"{rows:,} rows x {features:,} features",
        "train on fewer rows or features",
    )


def over_budget_message(cost: Cost, limits: TrainingLimits) -> str | None:
    """The message refusing a job over the budget; None when it fits."""
    if cost.units <= limits.max_cost:
        return None
    return (
        f"this training would cost {cost.units:,} ({cost.explanation}), over the limit of "
        f"{limits.max_cost:,} per job (MODELPORT_TRAINING_MAX_COST); {cost.advice}"
    )
