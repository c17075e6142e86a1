"""ONNX Runtime: the engine every servable model ends up on."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from modelport.errors import BadRequestError, DeadlineExceededError, ModelRunError
from modelport.ingest.safety import refuse_external_data

_EXTERNAL_DATA_FOLDER = "session.model_external_initializers_file_folder_path"

_NUMPY_TYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}


def session_options(intra_op_threads: int = 1) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    # Should a tensor with external data ever get past the check in OnnxRuntime: loaded from
    # bytes, ONNX Runtime (1.32) refuses absolute locations and relative ones that leave its
    # folder, but reads relative ones inside it, and that folder is the working directory
    # unless this entry names another. /dev/null is not a directory, so no location can name a
    # file under it (tried for relative, absolute and ".." locations, in subgraphs too).
    options.add_session_config_entry(_EXTERNAL_DATA_FOLDER, os.devnull)
    return options


class RunStop:
    """Lets another thread stop a run in progress: ONNX Runtime checks the flag between nodes
    and on every iteration of a Loop, so a run whose time is up ends within moments. Once
    stopped, every run given this handle raises DeadlineExceededError with ``message``."""

    def __init__(self) -> None:
        self.options = ort.RunOptions()
        self.message: str | None = None  # why it was stopped; None while it may run

    def stop(self, message: str) -> None:
        if self.message is None:
            self.message = message
            self.options.terminate = True


class OnnxRuntime:
    """A loaded ONNX model with one numeric input. ``predict`` is thread-safe."""

    flavor = "onnx"
    stoppable = True  # takes a RunStop: a run can be ended from another thread

    def __init__(self, model_bytes: bytes, intra_op_threads: int = 1) -> None:
        # Uploads are checked for external data, but a stored artifact is checked again here,
        # so nothing that reaches the runtime by another way can make it read a file.
        refuse_external_data(_parse(model_bytes))
        self._session = ort.InferenceSession(
            model_bytes, session_options(intra_op_threads), providers=["CPUExecutionProvider"]
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

    def predict_outputs(
        self, features: np.ndarray, stop: RunStop | None = None
    ) -> dict[str, np.ndarray]:
        """Every output by name (a classifier's labels and probabilities, for example).
        ``stop``: a handle another thread may use to end the run early."""
        results = self._run(None, self._feed(features), stop)
        return {
            name: _as_array(value) for name, value in zip(self.output_names, results, strict=True)
        }

    def _run(
        self, names: list[str] | None, feed: dict[str, np.ndarray], stop: RunStop | None = None
    ) -> list[Any]:
        try:
            return list(self._session.run(names, feed, stop.options if stop else None))
        except Exception as exc:  # a node failed inside the graph: the model's fault
            if stop is not None and stop.message is not None:  # ended on purpose
                raise DeadlineExceededError(stop.message) from None
            raise ModelRunError(f"ONNX Runtime: {exc}") from exc

    def _feed(self, features: np.ndarray) -> dict[str, np.ndarray]:
        return {self.input_name: np.ascontiguousarray(features, dtype=self.input_dtype)}


def _parse(model_bytes: bytes) -> onnx.ModelProto:
    try:
        return onnx.load_from_string(model_bytes)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise BadRequestError(f"not a valid ONNX model: {exc}") from None


def _as_array(value: Any) -> np.ndarray:
    """Tensors as they are; a ZipMap's list of {class: probability} as a (rows, classes) array."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = list(value[0])
        return np.array([[row[key] for key in keys] for row in value], dtype=np.float64)
    return np.asarray(value)
