"""Turn a request body into a validated feature matrix, or errors naming field and rule."""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from numpy.typing import DTypeLike
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


def validate_rows(signature: Signature, rows: Rows, dtype: DTypeLike = np.float64) -> np.ndarray:
    """Check every row against the signature and return a (rows, features) matrix in ``dtype``
    (the model's input type). Plain and numpy checks decide; Pydantic only words the errors."""
    matrix = checked_matrix(signature, rows, dtype)
    if matrix is None:
        _raise_errors(signature, rows)
        # Pydantic accepted what the quick checks could not vouch for (an int too large for an
        # exact float comparison, say): it has the last word, as before.
        names = signature.input_names
        matrix = np.array([[row[name] for name in names] for row in rows.items], dtype)
    return matrix


def checked_matrix(signature: Signature, rows: Rows, dtype: DTypeLike) -> np.ndarray | None:
    """The matrix when every row passes every rule, without Pydantic; None when any row may
    break one (``validate_rows`` then says which, or has the last word)."""
    return _checked_matrix(_checks(signature), rows.items, np.dtype(dtype))


@dataclass(frozen=True)
class _Checks:
    """A signature's rules as arrays: field names, bounds, and which columns take integers."""

    names: tuple[str, ...]
    lower: np.ndarray  # inclusive; the most negative float64 where the field has no minimum
    upper: np.ndarray
    lower_values: list[float]  # the same, for rows checked without numpy
    upper_values: list[float]
    int_columns: tuple[int, ...]
    numeric: bool  # every field is a number (else Pydantic validates everything)


# By identity: hashing a Signature hashes every field spec, which costs more than checking a row.
_CHECKS: dict[int, tuple[Signature, _Checks]] = {}


def _checks(signature: Signature) -> _Checks:
    cached = _CHECKS.get(id(signature))
    if cached is not None and cached[0] is signature:
        return cached[1]
    largest = float(np.finfo(np.float64).max)  # finite bounds refuse infinities; NaN fails both
    specs = signature.inputs
    lower = [-largest if spec.minimum is None else spec.minimum for spec in specs]
    upper = [largest if spec.maximum is None else spec.maximum for spec in specs]
    checks = _Checks(
        names=tuple(spec.name for spec in specs),
        lower=np.array(lower, np.float64),
        upper=np.array(upper, np.float64),
        lower_values=lower,
        upper_values=upper,
        int_columns=tuple(i for i, spec in enumerate(specs) if spec.type == "int"),
        numeric=all(spec.type in ("float", "int") for spec in specs),
    )
    if len(_CHECKS) >= 256:  # signatures of versions long evicted
        _CHECKS.clear()
    _CHECKS[id(signature)] = (signature, checks)
    return checks


_FLOAT_KINDS = frozenset({float, int})  # strict Pydantic: a float field takes ints, never bools
_INT_KINDS = frozenset({int})
_EXACT_LIMIT = 2.0**53  # beyond it an int may not compare with a bound exactly as a float
_FEW_ROWS = 4  # up to this many rows, comparing in Python beats numpy's per-call cost


def _checked_matrix(checks: _Checks, items: list[Any], dtype: np.dtype) -> np.ndarray | None:
    """The matrix in ``dtype`` when every row passes every rule; None when any might not (the
    caller then asks Pydantic, which reports every broken field in its own words)."""
    names, width = checks.names, len(checks.names)
    if not checks.numeric or not items:
        return None
    # Exactly the signature's fields: every row a dict of the right size holding every name.
    try:
        if len(items) == 1:  # one flat JSON object, the common case: no more than it needs
            row = items[0]
            if type(row) is not dict or len(row) != width:
                return None
            values = [row[name] for name in names]
        else:
            if set(map(type, items)) != {dict} or set(map(len, items)) != {width}:
                return None
            values = [row[name] for row in items for name in names]
    except KeyError:
        return None
    kinds = set(map(type, values))
    if not kinds <= _FLOAT_KINDS:  # no strings, bools, nulls, lists or objects
        return None
    for column in checks.int_columns:
        if not set(map(type, values[column::width])) <= _INT_KINDS:
            return None
    if int in kinds and max(map(abs, values)) > _EXACT_LIMIT:
        return None
    if len(items) <= _FEW_ROWS:
        # Python floats compare exactly; a chained <= is False for NaN and, bounds being
        # finite, for infinities. So the matrix is built once, straight in the model's type.
        lower, upper = checks.lower_values * len(items), checks.upper_values * len(items)
        if not (all(map(operator.le, lower, values)) and all(map(operator.le, values, upper))):
            return None
        return np.array(values, dtype=dtype).reshape(len(items), width)
    # Bounds are checked in float64 (float32 would round 16.000001 down to an allowed 16).
    matrix = np.array(values, dtype=np.float64).reshape(len(items), width)
    if not ((matrix >= checks.lower) & (matrix <= checks.upper)).all():
        return None  # out of bounds, or not finite
    return matrix.astype(dtype, copy=False)


