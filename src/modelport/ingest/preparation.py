"""Turn an uploaded model file into what the registry stores and serves.

Every upload goes through ``prepare_upload``: the flavor is detected from the bytes (or taken as
declared and checked), unsafe files are refused (by the rules in ``safety``), the model is
converted to ONNX where possible and the conversion is verified, and the signature is inferred or
checked against the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from modelport.errors import BadRequestError, InvalidInputError, library_text, public_text
from modelport.ingest import safety
from modelport.ingest.conversion import ConversionFailed, convert_verified
from modelport.ingest.detection import ModelFile, detect, identify
from modelport.runtimes.lightgbm import LightGBMRuntime
from modelport.runtimes.native import CLASSIFICATION, NativeRuntime
from modelport.runtimes.signature import FieldSpec, Signature
from modelport.runtimes.sklearn import PickledSklearnRuntime, SklearnRuntime
from modelport.runtimes.xgboost import XGBoostRuntime

ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "float",
    onnx.TensorProto.DOUBLE: "float",
    onnx.TensorProto.INT64: "int",
    onnx.TensorProto.INT32: "int",
}
# ai.onnx.ml operators that carry a classifier's labels.
_ONNX_CLASSIFIER_OPS = {"LinearClassifier", "TreeEnsembleClassifier", "SVMClassifier", "ZipMap"}

# What a file kind is stored as, and which native runtime serves it when ONNX cannot.
ARTIFACT_SUFFIXES = {
    "skops": ".skops",
    "pickle": ".pkl",
    "joblib": ".joblib",
    "xgboost-json": ".json",
    "xgboost-ubj": ".ubj",
    "lightgbm": ".txt",
}
NATIVE_FLAVORS = {
    "skops": "sklearn",
    "pickle": "sklearn-pickle",
    "joblib": "sklearn-pickle",
    "xgboost-json": "xgboost",
    "xgboost-ubj": "xgboost",
    "lightgbm": "lightgbm",
}
VERIFICATION_ROWS = 64
_FIELD_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True)
class PreparedModel:
    artifact: bytes  # what is stored and served
    artifact_suffix: str
    flavor: str  # the flavor that serves it: "onnx", or a native one when conversion failed
    source_flavor: str  # what was uploaded: onnx, sklearn, xgboost or lightgbm
    signature: Signature
    # source_format, converted, conversion check or native_fallback reason, classes, ...
    details: dict[str, Any] = field(default_factory=dict)
    # What loading the artifact and a trial inference of the largest batch took (bytes).
    memory_bytes: int | None = None


def prepare_upload(
    data: bytes,
    *,
    declared_flavor: str | None = None,
    signature: Signature | None = None,
    task: str | None = None,
    allow_pickle: bool = False,
    budgets: safety.ModelBudgets | None = None,
) -> PreparedModel:
    """Check, convert and describe an uploaded model, and measure what serving it costs within
    ``budgets``; raises a 4xx error a user can act on."""
    if not data:
        raise BadRequestError("the uploaded model file is empty")
    budgets = budgets or safety.ModelBudgets()
    model_file = identify(data, declared_flavor)
    safety.refuse_pickle(model_file.kind, allow_pickle)
    if model_file.kind == "onnx":
        return _prepare_onnx(model_file.parsed, data, signature, task, budgets)
    return _prepare_native(model_file, signature, task, budgets)


def detect_flavor(data: bytes) -> str:
    """The framework of a file (onnx, sklearn, xgboost, lightgbm), recognised from its bytes."""
    return detect(data).framework


# --- ONNX --------------------------------------------------------------------------------------


def _prepare_onnx(
    model: onnx.ModelProto,
    data: bytes,
    signature: Signature | None,
    task: str | None,
    budgets: safety.ModelBudgets,
) -> PreparedModel:
    safety.check_onnx_budget(model, budgets)
    safety.check_onnx(model)
    classes = onnx_classes(model)
    inferred = infer_onnx_signature(model, task, classes)
    if signature is not None:
        check_signature_matches(signature, inferred)
    trial = safety.measure_in_child("onnx", data, budgets)
    details: dict[str, Any] = {
        "source_format": "onnx",
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
    }
    if classes is not None and (signature or inferred).task == "classification":
        details["classes"] = classes
    return PreparedModel(
        artifact=data,
        artifact_suffix=".onnx",
        flavor="onnx",
        source_flavor="onnx",
        signature=signature or inferred,
        details=details,
        memory_bytes=trial.memory_bytes,
    )


def onnx_classes(model: onnx.ModelProto) -> list[Any] | None:
    """The class labels an ONNX classifier (ai.onnx.ml) carries, in probability-column order."""
    for node in model.graph.node:
        if node.domain != "ai.onnx.ml" or node.op_type not in _ONNX_CLASSIFIER_OPS:
            continue
        for attribute in node.attribute:
            if attribute.name in ("classlabels_int64s", "classlabels_ints") and attribute.ints:
                return [int(value) for value in attribute.ints]
            if attribute.name == "classlabels_strings" and attribute.strings:
                return [value.decode("utf-8", errors="replace") for value in attribute.strings]
    return None


def infer_onnx_signature(
    model: onnx.ModelProto, task: str | None, classes: list[Any] | None = None
) -> Signature:
    """One 2-D numeric input (rows x features) -> one field per column."""
    graph_inputs = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    if len(graph_inputs) != 1:
        raise BadRequestError(
            f"the ONNX model has {len(graph_inputs)} inputs; modelport serves models with one "
            "2-D numeric input (rows x features)"
        )
    tensor = graph_inputs[0].type.tensor_type
    dims = tensor.shape.dim
    if len(dims) != 2 or not dims[1].HasField("dim_value"):
        raise BadRequestError(
            "the ONNX model's input must be 2-D with a fixed number of features, e.g. [None, 11]"
        )
    kind = ONNX_TYPES.get(tensor.elem_type)
    if kind is None:
        raise BadRequestError("the ONNX model's input must be a float or integer tensor")
    n_features = dims[1].dim_value
    output_names = [o.name for o in model.graph.output]
    is_classifier = task == "classification" or (
        task is None
        and (classes is not None or any("prob" in name.lower() for name in output_names))
    )
    outputs = (
        _classifier_outputs(classes)
        if is_classifier
        else tuple(FieldSpec(name=name, type="float") for name in output_names[:1])
    )
    return Signature(
        task="classification" if is_classifier else "regression",
        inputs=tuple(FieldSpec(name=f"x{i}", type=kind) for i in range(n_features)),
        outputs=outputs,
    )


def check_signature_matches(given: Signature, inferred: Signature) -> None:
    if len(given.inputs) != len(inferred.inputs):
        raise _signature_error(
            f"the signature lists {len(given.inputs)} inputs but the model takes "
            f"{len(inferred.inputs)} features",
            ["inputs"],
            "does not match the model",
        )


# --- scikit-learn, XGBoost, LightGBM -----------------------------------------------------------


def _prepare_native(
    model_file: ModelFile,
    signature: Signature | None,
    task: str | None,
    budgets: safety.ModelBudgets,
) -> PreparedModel:
    model, trial = _load_native(model_file, budgets)
    if task is not None and task != model.task:
        raise InvalidInputError(
            f"the model is registered for {task} but the file holds a {model.task} model",
            [{"loc": ["body", "file"], "msg": "task does not match", "type": "task_mismatch"}],
        )
    names = field_names(model.feature_names, model.n_features)
    if signature is not None:
        check_native_inputs(signature, model, names)
    inputs = tuple(FieldSpec(name=name, type="float") for name in names)
    rows = verification_rows(
        signature or Signature(task="regression", inputs=inputs, outputs=()),
        model.feature_ranges(),
    )
    try:
        expected = model.predict_outputs(rows)
    except Exception as exc:  # the library's own error (about the uploaded file) helps most
        raise BadRequestError(
            f"the model fails to predict on sample rows of {model.n_features} numbers: "
            f"{library_text(exc)}"
        ) from None
    inferred = Signature(task=model.task, inputs=inputs, outputs=_native_outputs(model, expected))
    if signature is not None:
        check_native_outputs(signature, inferred)
    details: dict[str, Any] = {"source_format": model_file.kind}
    if model.classes is not None:
        details["classes"] = model.classes
    if model.feature_names is not None and model.feature_names != names:
        details["feature_names"] = model.feature_names  # the model's own, before renaming
    try:
        conversion = convert_verified(model, rows, expected)
    except ConversionFailed as exc:
        flavor = NATIVE_FLAVORS[model_file.kind]
        # A booster's trial already ran on these very bytes; a scikit-learn model's runs now.
        trial = trial or safety.measure_in_child(flavor, model_file.data, budgets)
        return PreparedModel(
            artifact=model_file.data,
            artifact_suffix=ARTIFACT_SUFFIXES[model_file.kind],
            flavor=flavor,
            source_flavor=model_file.framework,
            signature=signature or inferred,
            details={
                **details,
                "converted": False,
                "native_fallback": public_text(str(exc), 2000),
            },
            memory_bytes=trial.memory_bytes,
        )
    converted = safety.measure_in_child("onnx", conversion.onnx_bytes, budgets)
    return PreparedModel(
        artifact=conversion.onnx_bytes,
        artifact_suffix=".onnx",
        flavor="onnx",
        source_flavor=model_file.framework,
        signature=signature or inferred,
        details={**details, "converted": True, "conversion": conversion.details()},
        memory_bytes=converted.memory_bytes,
    )


def _load_native(
    model_file: ModelFile, budgets: safety.ModelBudgets
) -> tuple[NativeRuntime, safety.Trial | None]:
    """The model loaded in this process; XGBoost and LightGBM files only after what they
    declare is within the budgets and a child process loaded them and ran a trial (its
    measure is returned)."""
    kind, data = model_file.kind, model_file.data
    if kind == "skops":
        return SklearnRuntime(safety.load_skops(data)), None
    if kind in safety.PICKLE_KINDS:  # allowed for this upload: refuse_pickle let it through
        return PickledSklearnRuntime(safety.load_pickle(data)), None
    safety.check_boosted_budget(kind, data, model_file.parsed, budgets)
    if model_file.framework == "xgboost":
        trial = safety.measure_in_child("xgboost", data, budgets)
        return XGBoostRuntime(data, parsed=model_file.parsed), trial
    trial = safety.measure_in_child("lightgbm", data, budgets)
    return LightGBMRuntime(data, header=model_file.parsed), trial


def _native_outputs(model: NativeRuntime, expected: dict[str, np.ndarray]) -> tuple[FieldSpec, ...]:
    if model.task == CLASSIFICATION:
        return _classifier_outputs(model.classes)
    values = np.asarray(expected["prediction"])
    width = int(values.reshape(len(values), -1).shape[1])
    if width == 1:
        return (FieldSpec(name="prediction", type="float"),)
    return tuple(FieldSpec(name=f"prediction_{i}", type="float") for i in range(width))


def _classifier_outputs(classes: list[Any] | None) -> tuple[FieldSpec, ...]:
    numeric = classes is not None and all(isinstance(c, int) for c in classes)
    return (
        FieldSpec(name="label", type="int" if numeric else "str", description="Predicted class"),
        FieldSpec(name="probabilities", type="float", description="Probability of each class"),
    )


def field_names(names: list[str] | None, n_features: int) -> list[str]:
    """Input field names from the model's feature names, made valid and unique (else x0, x1...)."""
    if names is None or len(names) != n_features:
        return [f"x{i}" for i in range(n_features)]
    result: list[str] = []
    for i, name in enumerate(names):
        clean = re.sub(r"[^A-Za-z0-9_]+", "_", name).strip("_") or f"x{i}"
        if not clean[0].isalpha() and clean[0] != "_":
            clean = f"f_{clean}"
        clean, candidate, suffix = clean[:64], clean[:64], 2
        while candidate in result:
            candidate = f"{clean[: 64 - len(str(suffix)) - 1]}_{suffix}"
            suffix += 1
        result.append(candidate)
    return result


