"""XGBoost models served by XGBoost (JSON or UBJ boosters, tree or linear)."""

from __future__ import annotations

import json
import threading
from typing import Any

import numpy as np

from modelport.errors import BadRequestError
from modelport.runtimes.native import (
    CLASSIFICATION,
    REGRESSION,
    NativeRuntime,
    first_line,
    model_run,
    split_ranges,
)


class XGBoostRuntime(NativeRuntime):
    flavor = "xgboost"

    def __init__(self, data: bytes, threads: int = 1, parsed: dict[str, Any] | None = None):
        import xgboost as xgb

        booster = xgb.Booster()
        try:
            booster.load_model(bytearray(data))
        except xgb.core.XGBoostError as exc:
            raise BadRequestError(f"XGBoost cannot load the file: {first_line(exc)}") from None
        booster.set_param({"nthread": threads})
        self.booster = booster
        config = json.loads(booster.save_config())["learner"]
        self.objective: str = config["objective"]["name"]
        self.n_features = booster.num_features()
        self.feature_names = list(booster.feature_names) if booster.feature_names else None
        best = booster.attr("best_iteration")
        self.iteration_range = (0, int(best) + 1) if best is not None else (0, 0)
        self._parsed = parsed
        # gblinear has no inplace_predict; its DMatrix path is guarded to be safe across threads.
        self._linear = config["gradient_booster"]["name"] == "gblinear"
        self._lock = threading.Lock()
        if self.objective.startswith(("binary:", "multi:")):
            self.task = CLASSIFICATION
            num_class = int(config["learner_model_param"].get("num_class", "0"))
            self.classes = list(range(num_class)) if num_class > 1 else [0, 1]
        else:
            self.task = REGRESSION

    def predict_outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.asarray(features, dtype=np.float32)
        predict_type = (
            "margin" if self.objective in ("multi:softmax", "binary:logitraw") else "value"
        )
        with model_run("XGBoost"):
            raw = self._raw(rows, predict_type)
            if self.task == REGRESSION:
                return {"prediction": raw.reshape(len(rows), -1)}
        if self.objective == "multi:softmax":
            shifted = np.exp(raw - raw.max(axis=1, keepdims=True))
            raw = shifted / shifted.sum(axis=1, keepdims=True)
        elif self.objective == "binary:logitraw":
            raw = 1.0 / (1.0 + np.exp(-raw))
        if raw.ndim == 2 and raw.shape[1] == 1:
            raw = raw[:, 0]
        return self._classified(raw)

    def _raw(self, rows: np.ndarray, predict_type: str) -> np.ndarray:
        if self._linear:
            import xgboost as xgb

            with self._lock:
                result = self.booster.predict(
                    xgb.DMatrix(rows),
                    output_margin=predict_type == "margin",
                    iteration_range=self.iteration_range,
                    validate_features=False,
                )
        else:
            result = self.booster.inplace_predict(
                rows,
                iteration_range=self.iteration_range,
                predict_type=predict_type,
                validate_features=False,
            )
        return np.asarray(result, dtype=np.float64)

    def feature_ranges(self) -> list[tuple[float, float] | None]:
        if self._parsed is None:
            return super().feature_ranges()
        booster = self._parsed.get("learner", {}).get("gradient_booster", {})
        model = booster.get("model") or booster.get("gbtree", {}).get("model") or {}
        splits = []
        for tree in model.get("trees", []):
            try:
                leaves = np.asarray(tree["left_children"]) == -1
                features = np.where(leaves, -1, np.asarray(tree["split_indices"]))
                splits.append((features, np.asarray(tree["split_conditions"], dtype=np.float64)))
            except (KeyError, ValueError, TypeError):
                continue
        return split_ranges(splits, self.n_features)

    def for_conversion(self) -> Any:
        """A copy onnxmltools can read: it wants features named f0, f1, ... or not at all."""
        start, stop = self.iteration_range
        booster = self.booster[start:stop] if stop else self.booster.copy()
        booster.feature_names = None
        booster.feature_types = None
        return booster
