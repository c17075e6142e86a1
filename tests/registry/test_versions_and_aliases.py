"""The registry as it changes: version numbers, the production alias, other aliases."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from modelport.builtin.wine import TrainedWine
from modelport.db.engine import create_engine, create_session_factory
from modelport.errors import NotFoundError
from modelport.registry import service as registry
from modelport.settings import Settings
from tests.helpers import register_trained, run
from tests.registry.support import linear_wine_onnx, point_alias, register_onnx, serve

MODELS = "/api/v1/models"
WINE = f"{MODELS}/wine-quality"


def test_versions_count_up_and_production_moves_to_the_newest(
    client: TestClient, settings: Settings, trained_wine: TrainedWine
) -> None:
    assert register_trained(settings, trained_wine) == 2
    assert register_onnx(settings, linear_wine_onnx({}, bias=6.0)) == 3

    model = client.get(WINE).json()

    assert [v["version"] for v in model["versions"]] == [1, 2, 3]
    assert model["latest_version"] == 3
    assert model["aliases"] == {"production": 3}
    assert model["versions"][0]["sha256"] == model["versions"][1]["sha256"]  # same bytes
    assert model["versions"][2]["sha256"] != model["versions"][1]["sha256"]
    assert client.get(f"{WINE}/versions/2").json()["version"] == 2


def test_aliases_are_listed_where_they_point(
    client: TestClient, settings: Settings, trained_wine: TrainedWine
) -> None:
    register_trained(settings, trained_wine)
    point_alias(settings, "wine-quality", "production", 1)
    point_alias(settings, "wine-quality", "staging", 2)

    detail = client.get(WINE).json()
    listed = client.get(MODELS).json()["items"][0]

    assert detail["aliases"] == {"production": 1, "staging": 2}
    assert listed["aliases"] == {"production": 1, "staging": 2}
    assert detail["latest_version"] == 2


def test_an_alias_cannot_point_at_another_models_version(
    client: TestClient, settings: Settings
) -> None:
    register_onnx(settings, linear_wine_onnx({}, bias=5.0), name="acme-wine")

    async def cross_alias() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                wine = await registry.get_model(session, "wine-quality")
                acme = await registry.get_model(session, "acme-wine")
                await registry.set_alias(session, wine.id, "staging", acme.versions[0].id)
                await session.commit()
        finally:
            await engine.dispose()

    with pytest.raises(NotFoundError, match="version of its own model"):
        run(cross_alias())
    listing = client.get(MODELS)
    assert listing.status_code == 200
    assert [m["aliases"] for m in listing.json()["items"]] == [{"production": 1}] * 2


def test_each_model_numbers_its_own_versions(client: TestClient, settings: Settings) -> None:
    assert register_onnx(settings, linear_wine_onnx({}, bias=5.0), name="acme-wine") == 1
    assert register_onnx(settings, linear_wine_onnx({}, bias=6.0), name="acme-wine") == 2

    items = client.get(MODELS).json()["items"]

    assert [(m["name"], m["latest_version"]) for m in items] == [
        ("acme-wine", 2),
        ("wine-quality", 1),
    ]


def test_empty_registry_lists_nothing(settings: Settings) -> None:

    with serve(settings, wait=False) as client:
        response = client.get(MODELS)

    assert response.status_code == 200
    assert response.json() == {"items": [], "total": 0, "offset": 0, "limit": 100}
