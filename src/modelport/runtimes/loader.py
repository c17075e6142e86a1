"""Turn artifact bytes of a given flavor into a runtime with ``predict``."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from modelport.errors import ModelportError, ModelUnavailableError
from modelport.ingest.safety import load_pickle, load_skops
from modelport.runtimes.lightgbm import LightGBMRuntime
from modelport.runtimes.native import NATIVE_FLAVORS, NativeRuntime
from modelport.runtimes.onnx import OnnxRuntime
from modelport.runtimes.sklearn import PickledSklearnRuntime, SklearnRuntime
from modelport.runtimes.xgboost import XGBoostRuntime


class Runtime(Protocol):
    """What the server knows of a model: arrays in, arrays out, whatever the framework."""

    flavor: str

    def predict(self, features: np.ndarray) -> np.ndarray:
        """The first output (a regressor's values, a classifier's labels, an image's logits)."""
        ...

    def predict_outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name; classifiers include class probabilities."""
        ...


def load_runtime(flavor: str, model_bytes: bytes, intra_op_threads: int = 1) -> Runtime:
    """The runtime for ``model_bytes``. A failure is this version's fault: the caller learns
    that it cannot be loaded, the log learns why (the library's text may name server paths)."""
    if flavor == "onnx":
        try:
            return OnnxRuntime(model_bytes, intra_op_threads)
        except Exception as exc:  # ONNX Runtime raises several unrelated types for bad models
            raise _cannot_load(flavor, f"ONNX Runtime: {exc}") from exc
    if flavor in NATIVE_FLAVORS:
        try:
            return _load_native(flavor, model_bytes, intra_op_threads)
        except ModelportError as exc:
            raise _cannot_load(flavor, exc.internal or exc.message) from exc
        except Exception as exc:
            raise _cannot_load(flavor, f"{type(exc).__name__}: {exc}") from exc
    raise ModelUnavailableError(f"no runtime for flavor {flavor!r}")


def _cannot_load(flavor: str, internal: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"the {flavor} model could not be loaded (this version's file is damaged or not usable "
        "here); its owner can find the cause in the server log under this request id",
        internal=internal,
    )


def _load_native(flavor: str, model_bytes: bytes, threads: int) -> NativeRuntime:
    if flavor == "sklearn":
        # A stored skops file is held to the same trust policy as an upload.
        return SklearnRuntime(load_skops(model_bytes))
    if flavor == "sklearn-pickle":
        # Only versions an administrator uploaded with pickles allowed carry this flavor.
        return PickledSklearnRuntime(load_pickle(model_bytes))
    if flavor == "xgboost":
        return XGBoostRuntime(model_bytes, threads)
    return LightGBMRuntime(model_bytes, threads)
