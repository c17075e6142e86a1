"""Convert native models to ONNX and prove the conversion answers like the original.

A conversion is kept only when, on the verification rows, the ONNX model gives the same labels
and probabilities / values within ``TOLERANCE`` (relative once values exceed 1) as the library
that trained it. Otherwise ``ConversionFailed`` says why and the native runtime serves instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import version
from typing import Any

import numpy as np
import onnx

from modelport.errors import library_text
from modelport.runtimes.lightgbm import LightGBMRuntime
from modelport.runtimes.native import CLASSIFICATION, NativeRuntime, json_class
from modelport.runtimes.onnx import OnnxRuntime
from modelport.runtimes.sklearn import SklearnRuntime
from modelport.runtimes.xgboost import XGBoostRuntime

TOLERANCE = 1e-4
INPUT_NAME = "features"


class ConversionFailed(Exception):
    """The model cannot be converted, or the converted model does not answer like it."""


@dataclass(frozen=True)
class Conversion:
    onnx_bytes: bytes
    converter: str  # e.g. "skl2onnx 1.20.0"
    input_type: str  # "float32" or "float64": what the ONNX model computes in
    max_abs_diff: float
    rows: int

    def details(self) -> dict[str, Any]:
        return {
            "converter": self.converter,
            "input_type": self.input_type,
            "verified_rows": self.rows,
            "max_abs_diff": self.max_abs_diff,
            "tolerance": TOLERANCE,
        }


def convert_verified(
    model: NativeRuntime, rows: np.ndarray, expected: dict[str, np.ndarray]
) -> Conversion:
    """The first candidate conversion that matches ``expected`` on ``rows``."""
    problems = []
    for converter, input_type, build in _candidates(model):
        try:
            # No warnings.catch_warnings() here: it swaps process-wide state under other threads.
            onnx_bytes = _batch_outputs(build()).SerializeToString()
            got = OnnxRuntime(onnx_bytes).predict_outputs(rows)
            diff = compare(model.task, expected, list(got.values()))
        except ConversionFailed as exc:
            problems.append(f"{converter} ({input_type}): {exc}")
            continue
        except Exception as exc:  # converters and ONNX Runtime raise all sorts of types
            problems.append(f"{converter} ({input_type}): {library_text(exc, 200)}")
            continue
        return Conversion(onnx_bytes, converter, input_type, diff, len(rows))
    raise ConversionFailed("; ".join(problems) or "no converter for this model")


def compare(task: str, expected: dict[str, np.ndarray], got: list[np.ndarray]) -> float:
    """The largest difference between native and ONNX outputs; raises when over tolerance."""
    if task == CLASSIFICATION:
        if len(got) < 2:
            raise ConversionFailed("the ONNX model gives no class probabilities")
        want_labels = [json_class(v) for v in np.asarray(expected["label"]).ravel()]
        got_labels = [json_class(v) for v in np.asarray(got[0]).ravel()]
        if len(got_labels) != len(want_labels):
            raise ConversionFailed("the ONNX model gives a different number of labels")
        wrong = sum(a != b for a, b in zip(want_labels, got_labels, strict=True))
        if wrong:
            raise ConversionFailed(f"labels differ on {wrong} of {len(want_labels)} rows")
        return _within(expected["probabilities"], got[1], "probabilities")
    return _within(expected["prediction"], got[0], "values")


def _within(expected: np.ndarray, got: np.ndarray, what: str) -> float:
    want = np.asarray(expected, dtype=np.float64)
    have = np.asarray(got, dtype=np.float64)
    if have.size != want.size:
        raise ConversionFailed(f"{what} have shape {have.shape}, expected {want.shape}")
    have = have.reshape(want.shape)
    diff = np.abs(have - want)
    allowed = TOLERANCE * np.maximum(1.0, np.abs(want))
    if not np.all(diff <= allowed):  # also catches NaN
        worst = int(np.nanargmax(diff / allowed)) if np.isfinite(diff).any() else 0
        raise ConversionFailed(
            f"{what} differ by up to {float(diff.ravel()[worst]):.3g} "
            f"(allowed {float(allowed.ravel()[worst]):.3g})"
        )
    return float(diff.max()) if diff.size else 0.0


def _candidates(model: NativeRuntime) -> list[tuple[str, str, Any]]:
    n = model.n_features
    if isinstance(model, SklearnRuntime):
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

        name = f"skl2onnx {version('skl2onnx')}"
        options = {"zipmap": False} if model.task == CLASSIFICATION else None

        def sklearn(tensor_type: Any) -> Any:
            return lambda: to_onnx(
                model.estimator,
                initial_types=[(INPUT_NAME, tensor_type([None, n]))],
                options=options,
            )

        # Double keeps linear models exact; tree ensembles only convert in float.
        return [
            (name, "float64", sklearn(DoubleTensorType)),
            (name, "float32", sklearn(FloatTensorType)),
        ]
    from onnxmltools.convert.common.data_types import (  # type: ignore[import-untyped]
        FloatTensorType as MLFloatTensorType,
    )

    name = f"onnxmltools {version('onnxmltools')}"
    initial_types = [(INPUT_NAME, MLFloatTensorType([None, n]))]
    if isinstance(model, XGBoostRuntime):
        from onnxmltools.convert import convert_xgboost  # type: ignore[import-untyped]

        return [
            (
                name,
                "float32",
                lambda: convert_xgboost(model.for_conversion(), initial_types=initial_types),
            )
        ]
    if isinstance(model, LightGBMRuntime):
        from onnxmltools.convert import convert_lightgbm

        return [
            (
                name,
                "float32",
                lambda: convert_lightgbm(model.booster, initial_types=initial_types, zipmap=False),
            )
        ]
    return []


def _batch_outputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Make every output's first dimension the batch (some converters fix it at 1)."""
    for output in model.graph.output:
        dims = output.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_param = "N"
    return model
