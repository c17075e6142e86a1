"""Helpers shared by tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.auth import service as auth_service
from modelport.builtin.wine import TrainedWine, register_wine
from modelport.db.engine import create_engine, create_session_factory
from modelport.monitoring.logs import configure_logging
from modelport.services import Services
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from tests.processes import free_port

SERVER_DEADLINE_SECONDS = 60.0  # a hang guard, not a performance requirement

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

    async def models_loaded() -> bool:
        return bool(services.models.loaded())

    test_client.portal.call(  # type: ignore[union-attr]
        wait_until_async, models_loaded, "the models to load", timeout, 0.02
    )


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


def wait_until(
    condition: Callable[[], bool], what: str, timeout: float = 60.0, interval: float = 0.005
) -> float:
    """Poll ``condition`` every ``interval`` seconds until it holds; fail naming ``what`` after
    ``timeout`` seconds (a hang guard while a state is reached, never a performance
    requirement). Returns the seconds it took, for a test that reports them."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"never happened within {timeout:g} s: {what}")
        time.sleep(interval)
    return time.monotonic() - started


async def wait_until_async(
    condition: Callable[[], Awaitable[bool]],
    what: str,
    within: float = 60.0,
    interval: float = 0.05,
) -> float:
    """``wait_until`` for a test already inside an event loop; fails after ``within`` seconds
    (a look that hangs counts too)."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(within):
            while not await condition():
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"never happened within {within:g} s: {what}") from None
    return time.monotonic() - started


@contextmanager
def json_log_stream(level: str = "info") -> Iterator[io.StringIO]:
    """The JSON log format switched on; yields the stream its lines are written to.

    The handler configure_logging installs is kept (its format and request-id filter are what
    is tested); only its stream is pointed at a buffer instead of stderr.
    """
    root = logging.getLogger()
    access = logging.getLogger("uvicorn.access")
    saved = (list(root.handlers), root.level, access.disabled)
    configure_logging(level, "json")
    [handler] = root.handlers
    assert isinstance(handler, logging.StreamHandler)
    stream = io.StringIO()
    handler.setStream(stream)
    try:
        yield stream
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        access.disabled = saved[2]


def read_json_lines(stream: io.StringIO) -> list[dict[str, Any]]:
    """The JSON log lines written to ``stream`` since the last read."""
    text = stream.getvalue()
    stream.seek(0)
    stream.truncate()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@contextmanager
def live_server(settings: Settings, ready_path: str = "/health/ready") -> Iterator[int]:
    """The app behind a real uvicorn on a free port (in a thread), once ``ready_path`` answers
    200; yields the port."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        loop="asyncio",
        log_level="warning",
        log_config=None,  # keep uvicorn off handlers bound to a stream pytest later closes
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()

    def ready() -> bool:
        if not thread.is_alive():
            raise RuntimeError("the test server stopped during start-up")
        try:
            return httpx.get(f"http://127.0.0.1:{port}{ready_path}", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, "the test server to be ready", SERVER_DEADLINE_SECONDS, interval=0.05)
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=SERVER_DEADLINE_SECONDS)
