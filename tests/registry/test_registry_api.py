"""Browsing the registry over HTTP: models, versions, aliases, and what is not there."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from modelport.builtin.wine import FEATURE_NAMES, TrainedWine
from tests.helpers import HOSTILE_NAMES
from tests.registry.support import shared_wine_app

MODELS = "/api/v1/models"
WINE = f"{MODELS}/wine-quality"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def client(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    trained_wine: TrainedWine,
) -> Iterator[TestClient]:
    """Shared by this module's read-only tests (overrides the per-test ``client``)."""
    yield from shared_wine_app(request, tmp_path_factory, trained_wine)


def assert_recent(stamp: str) -> None:
    moment = datetime.fromisoformat(stamp)
    assert moment.tzinfo is not None
    assert datetime.now(UTC) - timedelta(hours=1) < moment <= datetime.now(UTC)


def assert_is_the_wine_version(version: dict[str, Any], trained: TrainedWine) -> None:
    assert version["version"] == 1
    assert version["flavor"] == "onnx"
    assert version["status"] == "ready"
    assert version["sha256"] == hashlib.sha256(trained.onnx_bytes).hexdigest()
    assert version["size_bytes"] == len(trained.onnx_bytes)
    signature = version["signature"]
    assert signature["task"] == "regression"
    assert [field["name"] for field in signature["inputs"]] == FEATURE_NAMES
    assert [field["name"] for field in signature["outputs"]] == ["predicted_quality"]
    alcohol = signature["inputs"][FEATURE_NAMES.index("alcohol")]
    assert (alcohol["minimum"], alcohol["maximum"], alcohol["unit"]) == (8, 16, "% vol")
    metrics = version["metrics"]
    assert metrics["holdout_mae"] == pytest.approx(trained.metrics["holdout_mae"])
    assert metrics["holdout_r2"] == pytest.approx(trained.metrics["holdout_r2"])
    assert 0 < metrics["holdout_mae"] < 1
    assert 0 < metrics["holdout_r2"] < 1
    assert version["details"]["training_dataset"] == "winequality-red"
    assert_recent(version["created_at"])


def test_list_models(client: TestClient) -> None:
    response = client.get(MODELS)

    assert response.status_code == 200
    (model,) = response.json()["items"]
    assert model["name"] == "wine-quality"
    assert model["task"] == "regression"
    assert "wine" in model["description"]
    assert model["latest_version"] == 1
    assert model["aliases"] == {"production": 1}
    assert_recent(model["created_at"])


def test_model_detail_shows_versions_and_aliases(
    client: TestClient, trained_wine: TrainedWine
) -> None:
    response = client.get(WINE)

    assert response.status_code == 200
    model = response.json()
    assert model["name"] == "wine-quality"
    assert model["aliases"] == {"production": 1}
    (version,) = model["versions"]
    assert_is_the_wine_version(version, trained_wine)


def test_one_version(client: TestClient, trained_wine: TrainedWine) -> None:
    response = client.get(f"{WINE}/versions/1")

    assert response.status_code == 200
    assert_is_the_wine_version(response.json(), trained_wine)


@pytest.mark.parametrize(
    ("path", "named"),
    [
        (f"{MODELS}/no-such-model", "no-such-model"),
        (f"{MODELS}/no-such-model/versions/1", "no-such-model"),
        (f"{WINE}/versions/2", "version 2"),
        (f"{WINE}/versions/99999999999999", "version 99999999999999"),
    ],
)
def test_unknown_model_or_version_is_404_naming_it(
    client: TestClient, path: str, named: str
) -> None:
    response = client.get(path)

    assert response.status_code == 404
    assert named in response.json()["detail"]


@pytest.mark.parametrize("version", ["0", "-3", "latest", "1.5"])
def test_version_must_be_a_positive_number(client: TestClient, version: str) -> None:
    response = client.get(f"{WINE}/versions/{version}")

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "version"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_404_and_harm_nothing(client: TestClient, name: str) -> None:
    for suffix in ("", "/versions/1"):
        response = client.get(f"{MODELS}/{quote(name, safe='')}{suffix}")
        assert response.status_code == 404, (suffix, response.text)

    assert [m["name"] for m in client.get(MODELS).json()["items"]] == ["wine-quality"]
