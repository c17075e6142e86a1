"""Async engine and session factory for the configured database."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import SecretStr
from sqlalchemy import event, text
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry


def plain_url(url: str | SecretStr) -> str:
    """The URL itself; settings keep it secret (it may hold a password) until a driver needs it."""
    return url.get_secret_value() if isinstance(url, SecretStr) else url


def is_sqlite(url: str | SecretStr) -> bool:
    return plain_url(url).startswith("sqlite")


def create_engine(
    url: str | SecretStr, *, pool_size: int = 10, max_overflow: int = 10
) -> AsyncEngine:
    """Engine tuned per backend: WAL + busy timeout on SQLite, short connect timeout elsewhere
    (with a pool of ``pool_size`` connections, plus ``max_overflow`` under bursts)."""
    url = plain_url(url)
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {"timeout": 5, "command_timeout": 30}
    return create_async_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        connect_args=connect_args,
    )


def _sqlite_pragmas(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def database_is_reachable(engine: AsyncEngine, timeout: float = 2.0) -> bool:  # noqa: ASYNC109
    """True when a trivial query answers within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout), engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
    except Exception:
        return False
    return True
