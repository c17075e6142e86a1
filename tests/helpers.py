"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from modelport.auth import service as auth_service
from modelport.builtin.wine import TrainedWine, register_wine
from modelport.db.engine import create_engine, create_session_factory
from modelport.services import Services
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store

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


# Names an attacker might put in a path: SQL metacharacters, LIKE wildcards, traversal, NUL.
HOSTILE_NAMES = [
    "x' OR '1'='1",
    "name' --",
    "'; DROP TABLE models; --",
    "wine%",
    "wine_quality",
    "*",
    "../etc",
    "..",
    "..\\..\\windows",
    "wine-quality\x00",
]


def run(coro: Any) -> Any:
    """Run a coroutine from a synchronous test."""
    return asyncio.run(coro)


def register_trained(settings: Settings, trained: TrainedWine, name: str = "wine-quality") -> int:
    """Register ``trained`` in the settings' database and store; returns the version number."""

    async def register() -> int:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                version = await register_wine(session, open_artifact_store(settings), trained, name)
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


# The operators' token every test app accepts for /metrics and /health details.
METRICS_TOKEN = "metrics-token-for-the-tests-0123456789abcdef"
OPERATOR = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def settings_for(var_dir: Path, database_url: str, **overrides: Any) -> Settings:
    """What every test app starts from: quick log flushes, text logs, rate limits out of the way
    (the rate-limit tests set their own), a metrics token for operators."""
    values: dict[str, Any] = {
        "metrics_token": METRICS_TOKEN,
        "var_dir": var_dir,
        "database_url": database_url,
        "prediction_log_flush_seconds": 0.05,
        "log_format": "text",
        "rate_limit_anonymous_per_minute": 1_000_000,
        "rate_limit_user_per_minute": 1_000_000,
        "rate_limit_api_key_per_minute": 1_000_000,
    }
    values.update(overrides)
    return Settings(**values)


def create_account(
    settings: Settings, email: str, password: str = "correct horse battery", role: str = "user"
) -> uuid.UUID:
    """A user straight in the database (the way `modelport users create-admin` makes one)."""

    async def create() -> uuid.UUID:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                user = await auth_service.create_user(session, email, password, role=role)
                await session.commit()
                return user.id
        finally:
            await engine.dispose()

    return uuid.UUID(str(run(create())))


def bearer(
    test_client: TestClient, email: str, password: str = "correct horse battery"
) -> dict[str, str]:
    """Sign in through the API and return the Authorization header for the access token."""
    response = test_client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def admin_headers(test_client: TestClient) -> dict[str, str]:
    """Headers of a freshly created administrator (who may read the whole prediction log)."""
    email = f"admin-{uuid.uuid4().hex[:8]}@example.com"
    create_account(services_of(test_client).settings, email, role="admin")
    return bearer(test_client, email)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds (a hang
    guard while a state is reached, never a performance requirement)."""
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.005)
