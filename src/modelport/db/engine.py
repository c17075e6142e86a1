"""Async engine and session factory for the configured database."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import SecretStr
from sqlalchemy import event, text
from sqlalchemy.engine.interfaces import DBAPIConnection, ExceptionContext
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import ConnectionPoolEntry

from modelport.errors import InvalidInputError

# SQLSTATEs PostgreSQL answers for a NUL character (U+0000) in a text value (22021) or in a
# JSON string (22P05): it can hold neither, whatever column or route the text came through.
_NUL_SQLSTATES = frozenset({"22021", "22P05"})
NUL_IN_TEXT = (
    "text cannot hold the NUL character (\\u0000); remove it from the request and send it again"
)


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
    engine = create_async_engine(
        url,
        pool_pre_ping=True,
        pool_size=pool_size,
        max_overflow=max_overflow,
        connect_args=connect_args,
    )
    event.listen(engine.sync_engine, "handle_error", _nul_is_bad_input)
    return engine


def _nul_is_bad_input(context: ExceptionContext) -> Exception | None:
    """A NUL character that reached PostgreSQL came from the caller (SQLite stores it): the
    caller's mistake, answered 422 on every route and in every job, instead of a 500 per field
    someone forgot to check."""
    if getattr(context.original_exception, "sqlstate", None) in _NUL_SQLSTATES:
        return InvalidInputError(NUL_IN_TEXT)
    return None


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
