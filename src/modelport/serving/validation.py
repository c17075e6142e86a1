"""Turn a request body into a validated feature matrix, or errors naming field and rule."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import TypeAdapter, ValidationError

from modelport.errors import InvalidInputError, PayloadTooLargeError
from modelport.runtimes.signature import Signature


def parse_json_body(body: bytes) -> Any:
    if not body.strip():
        raise InvalidInputError(
            "the request body is empty; send a JSON object with the model's input fields"
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(
            f"the request body is not valid JSON ({exc}); NaN and Infinity are not JSON numbers",
            [{"loc": ["body"], "msg": f"invalid JSON: {exc}", "type": "json_invalid"}],
        ) from None


@dataclass(frozen=True)
class Rows:
    """Rows to validate and where they sit in the body, so errors point at the right place."""

    items: list[Any]
    loc_prefix: tuple[Any, ...]
    indexed: bool  # errors carry the row index (a list under "inputs")


def extract_rows(payload: Any, max_rows: int, *, allow_batch: bool) -> Rows:
    """Accept ``{"inputs": [rows]}``, ``{"inputs": {row}}`` or one flat row object."""
    if not isinstance(payload, dict):
        raise InvalidInputError(
            "expected a JSON object" + (' (one row, or {"inputs": [rows]})' if allow_batch else ""),
            [{"loc": ["body"], "msg": "Input should be a JSON object", "type": "object_type"}],
        )
    if not (allow_batch and "inputs" in payload):
        return Rows([payload], ("body",), indexed=False)
    extra = sorted(set(payload) - {"inputs"})
    if extra:
        raise InvalidInputError(
            f"unexpected top-level fields {extra}; put rows under 'inputs' only",
            [
                {
                    "loc": ["body", k],
                    "msg": "Extra inputs are not permitted",
                    "type": "extra_forbidden",
                }
                for k in extra
            ],
        )
    inputs = payload["inputs"]
    if isinstance(inputs, dict):
        return Rows([inputs], ("body", "inputs"), indexed=False)
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInputError(
            "'inputs' must be a non-empty list of row objects",
            [
                {
                    "loc": ["body", "inputs"],
                    "msg": "must be a non-empty list of objects",
                    "type": "list_type",
                }
            ],
        )
    if len(inputs) > max_rows:
        raise PayloadTooLargeError(
            f"{len(inputs)} rows sent; at most {max_rows} rows are accepted per request"
        )
    return Rows(inputs, ("body", "inputs"), indexed=True)


def validate_rows(signature: Signature, rows: Rows) -> np.ndarray:
    """Check every row against the signature and return a (rows, features) float64 matrix."""
    adapter = _list_adapter(signature)
    try:
        adapter.validate_python(rows.items)
    except ValidationError as exc:
        errors = []
        for error in exc.errors(include_url=False, include_context=False):
            # pydantic's loc starts with the list index; keep it only for real batches.
            loc = list(error["loc"]) if rows.indexed else list(error["loc"][1:])
            errors.append(
                {
                    "loc": [*rows.loc_prefix, *loc],
                    "msg": error["msg"],
                    "type": error["type"],
                    "input": error.get("input"),
                }
            )
        where = ".".join(str(part) for part in errors[0]["loc"][1:]) or "body"
        raise InvalidInputError(f"{where}: {errors[0]['msg']}", errors) from None
    names = signature.input_names
    return np.array([[row[name] for name in names] for row in rows.items], dtype=np.float64)


@functools.lru_cache(maxsize=256)
def _list_adapter(signature: Signature) -> TypeAdapter[Any]:
    return TypeAdapter(list[signature.row_model()])  # type: ignore[arg-type,misc]
