"""Writing prediction-log rows by the cheapest means each database offers, and expiring them.

PostgreSQL: ``COPY ... FROM STDIN (FORMAT binary)`` through asyncpg on the pooled connection,
so a batch is one round trip, encoded in asyncpg's C code on the event loop without a thread.
SQLite: one Core ``INSERT``, compiled once, run for the whole batch by the driver's
``executemany`` in its own thread. Never the ORM unit of work: rows arrive here
as plain tuples whose JSON columns are already encoded text.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol, cast

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import JSON, Column, MetaData, Table, Text, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from modelport.db.engine import is_sqlite
from modelport.monitoring.tables import PredictionRecord

PREDICTIONS = cast(Table, PredictionRecord.__table__)
# The order of the values in every row tuple; also the order COPY sends them in.
COLUMNS: tuple[str, ...] = tuple(column.name for column in PREDICTIONS.columns)
ID = COLUMNS.index("id")

Row = tuple[Any, ...]


class DuplicateRowsError(Exception):
    """Some rows of the batch are already in the table (an earlier write whose answer was lost)."""


class LogStore(Protocol):
    async def write(self, rows: Sequence[Row], *, skip_existing: bool) -> int:
        """Insert ``rows`` in one transaction; returns how many were new. With ``skip_existing``
        rows whose id is already there are left out; without it they raise DuplicateRowsError."""
        ...

    async def delete_older_than(self, cutoff: datetime, limit: int) -> int:
        """Delete at most ``limit`` rows created before ``cutoff``; returns how many went."""
        ...


def open_log_store(engine: AsyncEngine) -> LogStore:
    if is_sqlite(str(engine.url)):
        return SqliteLogStore(engine)
    return PostgresLogStore(engine)


class PostgresLogStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def write(self, rows: Sequence[Row], *, skip_existing: bool) -> int:
        async with self._engine.connect() as connection:
            driver = await _asyncpg_connection(connection)
            try:
                async with driver.transaction():
                    if skip_existing:
                        found = await driver.fetch(
                            "SELECT id FROM predictions WHERE id = ANY($1::uuid[])",
                            [row[ID] for row in rows],
                        )
                        rows = _without(rows, {record[0] for record in found})
                    if rows:
                        await driver.copy_records_to_table(
                            "predictions", records=rows, columns=COLUMNS
                        )
            except asyncpg.UniqueViolationError as exc:
                raise DuplicateRowsError(str(exc)) from exc
            except (OSError, asyncpg.InterfaceError, asyncio.CancelledError, TimeoutError):
                # The connection's state is unknown (cut mid-COPY, or we gave up waiting):
                # never hand it back to the pool.
                with contextlib.suppress(Exception):
                    await connection.invalidate()
                raise
        return len(rows)

    async def delete_older_than(self, cutoff: datetime, limit: int) -> int:
        return await _delete_older_than(self._engine, cutoff, limit)


# The predictions table with its JSON columns as plain text: the values are encoded already
# (by orjson) and must not be encoded again by SQLAlchemy's JSON type.
_TEXT_JSON_TABLE = Table(
    PREDICTIONS.name,
    MetaData(),
    *(
        Column(column.name, Text() if isinstance(column.type, JSON) else column.type)
        for column in PREDICTIONS.columns
    ),
)


class SqliteLogStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Compiled once by Core; run by the driver's executemany with values converted by each
        # column's own bind processor (exactly what SQLAlchemy stores), without SQLAlchemy's
        # per-row parameter machinery, which would cost the event loop more than the insert.
        compiled = insert(_TEXT_JSON_TABLE).compile(dialect=engine.dialect)
        if tuple(compiled.positiontup or ()) != COLUMNS:
            raise RuntimeError("the SQLite INSERT does not take its values in column order")
        self._sql = str(compiled)
        self._processors = [
            (index, processor)
            for index, column in enumerate(_TEXT_JSON_TABLE.columns)
            if (processor := column.type.bind_processor(engine.dialect)) is not None
        ]

    async def write(self, rows: Sequence[Row], *, skip_existing: bool) -> int:
        try:
            async with self._engine.begin() as connection:
                if skip_existing:
                    found = await connection.scalars(
                        select(_TEXT_JSON_TABLE.c.id).where(
                            _TEXT_JSON_TABLE.c.id.in_([row[ID] for row in rows])
                        )
                    )
                    rows = _without(rows, set(found))
                if rows:
                    raw = await connection.get_raw_connection()
                    await raw.driver_connection.executemany(  # type: ignore[union-attr]
                        self._sql, [self._bind(row) for row in rows]
                    )
        except (IntegrityError, sqlite3.IntegrityError) as exc:
            raise DuplicateRowsError(str(exc)) from exc
        return len(rows)

    def _bind(self, row: Row) -> list[Any]:
        values = list(row)
        for index, processor in self._processors:
            if values[index] is not None:
                values[index] = processor(values[index])
        return values

    async def delete_older_than(self, cutoff: datetime, limit: int) -> int:
        return await _delete_older_than(self._engine, cutoff, limit)


async def _asyncpg_connection(connection: AsyncConnection) -> asyncpg.Connection:
    raw = await connection.get_raw_connection()
    return raw.driver_connection


def _without(rows: Sequence[Row], ids: set[uuid.UUID]) -> Sequence[Row]:
    return [row for row in rows if row[ID] not in ids] if ids else rows


async def _delete_older_than(engine: AsyncEngine, cutoff: datetime, limit: int) -> int:
    # By id through the created_at index, a bounded number per transaction: neither database
    # holds its locks for long, and SQLite has no DELETE ... LIMIT by default.
    oldest = select(PREDICTIONS.c.id).where(PREDICTIONS.c.created_at < cutoff).limit(limit)
    async with engine.begin() as connection:
        result = await connection.execute(delete(PREDICTIONS).where(PREDICTIONS.c.id.in_(oldest)))
    return int(result.rowcount or 0)
