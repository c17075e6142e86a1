"""Helpers for the account, token, administration and CLI tests."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from modelport.app import create_app
from modelport.auth.tables import User
from modelport.db.engine import create_engine
from modelport.settings import Settings
from tests.helpers import run

AUTH = "/api/v1/auth"
USERS = "/api/v1/users"
PASSWORD = "correct horse battery"  # what tests.helpers.create_account gives everyone


def new_email(prefix: str = "user") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}@example.com"


@contextmanager
def started(settings: Settings) -> Iterator[TestClient]:
    """The app on ``settings``, started, with no model registered (accounts need none)."""
    with TestClient(create_app(settings)) as client:
        yield client


def from_address(client: TestClient, host: str) -> TestClient:
    """A second client on the same started app whose requests come from ``host``."""
    other = TestClient(client.app, client=(host, 50000))
    other.portal = client.portal  # share the running app's event loop (and its services)
    return other


def login(client: TestClient, email: str, password: str = PASSWORD) -> dict[str, Any]:
    """Sign in through the API; returns the token pair."""
    response = client.post(f"{AUTH}/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    pair: dict[str, Any] = response.json()
    return pair


def bearer_of(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}"}


def user_row(settings: Settings, email: str) -> dict[str, Any] | None:
    """The users row for ``email`` exactly as stored, read without the app in between."""

    async def read() -> dict[str, Any] | None:
        engine = create_engine(settings.database_url)
        try:
            async with engine.connect() as connection:
                row = (
                    await connection.execute(select(User.__table__).where(User.email == email))
                ).first()
                return dict(row._mapping) if row is not None else None
        finally:
            await engine.dispose()

    result: dict[str, Any] | None = run(read())
    return result


def user_count(settings: Settings) -> int:
    async def count() -> int:
        engine = create_engine(settings.database_url)
        try:
            async with engine.connect() as connection:
                return len((await connection.execute(select(User.id))).all())
        finally:
            await engine.dispose()

    return int(run(count()))
