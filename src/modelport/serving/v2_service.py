"""The Open Inference Protocol (KServe V2) on top of PredictionService.

A V2 request names tensors; modelport's models take rows of named, bounded features. This
module translates between the two and nothing else: the rows go through
``PredictionService.predict_with``, so the signature's rules, the visibility check, the
prediction log and the metrics are the same as for the REST endpoints. The tensors' wire
format (JSON or binary data, datatypes) is ``serving.v2_codec``'s.

A tabular model takes either its 2-D input tensor (named after the ONNX input, ``[rows,
features]``, advertised in the metadata) or one 1-D tensor per signature field (``[rows]``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.auth.principal import Principal
from modelport.errors import (
    InvalidInputError,
    ModelportError,
    NotFoundError,
    ServiceUnavailableError,
)
from modelport.registry import service as registry
from modelport.registry.service import VersionRef
from modelport.runtimes.signature import FieldSpec, Signature
from modelport.serving.model_cache import LoadedModel, ModelCache
from modelport.serving.resolver import VersionResolver
from modelport.serving.service import PredictionResult
from modelport.serving.v2_codec import (
    decode_body,
    encode_output,
    encode_response,
    input_datatype,
    output_datatype,
    row_count,
    tensor_values,
)
from modelport.serving.v2_schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    TensorMetadata,
)
from modelport.serving.validation import Rows

EXTENSIONS = ["binary_tensor_data"]
PLATFORMS = {"onnx": "onnxruntime_onnx"}
_VERSION = re.compile(r"[0-9]{1,7}")


def parse_version(name: str, version: str) -> int:
    """V2 versions are strings; modelport's are the numbers 1, 2, ... (anything else: 404)."""
    if not _VERSION.fullmatch(version) or int(version) < 1:
        raise NotFoundError(f"model {name!r} has no version {version!r}")
    return int(version)


def platform_of(ref: VersionRef) -> str:
    return PLATFORMS.get(ref.flavor, ref.flavor)


@dataclass(frozen=True)
class MatrixInput:
    """The model's own 2-D input tensor, as the V2 metadata advertises it."""

    name: str
    datatype: str
    columns: int


def matrix_input(model: LoadedModel) -> MatrixInput:
    runtime = model.runtime
    # Not part of the Runtime protocol (which promises predict only), but every runtime here
    # names its input tensor and its numeric type.
    name = getattr(runtime, "input_name", None) or "input"
    dtype = getattr(runtime, "input_dtype", None) or np.float32
    return MatrixInput(
        name=str(name),
        datatype=input_datatype(dtype),
        columns=len(model.ref.signature.inputs),
    )


def output_shape(ref: VersionRef, spec: FieldSpec) -> list[int]:
    """One value per row, except a classifier's probabilities: one column per class."""
    if _is_probabilities(ref.signature, spec):
        classes = ref.details.get("classes")
        return [-1, len(classes) if isinstance(classes, list) else -1]
    return [-1]


def _is_probabilities(signature: Signature, spec: FieldSpec) -> bool:
    return signature.task == "classification" and spec.name == "probabilities"


def describe(ref: VersionRef, model: LoadedModel, versions: list[int]) -> ModelMetadata:
    signature = ref.signature
    if signature.takes_image:  # served over REST multipart only; described field by field
        inputs = [
            TensorMetadata(name=s.name, datatype="BYTES", shape=[1]) for s in signature.inputs
        ]
    else:
        matrix = matrix_input(model)
        inputs = [
            TensorMetadata(name=matrix.name, datatype=matrix.datatype, shape=[-1, matrix.columns])
        ]
    return ModelMetadata(
        name=ref.model_name,
        versions=[str(v) for v in versions],
        platform=platform_of(ref),
        inputs=inputs,
        outputs=[
            TensorMetadata(name=s.name, datatype=output_datatype(s), shape=output_shape(ref, s))
            for s in signature.outputs
        ],
    )


class ModelDirectory:
    """Which version a V2 path means, whether the caller may see it, and what it looks like."""

    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        resolver: VersionResolver,
        models: ModelCache,
    ) -> None:
        self._session_factory = session_factory
        self._resolver = resolver
        self._models = models

    async def visible(self, caller: Principal, name: str, version: int | None) -> VersionRef:
        return await self._resolver.resolve_for(caller, name, version, None)

    def is_loaded(self, ref: VersionRef) -> bool:
        return any(m.ref.version_id == ref.version_id for m in self._models.loaded())

    async def metadata(self, caller: Principal, name: str, version: int | None) -> ModelMetadata:
        ref = await self.visible(caller, name, version)
        try:
            async with self._session_factory() as session:
                stored = await registry.get_model(session, ref.model_name)
                versions = sorted(v.version for v in stored.versions)
        except ModelportError:
            raise
        except Exception as exc:
            raise ServiceUnavailableError(
                "the model registry cannot be reached right now; try again shortly"
            ) from exc
        return describe(ref, await self._models.get(ref), versions)