def check_native_inputs(given: Signature, model: NativeRuntime, names: list[str]) -> None:
    """A given signature must take the model's features, in its order and by its names."""
    if given.task != model.task:
        raise _signature_error(
            f"the signature says {given.task} but the file holds a {model.task} model",
            ["task"],
            "does not match the model",
        )
    if len(given.inputs) != model.n_features:
        raise _signature_error(
            f"the signature lists {len(given.inputs)} inputs but the model takes "
            f"{model.n_features} features",
            ["inputs"],
            "does not match the model",
        )
    for index, spec in enumerate(given.inputs):
        if spec.type not in ("float", "int"):
            raise _signature_error(
                f"input {spec.name!r} is of type {spec.type}; this model takes numbers",
                ["inputs", index, "type"],
                "must be float or int",
            )
    if model.feature_names is None:
        return
    wrong = [
        index
        for index, spec in enumerate(given.inputs)
        if spec.name not in (model.feature_names[index], names[index])
    ]
    if wrong:
        shown = ", ".join(
            f"{given.inputs[i].name!r} where the model has {model.feature_names[i]!r}"
            for i in wrong[:5]
        )
        raise InvalidInputError(
            f"the signature's input names do not match the model's features: {shown}",
            [
                {
                    "loc": ["body", "signature", "inputs", i, "name"],
                    "msg": f"the model's feature {i} is {model.feature_names[i]!r}",
                    "type": "signature_mismatch",
                }
                for i in wrong
            ],
        )


