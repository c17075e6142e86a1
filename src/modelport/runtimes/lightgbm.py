"""LightGBM models served by LightGBM (text models)."""

from __future__ import annotations

import threading

import numpy as np

from modelport.errors import BadRequestError
from modelport.runtimes.native import (
    CLASSIFICATION,
    REGRESSION,
    NativeRuntime,
    first_line,
    model_run,
)


class LightGBMRuntime(NativeRuntime):
    flavor = "lightgbm"

    def __init__(self, data: bytes, threads: int = 1, header: dict[str, str] | None = None):
        import lightgbm as lgb

        text = data.decode("utf-8")
        try:
            self.booster = lgb.Booster(model_str=text)
        except lgb.basic.LightGBMError as exc:
            raise BadRequestError(f"LightGBM cannot load the file: {first_line(exc)}") from None
        self.threads = threads
        self._lock = threading.Lock()  # LightGBM's predictor state is shared per booster
        header = header if header is not None else _lightgbm_header(text)
        self.objective = header.get("objective", "").split(" ")[0]
        self.n_features = self.booster.num_feature()
        names = list(self.booster.feature_name())
        self.feature_names = None if names == [f"Column_{i}" for i in range(len(names))] else names
        self._feature_infos = header.get("feature_infos", "").split(" ")
        if self.objective in ("binary", "multiclass", "multiclassova", "softmax", "ovr"):
            self.task = CLASSIFICATION
            num_class = int(header.get("num_class", "1"))
            self.classes = list(range(num_class)) if num_class > 1 else [0, 1]
        else:
            self.task = REGRESSION

    def predict_outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        rows = np.asarray(features, dtype=np.float64)
        with model_run("LightGBM"), self._lock:
            raw = np.asarray(self.booster.predict(rows, num_threads=self.threads))
            if self.task == REGRESSION:
                return {"prediction": raw.astype(np.float64).reshape(len(rows), -1)}
        return self._classified(raw.astype(np.float64))

    def feature_ranges(self) -> list[tuple[float, float] | None]:
        ranges: list[tuple[float, float] | None] = []
        for info in self._feature_infos[: self.n_features]:
            low, colon, high = info.strip("[]").partition(":")
            try:
                ranges.append((float(low), float(high)) if colon and ":" not in high else None)
            except ValueError:
                ranges.append(None)
        return ranges + [None] * (self.n_features - len(ranges))


def _lightgbm_header(text: str) -> dict[str, str]:
    header = {}
    for line in text.partition("\nTree=")[0].splitlines():
        key, equals, value = line.partition("=")
        if equals:
            header[key.strip()] = value.strip()
    return header
