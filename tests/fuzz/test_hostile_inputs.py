"""Hostile input found by fuzzing and by hand: each is answered 4xx with a message naming what is
wrong (these answered 500 before), on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.builtin.wine import TrainedWine
from tests.helpers import WINE_ROW, admin_headers, bearer, create_account, flush_log, services_of
from tests.registry.support import shared_wine_app

PREDICTIONS = "/api/v1/predictions"
# Python's csv module refuses a field longer than this (its default limit).
CSV_FIELD_LIMIT = 128 * 1024


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def client(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    trained_wine: TrainedWine,
) -> Iterator[TestClient]:
    """One app per database for the module: nothing here changes what another test reads."""
    yield from shared_wine_app(request, tmp_path_factory, trained_wine)


@pytest.fixture(scope="module")
def user(client: TestClient) -> dict[str, str]:
    email = f"hostile-{uuid.uuid4().hex[:8]}@example.com"
    create_account(services_of(client).settings, email)
    return bearer(client, email)


@pytest.fixture(scope="module")
def admin(client: TestClient) -> dict[str, str]:
    return admin_headers(client)


def problem(response: Any) -> str:
    """The message of an error answer, whichever shape its detail has."""
    detail = response.json()["detail"]
    return detail if isinstance(detail, str) else detail[0]["msg"]


# --- the prediction log's time filters -------------------------------------------------------


@pytest.mark.parametrize(
    ("parameter", "moment"),
    [
        # Midnight of 1 January year 1 at +14:00 is 10:00 on 31 December of year 0 in UTC.
        ("since", "0001-01-01T00:00:00+14:00"),
        ("until", "0001-01-01T00:00:00+14:00"),
        # The last second of year 9999 at -14:00 is in year 10000 in UTC.
        ("since", "9999-12-31T23:59:59-14:00"),
        ("until", "9999-12-31T23:59:59-14:00"),
    ],
)
def test_a_time_that_leaves_the_calendar_in_utc_is_422_naming_the_parameter(
    client: TestClient, admin: dict[str, str], parameter: str, moment: str
) -> None:
    response = client.get(PREDICTIONS, params={parameter: moment}, headers=admin)

    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["query", parameter]
    assert "outside the years 1 to 9999 once converted to UTC" in error["msg"]


def test_the_first_and_last_moments_in_utc_still_filter(
    client: TestClient, admin: dict[str, str]
) -> None:
    answered = client.post("/predict", json=WINE_ROW, headers=admin)
    assert answered.status_code == 200
    flush_log(client)
    page = client.get(
        PREDICTIONS,
        params={"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59Z"},
        headers=admin,
    )
    assert page.status_code == 200, page.text
    assert answered.headers["x-request-id"] in [i["request_id"] for i in page.json()["items"]]


@pytest.mark.parametrize("number", ["0.5", "1717000000", "-1"])
def test_a_number_is_not_taken_for_a_time(
    client: TestClient, admin: dict[str, str], number: str
) -> None:
    response = client.get(PREDICTIONS, params={"until": number}, headers=admin)

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", "until"]
    assert "ISO-8601" in problem(response)


# --- CSV uploads -----------------------------------------------------------------------------


def _long_field_csv(length: int) -> bytes:
    return b"size,note\n1,short\n2," + b"x" * length + b"\n"


def test_a_csv_value_over_the_field_limit_is_400_naming_the_line(
    client: TestClient, user: dict[str, str]
) -> None:
    response = client.post(
        "/api/v1/datasets",
        files={"file": ("long.csv", _long_field_csv(CSV_FIELD_LIMIT + 1), "text/csv")},
        data={"name": f"long-{uuid.uuid4().hex[:6]}"},
        headers=user,
    )

    assert response.status_code == 400, response.text
    assert problem(response) == (
        f"the CSV cannot be read at line 3: a value is longer than {CSV_FIELD_LIMIT} characters"
    )


def test_a_csv_value_just_under_the_field_limit_is_stored(
    client: TestClient, user: dict[str, str]
) -> None:
    response = client.post(
        "/api/v1/datasets",
        files={"file": ("long.csv", _long_field_csv(CSV_FIELD_LIMIT - 1), "text/csv")},
        data={"name": f"long-{uuid.uuid4().hex[:6]}"},
        headers=user,
    )

    assert response.status_code == 201, response.text
    assert response.json()["row_count"] == 2


def test_a_training_csv_over_the_field_limit_is_400(
    client: TestClient, user: dict[str, str]
) -> None:
    response = client.post(
        f"/api/v1/models/long-{uuid.uuid4().hex[:6]}/train",
        files={"file": ("long.csv", _long_field_csv(CSV_FIELD_LIMIT + 1), "text/csv")},
        data={"algorithm": "ridge", "target": "size"},
        headers=user,
    )

    assert response.status_code == 400, response.text
    assert "a value is longer than" in problem(response)


# --- model files -----------------------------------------------------------------------------

DEPTH = 200_000


@pytest.mark.parametrize(
    ("document", "flavor"),
    [
        (b'{"learner": ' + b"[" * DEPTH + b"]" * DEPTH + b"}", None),
        (b'{"learner": ' + b"[" * DEPTH + b"]" * DEPTH + b"}", "xgboost"),
        (b'{ "a": ' + b'{"b": ' * DEPTH + b"1" + b"}" * DEPTH + b"}", None),
    ],
    ids=["xgboost-looking", "declared-xgboost", "other-json"],
)
def test_json_nested_far_too_deep_is_400_and_the_server_keeps_serving(
    client: TestClient, user: dict[str, str], document: bytes, flavor: str | None
) -> None:
    name = f"deep-{uuid.uuid4().hex[:6]}"
    created = client.post("/api/v1/models", json={"name": name, "task": "regression"}, headers=user)
    assert created.status_code == 201, created.text

    response = client.post(
        f"/api/v1/models/{name}/versions",
        files={"file": ("model.json", document, "application/json")},
        data={"flavor": flavor} if flavor else {},
        headers=user,
    )

    assert response.status_code == 400, response.text
    assert "nested too deeply" in problem(response)
    assert client.post("/predict", json=WINE_ROW).status_code == 200


# --- sample data -----------------------------------------------------------------------------


@pytest.mark.parametrize("features", [1, 2, 50])
def test_sample_data_has_one_coefficient_per_feature(client: TestClient, features: int) -> None:
    response = client.get("/api/v1/ml/sample-data", params={"features": features, "n": 10})

    assert response.status_code == 200, response.text
    sample = response.json()
    assert len(sample["coefficients"]) == features
    assert sample["feature_names"] == [f"x{i}" for i in range(features)]
    assert all(len(row) == features for row in sample["X"])


# --- methods a path does not serve -----------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("OPTIONS", "/api/v1/models", "GET, POST"),
        ("PUT", "/api/v1/models/wine-quality", "DELETE, GET, PATCH"),
        ("DELETE", "/api/v1/api-keys", "GET, POST"),
    ],
)
def test_a_405_names_every_method_the_path_serves(
    client: TestClient, method: str, path: str, allowed: str
) -> None:
    response = client.request(method, path)

    assert response.status_code == 405
    assert response.headers["allow"] == allowed


# --- NUL characters in free text ---------------------------------------------------------------


def _nul_requests(name: str) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """Free text that reaches a text or JSON column, each with a NUL character inside."""
    return {
        "new model description": (
            "POST",
            "/api/v1/models",
            {"name": name, "task": "regression", "description": "red\x00wine"},
        ),
        "model description": ("PATCH", f"/api/v1/models/{name}", {"description": "dry\x00"}),
        "version description": (
            "PATCH",
            "/api/v1/models/wine-quality/versions/1",
            {"description": "\x00"},
        ),
    }


@pytest.mark.parametrize("field", list(_nul_requests("x")))
def test_a_nul_character_in_free_text_is_422_on_postgresql(
    client: TestClient, user: dict[str, str], admin: dict[str, str], field: str
) -> None:
    name = f"nul-{uuid.uuid4().hex[:6]}"
    if field == "model description":
        created = client.post(
            "/api/v1/models", json={"name": name, "task": "regression"}, headers=user
        )
        assert created.status_code == 201, created.text
    method, path, body = _nul_requests(name)[field]
    caller = admin if "versions" in path else user

    response = client.request(method, path, json=body, headers=caller)

    if services_of(client).settings.database_url.get_secret_value().startswith("postgresql"):
        # PostgreSQL text and JSON cannot hold NUL: the caller is told so, not given a 500.
        assert response.status_code == 422, response.text
        assert problem(response) == (
            "text cannot hold the NUL character (\\u0000); "
            "remove it from the request and send it again"
        )
    else:
        assert response.status_code in (200, 201), response.text  # SQLite stores it as sent
    assert client.post("/predict", json=WINE_ROW).status_code == 200
