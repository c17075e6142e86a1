"""scikit-learn models served by scikit-learn: a fitted estimator or pipeline that predicts
from a numeric matrix. The estimator arrives already loaded (``ingest.safety`` loads skops files
under its trust policy, and pickles only where they are allowed)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from modelport.errors import BadRequestError
from modelport.runtimes.native import (
    CLASSIFICATION,
    REGRESSION,
    NativeRuntime,
    json_class,
    model_run,
    split_ranges,
)

# A model fitted on a DataFrame warns on every plain array; the columns arrive in its order.
warnings.filterwarnings(
    "ignore", message="X does not have valid feature names", category=UserWarning
)


class SklearnRuntime(NativeRuntime):
    """A fitted scikit-learn estimator (or pipeline) that predicts from a numeric matrix."""

    flavor = "sklearn"

    def __init__(self, estimator: Any) -> None:
        from sklearn.base import is_classifier, is_regressor
        from sklearn.exceptions import NotFittedError
        from sklearn.utils.validation import check_is_fitted

        if not hasattr(estimator, "predict"):
            raise BadRequestError(
                f"the file holds a {type(estimator).__name__}, which has no predict(); upload a "
                "fitted scikit-learn classifier or regressor"
            )
        try:
            check_is_fitted(estimator)
        except (NotFittedError, TypeError):
            raise BadRequestError(
                f"the {type(estimator).__name__} in the file is not fitted; fit it before saving"
            ) from None
        n_features = getattr(estimator, "n_features_in_", None)
        if not isinstance(n_features, int | np.integer):
            raise BadRequestError(
                f"the {type(estimator).__name__} does not record how many features it takes "
                "(n_features_in_)"
            )
        self.estimator = estimator
        self.n_features = int(n_features)
        names = getattr(estimator, "feature_names_in_", None)
        self.feature_names = [str(name) for name in names] if names is not None else None
        if is_classifier(estimator):
            self.task = CLASSIFICATION
            classes = np.asarray(getattr(estimator, "classes_", []))
            if classes.ndim != 1 or classes.size < 2:
                raise BadRequestError(
                    "multi-output classifiers are not supported; upload one classifier per target"
                )
            if not hasattr(estimator, "predict_proba"):
                raise BadRequestError(
                    f"the {type(estimator).__name__} gives no class probabilities "
                    "(predict_proba); e.g. fit SVC with probability=True, or wrap the model "
                    "in CalibratedClassifierCV"
                )
            self.classes = [json_class(value) for value in classes]
        elif is_regressor(estimator):
            self.task = REGRESSION
        else:
            raise BadRequestError(
                f"the {type(estimator).__name__} is neither a classifier nor a regressor; "
                "modelport serves models that predict labels or values"
            )

    def predict_outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        rows = self._named(np.asarray(features, dtype=np.float64))
        with model_run("scikit-learn"):
            if self.task == CLASSIFICATION:
                return {
                    "label": np.asarray(self.estimator.predict(rows)),
                    "probabilities": np.asarray(
                        self.estimator.predict_proba(rows), dtype=np.float64
                    ),
                }
            values = np.asarray(self.estimator.predict(rows), dtype=np.float64)
            return {"prediction": values.reshape(len(rows), -1)}

    def _named(self, rows: np.ndarray) -> Any:
        """A model fitted on a DataFrame gets one with its column names: pipelines may pick
        columns by name (and scikit-learn warns on plain arrays)."""
        if self.feature_names is None:
            return rows
        try:
            import pandas as pd  # type: ignore[import-untyped]
        except ImportError:  # without pandas the columns still arrive in the fitted order
            return rows
        return pd.DataFrame(rows, columns=self.feature_names, copy=False)

    def feature_ranges(self) -> list[tuple[float, float] | None]:
        trees = []
        if hasattr(self.estimator, "tree_"):
            trees = [self.estimator.tree_]
        elif hasattr(self.estimator, "estimators_"):
            members = np.ravel(np.asarray(self.estimator.estimators_, dtype=object))
            trees = [member.tree_ for member in members if hasattr(member, "tree_")]
        splits = [
            (np.asarray(tree.feature), np.asarray(tree.threshold, dtype=np.float64))
            for tree in trees
        ]
        return split_ranges(splits, self.n_features)


class PickledSklearnRuntime(SklearnRuntime):
    flavor = "sklearn-pickle"
