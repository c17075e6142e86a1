"""The quick row checks decide exactly as the strict Pydantic row model does.

``validate_rows`` accepts rows with plain and numpy checks and asks Pydantic only to word the
errors. Whatever a caller sends, it must accept exactly what Pydantic accepts, hand the model
the same numbers, and report the same errors (the API tests pin the wording).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from modelport.builtin.wine import WINE_SIGNATURE
from modelport.errors import InvalidInputError
from modelport.runtimes.signature import FieldSpec, Signature
from modelport.serving.validation import Rows, validate_rows
from tests.helpers import WINE_ROW

# Integers, a field without bounds, one with a minimum only, and an integer bound where floats
# are too coarse to tell 2**53 from 2**53 + 1: what the wine model lacks.
MIXED_SIGNATURE = Signature(
    task="regression",
    inputs=(
        FieldSpec(name="rooms", type="int", minimum=1, maximum=12),
        FieldSpec(name="area", minimum=10.5, maximum=1000),
        FieldSpec(name="offset"),
        FieldSpec(name="floor", type="int", minimum=-3),
        FieldSpec(name="rate", minimum=0),
        FieldSpec(name="serial", type="int", minimum=0, maximum=2**53),
    ),
    outputs=(FieldSpec(name="price"),),
)
SIGNATURES = {"wine": WINE_SIGNATURE, "mixed": MIXED_SIGNATURE}
ADAPTERS = {
    name: TypeAdapter(list[signature.row_model()])  # type: ignore[misc]
    for name, signature in SIGNATURES.items()
}


def pydantic_verdict(name: str, rows: Rows, dtype: Any) -> np.ndarray | list[Any]:
    """What serving did before: Pydantic decides; the matrix in the model's input type, or
    where each error sits and its kind."""
    try:
        ADAPTERS[name].validate_python(rows.items)
    except ValidationError as exc:
        return [(list(e["loc"]), e["type"]) for e in exc.errors()]
    names = SIGNATURES[name].input_names
    matrix = np.array([[row[field] for field in names] for row in rows.items], dtype=np.float64)
    return np.ascontiguousarray(matrix, dtype=dtype)


def outcome(signature: Signature, rows: Rows, dtype: Any) -> np.ndarray | list[Any]:
    try:
        return validate_rows(signature, rows, dtype)
    except InvalidInputError as exc:
        prefix = len(rows.loc_prefix)
        return [(e["loc"][prefix:], e["type"]) for e in exc.errors]


def near(bound: float | None) -> st.SearchStrategy[Any]:
    """Values at, just inside and just outside a bound."""
    if bound is None:
        return st.nothing()
    return st.sampled_from(
        [bound, math.nextafter(bound, math.inf), math.nextafter(bound, -math.inf)]
        + ([int(bound), int(bound) - 1, int(bound) + 1] if float(bound).is_integer() else [])
    )


def valid(spec: FieldSpec) -> st.SearchStrategy[Any]:
    low = spec.minimum if spec.minimum is not None else -1e6
    high = spec.maximum if spec.maximum is not None else 1e6
    integers = st.integers(math.ceil(low), math.floor(high))
    return integers if spec.type == "int" else st.one_of(st.floats(low, high), integers)


def doubtful(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Edge cases and wrong types: what a careless or hostile caller sends."""
    return st.one_of(
        near(spec.minimum),
        near(spec.maximum),
        st.floats(),  # anywhere, infinities and NaN included
        st.integers(),
        st.sampled_from([2**53, 2**53 + 1, -(2**53) - 1, 10**400, 0.5, 3.0, -0.0]),
        st.booleans(),
        st.none(),
        st.text(max_size=3),
        st.lists(st.floats(0, 1), max_size=1),
        st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    )


@st.composite
def rows_for(draw: st.DrawFn, signature: Signature) -> Rows:
    """Rows that are valid but for a few fields (so the quick checks see every kind of value
    in an otherwise acceptable batch), now and then missing a field or holding an extra."""
    fine = {spec.name: valid(spec) for spec in signature.inputs}
    odd = {spec.name: doubtful(spec) for spec in signature.inputs}
    names = signature.input_names

    def row() -> Any:
        values = {name: draw(strategy) for name, strategy in fine.items()}
        if draw(st.integers(0, 5)) == 0:  # most batches hold one doubtful value or none
            name = draw(st.sampled_from(names))
            values[name] = draw(odd[name])
        if draw(st.integers(0, 19)) == 0:
            values.pop(draw(st.sampled_from(names)))
        if draw(st.integers(0, 19)) == 0:
            values[draw(st.sampled_from(["extra", "Rooms", "alcohol_"]))] = 1.0
        if draw(st.integers(0, 49)) == 0:
            return draw(st.sampled_from([None, 5, "row", [1.0]]))
        return values

    count = draw(st.integers(1, 6))  # both sides of the few-rows path
    return Rows([row() for _ in range(count)], ("body", "inputs"), indexed=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", SIGNATURES)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_quick_checks_accept_exactly_what_pydantic_accepts(
    name: str, dtype: Any, data: st.DataObject
) -> None:
    signature = SIGNATURES[name]
    rows = data.draw(rows_for(signature))

    got = outcome(signature, rows, dtype)
    expected = pydantic_verdict(name, rows, dtype)

    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray), got
        assert got.dtype == np.dtype(dtype)
        assert np.array_equal(got, expected)
    else:
        assert got == expected


def test_a_value_float32_would_round_into_bounds_is_still_refused() -> None:
    just_over = math.nextafter(16.0, math.inf)  # float32(just_over) == 16.0, the maximum
    rows = Rows([{**WINE_ROW, "alcohol": just_over}], ("body",), indexed=False)

    with pytest.raises(InvalidInputError) as refused:
        validate_rows(WINE_SIGNATURE, rows, np.float32)

    assert refused.value.errors[0]["loc"] == ["body", "alcohol"]
    assert refused.value.errors[0]["type"] == "less_than_equal"


@pytest.mark.parametrize("count", [1, 6])  # checked in Python, and with numpy
def test_an_integer_floats_cannot_tell_from_its_bound_is_still_refused(count: int) -> None:
    row = {"rooms": 3, "area": 20.0, "offset": 0.0, "floor": 0, "rate": 1.0, "serial": 7}
    items = [dict(row) for _ in range(count)]
    items[-1]["serial"] = 2**53 + 1  # float(2**53 + 1) == 2**53, the maximum
    rows = Rows(items, ("body", "inputs"), indexed=True)

    with pytest.raises(InvalidInputError) as refused:
        validate_rows(MIXED_SIGNATURE, rows)

    assert refused.value.errors[0]["loc"] == ["body", "inputs", count - 1, "serial"]


def test_matrix_is_built_in_the_model_input_type() -> None:
    rows = Rows([WINE_ROW, {**WINE_ROW, "alcohol": 12}], ("body", "inputs"), indexed=True)

    matrix = validate_rows(WINE_SIGNATURE, rows, np.float32)

    assert matrix.dtype == np.float32
    assert matrix.flags.c_contiguous
    assert matrix.tolist() == [
        [float(np.float32(v)) for v in WINE_ROW.values()],
        [float(np.float32(v)) for v in {**WINE_ROW, "alcohol": 12.0}.values()],
    ]
