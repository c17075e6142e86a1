"""Turn an uploaded model file into what the registry stores and serves.

Every upload goes through ``prepare_upload``: the flavor is detected from the bytes (or taken as
declared and checked), unsafe files are refused, the model is converted to ONNX where possible
and the conversion is verified, and the signature is inferred or checked against the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from modelport.errors import BadRequestError, InvalidInputError
from modelport.runtimes.signature import FieldSpec, Signature

# Operator domains ONNX Runtime implements itself; anything else is a custom op (native code).
ALLOWED_ONNX_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
ONNX_TYPES = {
    onnx.TensorProto.FLOAT: "float",
    onnx.TensorProto.DOUBLE: "float",
    onnx.TensorProto.INT64: "int",
    onnx.TensorProto.INT32: "int",
}


@dataclass(frozen=True)
class PreparedModel:
    artifact: bytes  # what is stored and served
    artifact_suffix: str
    flavor: str  # the flavor that serves it: "onnx", or a native one when conversion failed
    source_flavor: str  # what was uploaded
    signature: Signature
    details: dict[str, Any] = field(default_factory=dict)  # conversion check, fallback reason


def prepare_upload(
    data: bytes,
    *,
    declared_flavor: str | None = None,
    signature: Signature | None = None,
    task: str | None = None,
    allow_pickle: bool = False,
) -> PreparedModel:
    """Check, convert and describe an uploaded model; raises a 4xx error a user can act on."""
    if not data:
        raise BadRequestError("the uploaded model file is empty")
    flavor = declared_flavor or detect_flavor(data)
    if flavor == "onnx":
        return _prepare_onnx(data, signature, task)
    raise BadRequestError(f"unsupported model flavor {flavor!r}; supported: onnx")


def detect_flavor(data: bytes) -> str:
    """Recognise the format from the content, never from the file name."""
    try:
        _load_onnx(data)
    except BadRequestError:
        pass
    else:
        return "onnx"
    raise BadRequestError(
        "the file is not a model format modelport recognises (ONNX); give `flavor` if it is one"
    )


def _load_onnx(data: bytes) -> onnx.ModelProto:
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise BadRequestError(f"not a valid ONNX model: {exc}") from None
    if not model.graph.node and not model.graph.output:
        raise BadRequestError("not a valid ONNX model: the graph is empty (truncated file?)")
    return model


def _prepare_onnx(data: bytes, signature: Signature | None, task: str | None) -> PreparedModel:
    model = _load_onnx(data)
    check_onnx_safety(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise BadRequestError(f"the ONNX model does not pass onnx.checker: {exc}") from None
    inferred = infer_onnx_signature(model, task)
    if signature is not None:
        check_signature_matches(signature, inferred)
    return PreparedModel(
        artifact=data,
        artifact_suffix=".onnx",
        flavor="onnx",
        source_flavor="onnx",
        signature=signature or inferred,
        details={"opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import}},
    )


def check_onnx_safety(model: onnx.ModelProto) -> None:
    """Refuse what would make the server read other files or load native code."""
    for tensor in model.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            raise BadRequestError(
                f"the ONNX model stores tensor {tensor.name!r} in an external file; upload a "
                "self-contained model (onnx.save(model, path, save_as_external_data=False))"
            )
    domains = {node.domain for node in model.graph.node} | {o.domain for o in model.opset_import}
    custom = sorted(d for d in domains if d not in ALLOWED_ONNX_DOMAINS)
    if custom:
        raise BadRequestError(
            f"the ONNX model uses custom operator domains {custom}, which are not allowed"
        )


def infer_onnx_signature(model: onnx.ModelProto, task: str | None) -> Signature:
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
        task is None and any("prob" in name.lower() for name in output_names)
    )
    outputs = (
        (FieldSpec(name="label", type="str"), FieldSpec(name="probabilities", type="float"))
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
        raise InvalidInputError(
            f"the signature lists {len(given.inputs)} inputs but the model takes "
            f"{len(inferred.inputs)} features",
            [
                {
                    "loc": ["body", "signature", "inputs"],
                    "msg": "does not match the model",
                    "type": "signature_mismatch",
                }
            ],
        )


def sample_rows(signature: Signature, n: int = 64, seed: int = 0) -> np.ndarray:
    """Rows inside the signature's bounds, for verifying a conversion."""
    rng = np.random.default_rng(seed)
    columns = []
    for spec in signature.inputs:
        low = spec.minimum if spec.minimum is not None else -3.0
        high = spec.maximum if spec.maximum is not None else 3.0
        columns.append(rng.uniform(low, high, n))
    return np.column_stack(columns)