class InferCall:
    """One V2 infer request: ``parse`` and ``read_rows`` plug into
    ``PredictionService.predict_with``; ``respond`` shapes its result as V2 output tensors."""

    def __init__(self, models: ModelCache, max_rows: int, header_length: str | None) -> None:
        self._models = models
        self._max_rows = max_rows
        self._header_length = header_length
        self._request: InferenceRequest | None = None
        self._outputs: list[tuple[FieldSpec, bool]] = []

    def parse(self, body: bytes) -> Any:
        """The payload, binary tensors decoded into it so the prediction log shows them."""
        return decode_body(body, self._header_length)

    async def read_rows(self, ref: VersionRef, payload: Any) -> Rows:
        request = _request_of(payload)
        self._request = request
        self._outputs = _select_outputs(ref.signature, request)
        matrix = matrix_input(await self._models.get(ref))
        tensors: dict[str, RequestInput] = {}
        for tensor in request.inputs:
            if tensor.name in tensors:
                raise InvalidInputError(f"input {tensor.name!r} is sent twice")
            tensors[tensor.name] = tensor
        signature = ref.signature
        chosen = tensors.get(matrix.name)
        # A feature may share the input's name; a 1-D tensor of that name is that feature.
        if chosen is not None and not (
            matrix.name in signature.input_names and len(chosen.shape) == 1
        ):
            if len(tensors) > 1:
                raise InvalidInputError(
                    f"send either the 2-D input {matrix.name!r} or one input per feature, "
                    f"not both (got {sorted(tensors)})"
                )
            items = self._matrix_rows(signature, matrix, chosen)
        else:
            items = self._field_rows(signature, matrix, tensors)
        return Rows(items, ("body", "row"), indexed=True)

    def respond(self, result: PredictionResult) -> tuple[bytes, dict[str, str]]:
        """The response body and headers: JSON, or a JSON header plus binary tensors."""
        assert self._request is not None, "respond() follows a successful prediction"
        rows = result.predictions
        outputs: list[ResponseOutput] = []
        blobs: list[bytes] = []
        for spec, binary in self._outputs:
            values = [row[spec.name] for row in rows]
            output, blob = encode_output(spec.name, output_datatype(spec), values, binary)
            outputs.append(output)
            if blob is not None:
                blobs.append(blob)
        response = InferenceResponse(
            model_name=result.model_name,
            model_version=result.model_version,
            id=self._request.id if self._request.id is not None else result.request_id,
            outputs=outputs,
        )
        return encode_response(response, blobs)

    def _matrix_rows(
        self, signature: Signature, matrix: MatrixInput, tensor: RequestInput
    ) -> list[dict[str, Any]]:
        if len(tensor.shape) != 2 or tensor.shape[1] != matrix.columns:
            raise InvalidInputError(
                f"input {tensor.name!r} has shape {tensor.shape}; this model takes "
                f"[rows, {matrix.columns}] (one column per feature: {signature.input_names})"
            )
        rows = row_count(tensor, self._max_rows)
        values = tensor_values(tensor, rows * matrix.columns)
        width = matrix.columns
        return [
            _row(signature, values[start : start + width])
            for start in range(0, rows * width, width)
        ]

    def _field_rows(
        self, signature: Signature, matrix: MatrixInput, tensors: dict[str, RequestInput]
    ) -> list[dict[str, Any]]:
        names = signature.input_names
        unknown = [name for name in tensors if name not in names]
        if unknown:
            raise InvalidInputError(
                f"unknown input {unknown[0]!r}; this model takes the 2-D input {matrix.name!r} "
                f"[rows, {matrix.columns}] or one 1-D input per feature: {names}"
            )
        missing = [name for name in names if name not in tensors]
        if missing:
            raise InvalidInputError(f"inputs {missing} are missing; every feature is required")
        rows: int | None = None
        columns: list[list[Any]] = []
        for name in names:
            tensor = tensors[name]
            if len(tensor.shape) not in (1, 2) or tensor.shape[1:] not in ([], [1]):
                raise InvalidInputError(
                    f"input {name!r} has shape {tensor.shape}; a per-feature input is [rows]"
                )
            count = row_count(tensor, self._max_rows)
            if rows is not None and count != rows:
                raise InvalidInputError(
                    f"input {name!r} has {count} rows but {names[0]!r} has {rows}; "
                    "every feature needs one value per row"
                )
            rows = count
            columns.append(tensor_values(tensor, count))
        return [_row(signature, list(values)) for values in zip(*columns, strict=True)]


def _row(signature: Signature, values: list[Any]) -> dict[str, Any]:
    row = {}
    for spec, value in zip(signature.inputs, values, strict=True):
        # A float tensor may carry an int field's value (3.0): the signature wants the int.
        if spec.type == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)
        row[spec.name] = value
    return row


def _request_of(payload: Any) -> InferenceRequest:
    try:
        return InferenceRequest.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        raise InvalidInputError(f"not a V2 inference request: {where}: {error['msg']}") from None


def _select_outputs(
    signature: Signature, request: InferenceRequest
) -> list[tuple[FieldSpec, bool]]:
    """The outputs to answer, each with whether it goes as binary data."""
    everything_binary = request.parameters.get("binary_data_output") is True
    if request.outputs is None:
        return [(spec, everything_binary) for spec in signature.outputs]
    by_name = {spec.name: spec for spec in signature.outputs}
    chosen: list[tuple[FieldSpec, bool]] = []
    for wanted in _unique(request.outputs):
        spec = by_name.get(wanted.name)
        if spec is None:
            raise InvalidInputError(
                f"unknown output {wanted.name!r}; this model answers {list(by_name)}"
            )
        binary = wanted.parameters.get("binary_data", everything_binary)
        chosen.append((spec, binary is True))
    return chosen


def _unique(outputs: list[RequestOutput]) -> list[RequestOutput]:
    seen: dict[str, RequestOutput] = {}
    for output in outputs:
        seen.setdefault(output.name, output)
    return list(seen.values())