def _raise_errors(signature: Signature, rows: Rows) -> None:
    """Raise the field-by-field errors Pydantic finds (it finds none for valid rows): the first
    ``ERRORS_KEPT`` in full, the rest counted. Building every error of a row with 60,000 unknown
    keys would take longer than validating it; so unknown keys past the budget are counted
    without being validated, and when there are still too many errors only the first rows are
    looked at again for their detail."""
    items, unvalidated = _without_extra_keys_past(ERRORS_KEPT, signature.input_names, rows.items)
    try:
        _list_adapter(signature).validate_python(items)
    except ValidationError as exc:
        found = exc.error_count()
        if found <= ERRORS_KEPT:
            details = exc.errors(include_url=False, include_context=False)
        else:
            details = _first_errors(signature, items)
        errors: list[dict[str, Any]] = []
        for error in details[:ERRORS_KEPT]:
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
        where = ".".join(str(part) for part in errors[0]["loc"][1:])[:100] or "body"
        omitted = found + unvalidated - len(errors)
        if omitted:
            # Counted, not listed: the HTTP layer shows fewer still and says how many it left.
            errors.append(
                {
                    "loc": [rows.loc_prefix[0]],
                    "msg": f"{omitted} more errors not shown",
                    "type": "too_many_errors",
                    "omitted": omitted,
                }
            )
        raise InvalidInputError(f"{where}: {errors[0]['msg']}", errors) from None


def _without_extra_keys_past(
    budget: int, names: list[str], items: list[Any]
) -> tuple[list[Any], int]:
    """The rows with at most ``budget`` unknown keys in all, and how many were left out (each
    would have been one "extra_forbidden" error)."""
    width = len(names)
    if all(type(row) is not dict or len(row) <= width for row in items):
        return items, 0  # the common case: nothing to look at
    known = set(names)
    kept_rows: list[Any] = []
    left_out = 0
    for row in items:
        if type(row) is not dict:
            kept_rows.append(row)
            continue
        kept: dict[str, Any] = {}
        for key, value in row.items():
            if key in known:
                kept[key] = value
            elif budget > 0:
                kept[key] = value
                budget -= 1
            else:
                left_out += 1
        kept_rows.append(kept)
    return kept_rows, left_out


def _first_errors(signature: Signature, items: list[Any]) -> list[Any]:
    """The errors of the first rows, one row at a time, until there are ``ERRORS_KEPT``; the
    list index leads each loc, as when the whole list is validated."""
    adapter = _row_adapter(signature)
    errors: list[Any] = []
    for index, row in enumerate(items):
        try:
            adapter.validate_python(row)
        except ValidationError as exc:
            for error in exc.errors(include_url=False, include_context=False):
                errors.append({**error, "loc": (index, *error["loc"])})
            if len(errors) >= ERRORS_KEPT:
                break
    return errors


# Most errors one validation lists (a row with 60,000 unknown keys breaks 60,000 rules).
ERRORS_KEPT = 100


@functools.lru_cache(maxsize=256)
def _list_adapter(signature: Signature) -> TypeAdapter[Any]:
    return TypeAdapter(list[signature.row_model()])  # type: ignore[arg-type,misc]


@functools.lru_cache(maxsize=256)
def _row_adapter(signature: Signature) -> TypeAdapter[Any]:
    return TypeAdapter(signature.row_model())
