"""ONNX Runtime: the engine every servable model ends up on."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64}


class OnnxRuntime:
    """A loaded ONNX model with one 2-D numeric input. ``predict`` is thread-safe."""

    flavor = "onnx"

    def __init__(self, model_bytes: bytes, intra_op_threads: int = 1) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        (model_input,) = self._session.get_inputs()
        self._input_name: str = model_input.name
        self._input_dtype = _NUMPY_TYPES.get(model_input.type, np.float32)
        self.output_names: list[str] = [output.name for output in self._session.get_outputs()]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Run the model on a (rows, features) array; returns the first output."""
        batch = np.ascontiguousarray(features, dtype=self._input_dtype)
        (result, *_) = self._session.run(None, {self._input_name: batch})
        return np.asarray(result)
