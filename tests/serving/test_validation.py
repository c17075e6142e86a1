"""Bad prediction inputs: always a 4xx whose ``detail`` names the field (loc) and the rule (msg).

The app is shared by the module (one per database backend): rejected requests change nothing
but the prediction log, and starting an app per case would dominate the run time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.builtin.wine import TrainedWine
from tests.helpers import WINE_ROW, flush_log
from tests.registry.support import shared_wine_app
from tests.serving.support import GENERIC, WINE, assert_names, raw

BOTH = (WINE, GENERIC)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def client(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    trained_wine: TrainedWine,
) -> Iterator[TestClient]:
    """Shared by this module's tests (overrides the per-test ``client``)."""
    yield from shared_wine_app(request, tmp_path_factory, trained_wine)


def without(name: str) -> dict[str, Any]:
    return {k: v for k, v in WINE_ROW.items() if k != name}


def row(**changes: Any) -> dict[str, Any]:
    return {**WINE_ROW, **changes}


def post(client: TestClient, url: str, body: bytes) -> Any:
    response = client.post(url, content=body, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    return response


GE, LE = "greater than or equal to", "less than or equal to"
NUMBER, EXTRA, REQUIRED = "valid number", "Extra inputs are not permitted", "Field required"

# id: (row sent, field the error must name, words of the rule it must state)
FIELD_CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    "missing": (without("alcohol"), "alcohol", REQUIRED),
    "missing-first": (without("fixed_acidity"), "fixed_acidity", REQUIRED),
    "string": (row(alcohol="9.4"), "alcohol", NUMBER),
    "empty-string": (row(ph=""), "ph", NUMBER),
    "bool": (row(alcohol=True), "alcohol", NUMBER),
    "null": (row(density=None), "density", NUMBER),
    "list": (row(sulphates=[0.56]), "sulphates", NUMBER),
    "object": (row(chlorides={"v": 0.07}), "chlorides", NUMBER),
    "negative": (row(fixed_acidity=-0.1), "fixed_acidity", f"{GE} 0"),
    "below-min-alcohol": (row(alcohol=7.99), "alcohol", f"{GE} 8"),
    "below-min-ph": (row(ph=1.5), "ph", f"{GE} 2"),
    "below-min-density": (row(density=0.5), "density", f"{GE} 0.9"),
    "above-max-alcohol": (row(alcohol=16.01), "alcohol", f"{LE} 16"),
    "above-max-ph": (row(ph=14), "ph", f"{LE} 5"),
    "above-max-density": (row(density=1.5), "density", f"{LE} 1.1"),
    "above-max-so2": (row(total_sulfur_dioxide=401), "total_sulfur_dioxide", f"{LE} 400"),
    "huge": (row(citric_acid=1e300), "citric_acid", f"{LE} 1.5"),
    "extra": (row(colour="red"), "colour", EXTRA),
    "wrong-case": (row(Alcohol=9.4), "Alcohol", EXTRA),
}


@pytest.mark.parametrize("url", BOTH)
@pytest.mark.parametrize("case", FIELD_CASES)
def test_bad_field_is_named_with_its_rule(client: TestClient, url: str, case: str) -> None:
    sent, field, rule = FIELD_CASES[case]

    response = post(client, url, raw(sent))

    assert response.status_code == 422
    assert_names(response.json()["detail"], ["body", field], rule)


BODY_CASES = [
    pytest.param(b"", "empty", id="empty"),
    pytest.param(b"  \n ", "empty", id="whitespace"),
    pytest.param(b"alcohol=9.4&ph=3.5", "invalid JSON", id="form-encoded"),
    pytest.param(b'{"alcohol": 9.4', "invalid JSON", id="truncated"),
    pytest.param(raw(WINE_ROW).replace(b"9.4", b"NaN"), "invalid JSON", id="NaN"),
    pytest.param(raw(WINE_ROW).replace(b"9.4", b"Infinity"), "invalid JSON", id="Infinity"),
    pytest.param(raw(WINE_ROW).replace(b"9.4", b"-Infinity"), "invalid JSON", id="-Infinity"),
    pytest.param(raw(WINE_ROW).replace(b"9.4", b"1e400"), "invalid JSON", id="1e400"),
    pytest.param(b"[" * 5000 + b"]" * 5000, "invalid JSON", id="deeply-nested"),
    pytest.param(raw([WINE_ROW]), "JSON object", id="top-level-array"),
    pytest.param(b'"9.4"', "JSON object", id="top-level-string"),
    pytest.param(b"null", "JSON object", id="top-level-null"),
]


