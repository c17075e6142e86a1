"""Helpers for the API-key, isolation, rate-limit and hardening tests: users, their keys, and
models and datasets owned by one user."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select, update

from modelport.app import create_app
from modelport.auth.tables import ApiKey
from modelport.builtin.wine import TrainedWine
from modelport.datasets import service as datasets
from modelport.db.engine import create_engine, create_session_factory
from modelport.settings import Settings
from tests.helpers import bearer, create_account, run, services_of, settings_for, wait_until_ready
from tests.registry.support import register_onnx

KEYS = "/api/v1/api-keys"
PREDICTIONS = "/api/v1/predictions"


def sign_up(client: TestClient, role: str = "user") -> tuple[uuid.UUID, dict[str, str]]:
    """A new account (straight in the database) and its Bearer header from a real sign-in."""
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    user_id = create_account(services_of(client).settings, email, role=role)
    return user_id, bearer(client, email)


def create_key(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    """POST /api/v1/api-keys; returns the created key (with its plaintext under ``key``)."""
    body.setdefault("name", "test key")
    response = client.post(KEYS, json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def key_header(key: str) -> dict[str, str]:
    return {"X-API-Key": key}


def register_private_model(
    settings: Settings, trained: TrainedWine, name: str, owner_id: uuid.UUID
) -> int:
    """The wine ONNX model registered again as ``name``, private to ``owner_id``."""
    return register_onnx(settings, trained.onnx_bytes, name, owner_id=owner_id, public=False)


def register_private_dataset(settings: Settings, name: str, owner_id: uuid.UUID) -> None:
    """A three-row dataset private to ``owner_id``."""

    async def register() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                await datasets.register_dataset(
                    session,
                    name=name,
                    columns=[{"name": "secret", "type": "float"}],
                    rows=[{"secret": float(i)} for i in range(3)],
                    splits=[None, None, None],
                    source="upload",
                    sha256=uuid.uuid4().hex * 2,
                    owner_id=owner_id,
                    public=False,
                )
                await session.commit()
        finally:
            await engine.dispose()

    run(register())


def api_key_row(settings: Settings, key_id: str) -> dict[str, Any]:
    """Every column of one api_keys row, read without the app in between."""

    async def read() -> dict[str, Any]:
        engine = create_engine(settings.database_url)
        try:
            async with engine.connect() as connection:
                row = (
                    await connection.execute(
                        select(ApiKey.__table__).where(ApiKey.id == uuid.UUID(key_id))
                    )
                ).one()
                return dict(row._mapping)
        finally:
            await engine.dispose()

    result: dict[str, Any] = run(read())
    return result


def set_key_expiry(settings: Settings, key_id: str, when: datetime) -> None:
    async def write() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with engine.begin() as connection:
                await connection.execute(
                    update(ApiKey).where(ApiKey.id == uuid.UUID(key_id)).values(expires_at=when)
                )
        finally:
            await engine.dispose()

    run(write())


def flush_key_usage(client: TestClient) -> None:
    """Write remembered API-key use now (the app otherwise does it every 30 s)."""
    client.portal.call(services_of(client).key_usage.flush)  # type: ignore[union-attr]


@contextmanager
def more_apps(client: TestClient, base: Path) -> Iterator[Callable[..., TestClient]]:
    """Start further apps on ``client``'s database and artifact store, each with its own var/
    under ``base`` (like replicas on other hosts) and the settings given; stopped on exit."""
    shared = services_of(client).settings

    def start(name: str, **overrides: Any) -> TestClient:
        settings = settings_for(
            base / name, shared.database_url, artifact_store=shared.artifact_store, **overrides
        )
        app_client = stack.enter_context(TestClient(create_app(settings)))
        wait_until_ready(app_client)
        return app_client

    with ExitStack() as stack:
        yield start
