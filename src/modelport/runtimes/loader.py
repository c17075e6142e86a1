"""Turn artifact bytes of a given flavor into a runtime with ``predict``."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from modelport.errors import ModelUnavailableError
from modelport.runtimes.onnx import OnnxRuntime


class Runtime(Protocol):
    flavor: str

    def predict(self, features: np.ndarray) -> np.ndarray: ...


def load_runtime(flavor: str, model_bytes: bytes, intra_op_threads: int = 1) -> Runtime:
    if flavor == "onnx":
        try:
            return OnnxRuntime(model_bytes, intra_op_threads)
        except Exception as exc:  # ONNX Runtime raises several unrelated types for bad models
            raise ModelUnavailableError(f"the ONNX model could not be loaded: {exc}") from exc
    raise ModelUnavailableError(f"no runtime for flavor {flavor!r}")
