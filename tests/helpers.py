"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi.testclient import TestClient

from modelport.builtin.wine import TrainedWine, register_wine
from modelport.db.engine import create_engine, create_session_factory
from modelport.registry.artifacts import open_artifact_store
from modelport.services import Services
from modelport.settings import Settings

WINE_ROW: dict[str, float] = {
    "fixed_acidity": 7.4,
    "volatile_acidity": 0.7,
    "citric_acid": 0.0,
    "residual_sugar": 1.9,
    "chlorides": 0.076,
    "free_sulfur_dioxide": 11.0,
    "total_sulfur_dioxide": 34.0,
    "density": 0.9978,
    "ph": 3.51,
    "sulphates": 0.56,
    "alcohol": 9.4,
}


def run(coro: Any) -> Any:
    """Run a coroutine from a synchronous test."""
    return asyncio.run(coro)


def register_trained(settings: Settings, trained: TrainedWine, name: str = "wine-quality") -> int:
    """Register ``trained`` in the settings' database and store; returns the version number."""

    async def register() -> int:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                version = await register_wine(
                    session, open_artifact_store(settings.artifact_store), trained, name
                )
                await session.commit()
                return version.version
        finally:
            await engine.dispose()

    return int(run(register()))


def wait_until_ready(test_client: TestClient, timeout: float = 30.0) -> None:
    services = services_of(test_client)

    async def models_loaded() -> None:
        async with asyncio.timeout(timeout):
            while not services.models.loaded():
                await asyncio.sleep(0.02)

    test_client.portal.call(models_loaded)  # type: ignore[union-attr]


def services_of(test_client: TestClient) -> Services:
    services: Services = test_client.app.state.services  # type: ignore[attr-defined]
    return services


def flush_log(test_client: TestClient) -> None:
    """Write every buffered prediction-log row now (instead of waiting for the writer)."""
    test_client.portal.call(services_of(test_client).prediction_log.flush)  # type: ignore[union-attr]