def check_native_outputs(given: Signature, inferred: Signature) -> None:
    if inferred.task == "classification":
        if [spec.name for spec in given.outputs] != ["label", "probabilities"]:
            raise _signature_error(
                "a classifier's outputs are 'label' and 'probabilities'",
                ["outputs"],
                "must be label and probabilities",
            )
    elif len(given.outputs) != len(inferred.outputs):
        raise _signature_error(
            f"the signature lists {len(given.outputs)} outputs but the model predicts "
            f"{len(inferred.outputs)} value(s) per row",
            ["outputs"],
            "does not match the model",
        )


def _signature_error(message: str, where: list[Any], rule: str) -> InvalidInputError:
    return InvalidInputError(
        message,
        [{"loc": ["body", "signature", *where], "msg": rule, "type": "signature_mismatch"}],
    )


# --- rows for verifying a conversion -----------------------------------------------------------


def sample_rows(signature: Signature, n: int = 64, seed: int = 0) -> np.ndarray:
    """Rows inside the signature's bounds, for verifying a conversion."""
    rng = np.random.default_rng(seed)
    columns = []
    for spec in signature.inputs:
        low, high = _bounds(spec)
        column = rng.uniform(low, high, n)
        columns.append(np.round(column) if spec.type == "int" else column)
    return np.column_stack(columns) if columns else np.empty((n, 0))


