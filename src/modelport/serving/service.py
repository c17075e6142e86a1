"""One prediction from body bytes to named outputs, logged whether it succeeds or not."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
import numpy as np

from modelport.auth.principal import Principal
from modelport.errors import (
    ModelportError,
    ModelRunError,
    ModelUnavailableError,
    UnsupportedMediaTypeError,
)
from modelport.monitoring.metrics import count_prediction
from modelport.monitoring.prediction_log import LogEntry, PredictionLogWriter
from modelport.registry.service import VersionRef
from modelport.runtimes.native import json_class
from modelport.runtimes.signature import Signature
from modelport.serving.batcher import Batcher, time_limit
from modelport.serving.model_cache import LoadedModel, ModelCache
from modelport.serving.resolver import VersionResolver
from modelport.serving.validation import (
    Rows,
    checked_matrix,
    extract_rows,
    parse_json_body,
    validate_rows,
)

# How another wire format (the V2 protocol) reuses predict_with: its own body parser, and a
# reader that turns the parsed body into rows once the version (and its signature) is known.
BodyParser = Callable[[bytes], Any]
RowReader = Callable[[VersionRef, Any], Awaitable[Rows]]
# What the prediction log row of a request that hit a bug says (the traceback is in the log).
INTERNAL_ERROR = "internal error; the server log has the details under this request id"

# Up to this many values (rows x fields) checking rows and naming outputs hold the event loop
# for about a millisecond, less than a hop to a worker thread and back (about 0.1 ms a thousand
# values; benchmarks/bench_validation.py). Wording errors with Pydantic costs about five times
# as much, so it stays on the loop only for small requests.
INLINE_VALUES = 20_000
# Up to this many output values, naming them is quicker in plain Python than with numpy.
_FEW_VALUES = 16
INLINE_WORDING_VALUES = 1_000


@dataclass(frozen=True)
class PredictionResult:
    model_name: str
    model_version: str
    predictions: list[dict[str, Any]]
    processing_time_ms: float
    request_id: str
    timestamp: datetime


@dataclass(frozen=True)
class Target:
    """Which model to use: a name plus an explicit version or an alias (default production)."""

    name: str
    version: int | None = None
    alias: str | None = None


class PredictionService:
    def __init__(
        self,
        resolver: VersionResolver,
        cache: ModelCache,
        log: PredictionLogWriter,
        max_batch_rows: int,
        batcher: Batcher,
        request_timeout: float,
    ) -> None:
        self._resolver = resolver
        self._cache = cache
        self._log = log
        self._max_batch_rows = max_batch_rows
        self._batcher = batcher
        self._request_timeout = request_timeout

    async def predict(
        self,
        target: Target,
        body: bytes,
        request_id: str,
        caller: Principal,
        *,
        allow_batch: bool = True,
        timeout_header: str | None = None,
    ) -> PredictionResult:
        async def read_rows(ref: VersionRef, payload: Any) -> Rows:
            return extract_rows(payload, self._max_batch_rows, allow_batch=allow_batch)

        return await self.predict_with(
            target,
            body,
            request_id,
            caller,
            parse=parse_json_body,
            read_rows=read_rows,
            timeout_header=timeout_header,
        )

    async def predict_with(
        self,
        target: Target,
        body: bytes,
        request_id: str,
        caller: Principal,
        *,
        parse: BodyParser,
        read_rows: RowReader,
        timeout_header: str | None = None,
    ) -> PredictionResult:
        """``predict`` for any body format: same checks, log row and metrics. The deadline is
        ``timeout_header`` (the caller's X-Request-Timeout) or the default, from now on."""
        call = _Call(target, caller, request_id, time.perf_counter())
        try:
            deadline = call.started + time_limit(timeout_header, self._request_timeout)
            call.payload = parse(body)
            ref = await self._resolver.resolve_for(
                caller, target.name, target.version, target.alias
            )
            call.ref = ref
            if ref.signature.takes_image:
                raise UnsupportedMediaTypeError(
                    f"model {ref.model_name!r} takes an image: send it as multipart/form-data "
                    "with the file in the field 'file'"
                )
            rows = await read_rows(ref, call.payload)
            model = await self._cache.get(ref)
            predictions = await self._run(model, ref, rows, deadline)
        except ModelportError as exc:
            status = "invalid_input" if exc.status_code in (413, 422) else "error"
            self._record(call, None, status, exc.message)
            raise
        except Exception:
            # A bug, not the model's fault (the runtimes raise ModelRunError for those): the
            # log row says only that much; the request middleware logs the traceback once and
            # answers 500 with the request id.
            self._record(call, None, "error", INTERNAL_ERROR)
            raise
        elapsed_ms = self._record(call, predictions, "success", None)
        return PredictionResult(
            model_name=ref.model_name,
            model_version=str(ref.version),
            predictions=predictions,
            processing_time_ms=elapsed_ms,
            request_id=request_id,
            timestamp=datetime.now(UTC),
        )

    async def _run(
        self, model: LoadedModel, ref: VersionRef, rows: Rows, deadline: float
    ) -> list[dict[str, Any]]:
        """Validate the rows into the model's input type, run them (with other requests for the
        same version when they coincide) and name the outputs. Large requests validate and
        post-process in a worker thread, so the event loop is never held for long."""
        dtype = getattr(model.runtime, "input_dtype", np.float64)
        size = len(rows.items) * max(1, len(ref.signature.inputs))
        features = checked_matrix(ref.signature, rows, dtype) if size <= INLINE_VALUES else None
        if features is None:  # large, or a rule may be broken: Pydantic says which
            if size <= INLINE_WORDING_VALUES:
                features = validate_rows(ref.signature, rows, dtype)
            else:
                features = await anyio.to_thread.run_sync(validate_rows, ref.signature, rows, dtype)
        # ``ref`` as just resolved: a limit its owner changed applies without a reload.
        outputs = await self._batcher.run(model, features, deadline - time.perf_counter(), ref)
        if size <= INLINE_VALUES:
            return postprocess(ref.signature, outputs, len(rows.items), ref.details)
        return await anyio.to_thread.run_sync(
            postprocess, ref.signature, outputs, len(rows.items), ref.details
        )

    @property
    def batcher(self) -> Batcher:
        return self._batcher

    def close(self) -> None:
        self._batcher.close()

    def _record(self, call: _Call, outputs: Any, status: str, error: str | None) -> float:
        elapsed_ms = (time.perf_counter() - call.started) * 1000
        # Label by registered name only: a caller's made-up names must not grow the metrics.
        model_label = call.ref.model_name if call.ref else "unresolved"
        count_prediction(model_label, status, elapsed_ms / 1000)
        self._log.record(
            LogEntry(
                request_id=call.request_id,
                model_name=_storable(call.target.name),
                model_version=str(call.ref.version) if call.ref else None,
                inputs=call.payload,
                outputs=outputs,
                latency_ms=round(elapsed_ms, 3),
                status=status,
                error=_storable(error) if error else None,
                user_id=call.caller.user_id,
                api_key_id=call.caller.api_key_id,
                client_address=call.caller.client_address[:64],
            )
        )
        return elapsed_ms


@dataclass
class _Call:
    """What is known about one prediction so far; the log row is written from it."""

    target: Target
    caller: Principal
    request_id: str
    started: float
    payload: Any = None
    ref: VersionRef | None = None


def _storable(text: str) -> str:
    """Names and messages echo the caller's URL and keys; PostgreSQL text cannot hold NUL."""
    return text.replace("\x00", "\ufffd")


def postprocess(
    signature: Signature,
    outputs: Mapping[str, np.ndarray] | np.ndarray,
    n_rows: int,
    details: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Name each output. A classifier's row is its label and the probability of every class
    (``details["classes"]`` names them); a regressor's values are named by the signature and
    clipped into the bounds it declares."""
    if not isinstance(outputs, Mapping):
        outputs = {"output": outputs}
    if signature.task == "classification":
        return _classified(outputs, n_rows, (details or {}).get("classes"))
    values = _per_row(next(iter(outputs.values())), n_rows, len(signature.outputs))
    if values.size <= _FEW_VALUES:
        return _named_few(signature, values.tolist())
    _check_finite(values)
    rows: list[dict[str, Any]] = [{} for _ in range(n_rows)]
    for column, spec in enumerate(signature.outputs):
        column_values = values[:, column]
        # maximum/minimum rather than clip: the same for finite values, and several times
        # cheaper on the one-row answers most requests get.
        if spec.minimum is not None:
            column_values = np.maximum(column_values, spec.minimum)
        if spec.maximum is not None:
            column_values = np.minimum(column_values, spec.maximum)
        for row, value in zip(rows, column_values.tolist(), strict=True):
            row[spec.name] = value
    return rows


def _named_few(signature: Signature, table: list[list[float]]) -> list[dict[str, Any]]:
    """``postprocess`` of a regressor's few values in plain Python: on a row or two, each
    numpy call costs more than the work it does."""
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(table):
        if not all(map(math.isfinite, line)):
            raise _not_finite(number)
        row: dict[str, Any] = {}
        for spec, value in zip(signature.outputs, line, strict=False):
            if spec.minimum is not None and value < spec.minimum:
                value = spec.minimum
            if spec.maximum is not None and value > spec.maximum:
                value = spec.maximum
            row[spec.name] = value
        rows.append(row)
    return rows


def _classified(
    outputs: Mapping[str, np.ndarray], n_rows: int, classes: list[Any] | None
) -> list[dict[str, Any]]:
    labels, probabilities = outputs.get("label"), outputs.get("probabilities")
    for value in outputs.values():  # ONNX classifiers name their outputs as they like
        array = np.asarray(value)
        if probabilities is None and array.dtype.kind == "f" and array.ndim == 2:
            probabilities = array
        elif labels is None and array.dtype.kind in "iuUSOb" and array.size == n_rows:
            labels = array
    if probabilities is None:
        raise ModelUnavailableError("the classifier gave no class probabilities")
    matrix = _per_row(probabilities, n_rows)
    _check_finite(matrix)
    names = classes if classes and len(classes) == matrix.shape[1] else list(range(matrix.shape[1]))
    if labels is not None and np.asarray(labels).size != n_rows:
        raise ModelRunError(f"labels of shape {np.shape(labels)} for {n_rows} rows")
    if labels is None:
        chosen = [names[i] for i in np.argmax(matrix, axis=1)]
    else:
        chosen = [json_class(label) for label in np.asarray(labels).reshape(n_rows)]
    keys = [str(name) for name in names]
    return [
        {"label": label, "probabilities": dict(zip(keys, row, strict=True))}
        for label, row in zip(chosen, matrix.tolist(), strict=True)
    ]


def _per_row(values: Any, n_rows: int, columns: int = 1) -> np.ndarray:
    """The model's answer as one line of numbers per input row. An answer of another size, or
    not numbers, is the model's fault (its graph disagrees with its signature)."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelRunError(f"non-numeric output of dtype {np.asarray(values).dtype}") from None
    if n_rows < 1 or array.size % n_rows or array.size // n_rows < columns:
        raise ModelRunError(
            f"output of shape {array.shape} for {n_rows} rows and {columns} output columns"
        )
    return array.reshape(n_rows, -1)


def _check_finite(values: np.ndarray) -> None:
    finite = np.isfinite(values)
    if finite.all():
        return
    broken = np.flatnonzero(~finite.all(axis=1))
    if broken.size:
        raise _not_finite(int(broken[0]))


def _not_finite(row: int) -> ModelUnavailableError:
    # JSON (and the prediction log) have no NaN or infinity.
    return ModelUnavailableError(f"the model gave no finite answer (NaN or infinity) for row {row}")