@pytest.mark.parametrize("url", BOTH)
@pytest.mark.parametrize(("body", "rule"), BODY_CASES)
def test_unusable_body_is_rejected(client: TestClient, url: str, body: bytes, rule: str) -> None:
    response = post(client, url, body)

    assert response.status_code == 422
    assert_names(response.json()["detail"], ["body"], rule)


# id: (body sent to the generic endpoint, loc the error must have, words of the rule)
BATCH_CASES: dict[str, tuple[Any, list[Any], str]] = {
    "empty-inputs": ({"inputs": []}, ["body", "inputs"], "non-empty list"),
    "inputs-string": ({"inputs": "rows"}, ["body", "inputs"], "list"),
    "inputs-null": ({"inputs": None}, ["body", "inputs"], "list"),
    "extra-key": ({"inputs": [WINE_ROW], "model": "x"}, ["body", "model"], EXTRA),
    "row-not-object": ({"inputs": [WINE_ROW, 5]}, ["body", "inputs", 1], "dictionary"),
    "second-row": ({"inputs": [WINE_ROW, row(ph=9)]}, ["body", "inputs", 1, "ph"], f"{LE} 5"),
    "first-row": ({"inputs": [without("ph")]}, ["body", "inputs", 0, "ph"], REQUIRED),
    "single-under-inputs": ({"inputs": row(alcohol="x")}, ["body", "inputs", "alcohol"], NUMBER),
}


@pytest.mark.parametrize("case", BATCH_CASES)
def test_bad_batch_names_the_row_and_field(client: TestClient, case: str) -> None:
    payload, loc, rule = BATCH_CASES[case]

    response = post(client, GENERIC, raw(payload))

    assert response.status_code == 422
    assert_names(response.json()["detail"], loc, rule)


def test_wine_endpoint_takes_one_flat_object_not_inputs(client: TestClient) -> None:
    response = post(client, WINE, raw({"inputs": [WINE_ROW]}))

    detail = response.json()["detail"]
    assert_names(detail, ["body", "inputs"], EXTRA)
    assert_names(detail, ["body", "alcohol"], REQUIRED)


def test_every_broken_field_of_a_row_is_reported(client: TestClient) -> None:
    body = raw({**without("ph"), "alcohol": 99, "density": "heavy", "colour": "red"})

    detail = post(client, WINE, body).json()["detail"]

    assert_names(detail, ["body", "ph"], REQUIRED)
    assert_names(detail, ["body", "alcohol"], f"{LE} 16")
    assert_names(detail, ["body", "density"], NUMBER)
    assert_names(detail, ["body", "colour"], EXTRA)


def test_valid_request_still_works_after_rejections(client: TestClient) -> None:
    for body in (b"", b"NaN", raw([WINE_ROW]), raw(row(alcohol=99))):
        post(client, WINE, body)

    response = client.post(WINE, json=WINE_ROW)

    assert response.status_code == 200


def test_rejected_request_with_nul_characters_is_logged_and_serving_goes_on(
    client: TestClient,
) -> None:
    response = post(client, GENERIC, raw({"inputs": [row(**{"a\x00b": "\x00"})]}))

    assert_names(response.json()["detail"], ["body", "inputs", 0, "a\x00b"], EXTRA)
    flush_log(client)  # raises if the database refused the logged row
    assert client.post(WINE, json=WINE_ROW).status_code == 200
