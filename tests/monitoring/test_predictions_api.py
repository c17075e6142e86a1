"""GET /api/v1/predictions: browse the prediction log, newest first, filtered and paged."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from tests.helpers import WINE_ROW, admin_headers, flush_log

LIST = "/api/v1/predictions"


@pytest.fixture(autouse=True)
def as_admin(client: TestClient) -> None:
    """Administrators read the whole log (per-user visibility is tested in tests/auth)."""
    client.headers.update(admin_headers(client))


@pytest.fixture
def logged(client: TestClient) -> list[str]:
    """Five predictions, oldest first: three answered, one invalid, one for an unknown model."""
    responses = [
        client.post("/predict", json=WINE_ROW),
        client.post("/predict", json={**WINE_ROW, "ph": -1}),
        client.post("/predict", json=WINE_ROW),
        client.post("/api/v1/models/other-model/predict", json=WINE_ROW),
        client.post("/predict", json=WINE_ROW),
    ]
    assert [r.status_code for r in responses] == [200, 422, 200, 404, 200]
    flush_log(client)
    return [r.headers["x-request-id"] for r in responses]


def listing(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get(LIST, params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def request_ids(page: dict[str, Any]) -> list[str]:
    return [item["request_id"] for item in page["items"]]


def test_lists_every_prediction_newest_first(client: TestClient, logged: list[str]) -> None:
    page = listing(client)
    assert request_ids(page) == logged[::-1]
    assert page["total"] == 5


def test_pages_cover_the_log_once_with_the_total_on_each(
    client: TestClient, logged: list[str]
) -> None:
    pages = [listing(client, offset=offset, limit=2) for offset in (0, 2, 4)]
    assert [request_ids(page) for page in pages] == [
        logged[4:2:-1],
        logged[2:0:-1],
        logged[0:1],
    ]
    assert {(page["total"], page["limit"]) for page in pages} == {(5, 2)}
    assert [page["offset"] for page in pages] == [0, 2, 4]
    assert listing(client, offset=10)["items"] == []


def test_filters_by_model_and_status(client: TestClient, logged: list[str]) -> None:
    wine = listing(client, model="wine-quality")
    assert request_ids(wine) == [logged[4], logged[2], logged[1], logged[0]]
    assert wine["total"] == 4

    assert request_ids(listing(client, model="other-model")) == [logged[3]]
    assert request_ids(listing(client, status="invalid_input")) == [logged[1]]
    assert request_ids(listing(client, status="error")) == [logged[3]]
    succeeded = listing(client, status="success", model="wine-quality", limit=1)
    assert (request_ids(succeeded), succeeded["total"]) == ([logged[4]], 3)


def test_since_is_inclusive_and_until_exclusive(client: TestClient, logged: list[str]) -> None:
    created = {item["request_id"]: item["created_at"] for item in listing(client)["items"]}
    middle = created[logged[2]]

    assert request_ids(listing(client, since=middle)) == [logged[4], logged[3], logged[2]]
    assert request_ids(listing(client, until=middle)) == [logged[1], logged[0]]
    window = listing(client, since=created[logged[1]], until=created[logged[3]])
    assert request_ids(window) == [logged[2], logged[1]]
    assert window["total"] == 2


def test_a_time_without_a_zone_is_read_as_utc(client: TestClient, logged: list[str]) -> None:
    newest = datetime.fromisoformat(listing(client)["items"][0]["created_at"])
    naive = newest.replace(tzinfo=None).isoformat()
    assert request_ids(listing(client, since=naive)) == [logged[4]]
    assert request_ids(listing(client, until=naive)) == logged[3::-1]


def test_one_prediction_by_id(client: TestClient, logged: list[str]) -> None:
    listed = listing(client, status="invalid_input")["items"][0]
    response = client.get(f"{LIST}/{listed['id']}")
    assert response.status_code == 200
    assert response.json() == listed
    assert response.json()["request_id"] == logged[1]


def test_an_unknown_id_is_404(client: TestClient) -> None:
    response = client.get(f"{LIST}/00000000-0000-4000-8000-000000000000")
    assert response.status_code == 404
    assert "not found" in response.json()["detail"]


MALFORMED: list[tuple[str, dict[str, Any]]] = [
    (f"{LIST}/not-a-uuid", {}),
    (LIST, {"status": "exploded"}),
    (LIST, {"since": "yesterday"}),
    (LIST, {"limit": 0}),
    (LIST, {"limit": 501}),
    (LIST, {"offset": -1}),
    (LIST, {"model": "m" * 129}),
]


def test_malformed_queries_are_422_naming_the_parameter(client: TestClient) -> None:
    for path, params in MALFORMED:
        response = client.get(path, params=params)
        assert response.status_code == 422, (path, params)
        assert response.json()["detail"][0]["loc"][0] in {"path", "query"}, (path, params)


SQL_METACHARACTERS = [
    "wine-quality' OR '1'='1",
    "'; DROP TABLE predictions; --",
    '" OR 1=1 --',
    "%",
    "wine%",
    "_ine-quality",
    "\\",
]


def test_sql_metacharacters_in_filters_are_plain_text(
    client: TestClient, logged: list[str]
) -> None:
    for model in SQL_METACHARACTERS:
        page = listing(client, model=model)
        assert (page["items"], page["total"]) == ([], 0), model
    assert listing(client)["total"] == 5  # the table is still there, untouched


def test_a_model_name_full_of_metacharacters_matches_itself_only(client: TestClient) -> None:
    weird = "o'brien\"; DROP TABLE predictions; --%_"
    response = client.post(f"/api/v1/models/{quote(weird, safe='')}/predict", json=WINE_ROW)
    assert response.status_code == 404
    client.post("/predict", json=WINE_ROW)
    flush_log(client)

    page = listing(client, model=weird)
    assert request_ids(page) == [response.headers["x-request-id"]]
    assert page["items"][0]["model_name"] == weird
    assert listing(client)["total"] == 2
