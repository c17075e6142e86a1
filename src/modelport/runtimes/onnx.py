"""ONNX Runtime: the engine every servable model ends up on."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from modelport.errors import ModelRunError

_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


class OnnxRuntime:
    """A loaded ONNX model with one numeric input. ``predict`` is thread-safe."""

    flavor = "onnx"

    def __init__(self, model_bytes: bytes, intra_op_threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        (model_input,) = self._session.get_inputs()
        self.input_name: str = model_input.name
        self.input_dtype: type[np.generic] = _NUMPY_TYPES.get(model_input.type, np.float32)
        self._input_name = self.input_name  # older readers of these attributes
        self._input_dtype = self.input_dtype
        self.output_names: list[str] = [output.name for output in self._session.get_outputs()]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Run the model on a batch (e.g. rows x features); returns the first output."""
        (result, *_) = self._run(self.output_names[:1], self._feed(features))
        return _as_array(result)

    def predict_outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """Every output by name (a classifier's labels and probabilities, for example)."""
        results = self._run(None, self._feed(features))
        return {
            name: _as_array(value) for name, value in zip(self.output_names, results, strict=True)
        }

    def _run(self, names: list[str] | None, feed: dict[str, np.ndarray]) -> list[Any]:
        try:
            return list(self._session.run(names, feed))
        except Exception as exc:  # a node failed inside the graph: the model's fault
            raise ModelRunError(f"ONNX Runtime: {exc}") from exc

    def _feed(self, features: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: np.ascontiguousarray(features, dtype=self.input_dtype)}


def _as_array(value: Any) -> np.ndarray:
    """Tensors as they are; a ZipMap's list of {class: probability} as a (rows, classes) array."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = list(value[0])
        return np.array([[row[key] for key in keys] for row in value], dtype=np.float64)
    return np.asarray(value)