def verification_rows(
    signature: Signature,
    ranges: list[tuple[float, float] | None],
    n: int = VERIFICATION_ROWS,
    seed: int = 0,
) -> np.ndarray:
    """``sample_rows`` plus, where the model tells where it splits each feature (trees), rows
    spread over those spans, so every region of the model is exercised; all within bounds."""
    rows = sample_rows(signature, n, seed)
    if not any(ranges):
        return rows
    rng = np.random.default_rng(seed + 1)
    columns = []
    for spec, span in zip(signature.inputs, ranges, strict=True):
        if span is None:
            low, high = _bounds(spec)
        else:
            margin = 0.1 * (span[1] - span[0]) + 1e-3 * max(1.0, abs(span[0]), abs(span[1]))
            low, high = span[0] - margin, span[1] + margin
        column = rng.uniform(low, high, n)
        if spec.minimum is not None or spec.maximum is not None:
            column = np.clip(column, spec.minimum, spec.maximum)
        columns.append(np.round(column) if spec.type == "int" else column)
    return np.vstack([rows, np.column_stack(columns)])


def _bounds(spec: FieldSpec) -> tuple[float, float]:
    low, high = spec.minimum, spec.maximum
    if low is None and high is None:
        return -3.0, 3.0
    if low is None:
        assert high is not None
        return high - max(6.0, abs(high)), high
    if high is None:
        return low, low + max(6.0, abs(low))
    return low, high
