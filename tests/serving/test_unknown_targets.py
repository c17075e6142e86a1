"""Predicting with a model, version or alias that does not exist: a 404 that names it."""

from __future__ import annotations

from collections.abc import Iterator
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from modelport.builtin.wine import TrainedWine
from tests.helpers import WINE_ROW, flush_log
from tests.registry.support import shared_wine_app
from tests.serving.support import GENERIC


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def client(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    trained_wine: TrainedWine,
) -> Iterator[TestClient]:
    """Shared by this module's read-only tests (overrides the per-test ``client``)."""
    yield from shared_wine_app(request, tmp_path_factory, trained_wine)


# Strings an attacker or a confused script might put where a model name goes.
HOSTILE_NAMES = [
    "x' OR '1'='1",
    "wine-quality' --",
    "'; DROP TABLE models; --",
    'wine-quality" OR ""="',
    "%",
    "wine_quality",
    "../etc",
    "..\\..\\etc\\passwd",
    "..",
    "wine-quality\x00",
    "\u2603 snow",
]


def test_unknown_model_is_404_naming_it(client: TestClient) -> None:
    response = client.post("/api/v1/models/no-such-model/predict", json=WINE_ROW)

    assert response.status_code == 404
    assert "no-such-model" in response.json()["detail"]


def test_unknown_version_is_404_naming_it(client: TestClient) -> None:
    response = client.post("/api/v1/models/wine-quality/versions/7/predict", json=WINE_ROW)

    assert response.status_code == 404
    assert "version 7" in response.json()["detail"]
    assert "wine-quality" in response.json()["detail"]


def test_unknown_alias_is_404_naming_it(client: TestClient) -> None:
    response = client.post(f"{GENERIC}?alias=canary", json={"inputs": [WINE_ROW]})

    assert response.status_code == 404
    assert "canary" in response.json()["detail"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_model_names_are_404_not_500(client: TestClient, name: str) -> None:
    response = client.post(f"/api/v1/models/{quote(name, safe='')}/predict", json=WINE_ROW)

    assert response.status_code == 404, response.text
    # The log of that failed call is written like any other, and serving goes on.
    flush_log(client)
    assert client.post(GENERIC, json=WINE_ROW).status_code == 200


@pytest.mark.parametrize("alias", ["x' OR '1'='1", "../production", "production\x00"])
def test_hostile_alias_is_404_not_500(client: TestClient, alias: str) -> None:
    response = client.post(f"{GENERIC}?alias={quote(alias, safe='')}", json=WINE_ROW)

    assert response.status_code == 404
    assert "no alias" in response.json()["detail"]


def test_version_must_be_a_positive_number(client: TestClient) -> None:
    for version in ("0", "-1", "one", "1.5", "99999999999999999999"):
        response = client.post(
            f"/api/v1/models/wine-quality/versions/{version}/predict", json=WINE_ROW
        )
        assert response.status_code == 422, version
        assert response.json()["detail"][0]["loc"] == ["path", "version"]
