"""Write-behind prediction log: the response never waits for, or fails because of, the database.

Rows wait in a bounded memory buffer and are inserted in batches by one background task. When
the buffer is full (the database has been away a while) rows overflow to an append-only spool
file, and at shutdown whatever cannot reach the database goes there too; the spool is replayed
into the database first whenever it is reachable, also by the next process to start. So an
accepted prediction's log row is never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import orjson
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.monitoring.tables import PredictionRecord

logger = logging.getLogger(__name__)


@dataclass
class LogEntry:
    request_id: str
    model_name: str
    model_version: str | None
    inputs: Any
    outputs: Any
    latency_ms: float
    status: str
    error: str | None = None
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    client_address: str | None = None
    id: uuid.UUID = field(default_factory=uuid.uuid4)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_json(self) -> bytes:
        return orjson.dumps(self.__dict__, default=str)

    @classmethod
    def from_json(cls, line: bytes) -> LogEntry:
        data = orjson.loads(line)
        for name in ("id", "user_id", "api_key_id"):
            if data.get(name) is not None:
                data[name] = uuid.UUID(data[name])
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        return cls(**data)


def _readable_entries(source: Path, lines: list[bytes]) -> list[LogEntry]:
    """Decode spooled rows, skipping any a crash cut short: one torn line must not keep every
    later row out of the database."""
    entries, unreadable = [], 0
    for line in lines:
        if not line.strip():
            continue
        try:
            entries.append(LogEntry.from_json(line))
        except (ValueError, TypeError, KeyError):  # orjson.JSONDecodeError is a ValueError
            unreadable += 1
    if unreadable:
        logger.error(
            "prediction log: skipped unreadable spooled rows",
            extra={"rows": unreadable, "file": str(source)},
        )
    return entries


class Spool:
    """Append-only JSON-lines file shared safely by several processes through ``flock``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, entries: list[LogEntry]) -> None:
        if not entries:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked_current_file() as handle:
            handle.write(b"".join(entry.to_json() + b"\n" for entry in entries))
            handle.flush()
            os.fsync(handle.fileno())

    def claim(self) -> Path | None:
        """Move the spool aside under a unique name so this process alone replays it."""
        if not self.path.exists():
            return None
        claimed = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.replay")
        try:
            with self._locked_current_file():
                os.replace(self.path, claimed)
        except FileNotFoundError:
            return None
        return claimed

    def pending_replays(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.name}.*.replay"))

    @contextlib.contextmanager
    def _locked_current_file(self) -> Iterator[Any]:
        # Reopen until the locked file is still the one at ``path``: another process may
        # have claimed (renamed) it between our open and our lock.
        while True:
            handle = open(self.path, "ab")  # noqa: SIM115 - closed below
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        try:
            yield handle
        finally:
            handle.close()


class PredictionLogWriter:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        spool_path: Path,
        buffer_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.5,
    ) -> None:
        self._session_factory = session_factory
        self._spool = Spool(spool_path)
        self._buffer: deque[LogEntry] = deque()
        self._overflow: list[LogEntry] = []  # past the buffer, on their way to the spool
        self._buffer_size = buffer_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._flushing = asyncio.Lock()
        self.written = 0
        self.spooled = 0
        self.last_error: str | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def record(self, entry: LogEntry) -> None:
        """Accept one row without waiting; called on the request path."""
        if len(self._buffer) >= self._buffer_size:
            # No file I/O on the request path: the background task moves these to the spool.
            self._overflow.append(entry)
            self.spooled += 1
            self._wake.set()
            return
        self._buffer.append(entry)
        if len(self._buffer) >= self._batch_size:
            self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="prediction-log-writer")

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109
        """Stop the background task, write what is left; spool it if the database is away."""
        try:
            async with asyncio.timeout(timeout):
                async with self._flushing:  # let a write in progress finish, not half-happen
                    if self._task is not None:
                        self._task.cancel()
                await self.flush()
        except Exception as exc:
            logger.warning(
                "prediction log: database unavailable at shutdown, spooling rows to disk",
                extra={"rows": len(self._buffer), "error": str(exc)},
            )
        if self._task is not None:
            self._task.cancel()  # still writing after the timeout: its rows return to the buffer
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        remaining = [*self._buffer, *self._overflow]
        self._buffer.clear()
        self._overflow = []
        self._spool.append(remaining)

    async def flush(self) -> None:
        """Write every pending row (spool first, then memory); raises if the database fails.

        One flush at a time: a caller must not return while the background task still has
        rows in flight, and two replays of one spool file would collide.
        """
        async with self._flushing:
            await self._spill_overflow()
            await self._replay_spool()
            while self._buffer:
                await self._write_batch()

    async def _run(self) -> None:
        delay = self._flush_interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self._spill_overflow()  # even while the database is away
                await self.flush()
                delay = self._flush_interval
                self.last_error = None
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.last_error is None:
                    logger.warning(
                        "prediction log: database write failed; will retry",
                        extra={"error": str(exc)},
                    )
                self.last_error = str(exc)
                delay = min(max(delay * 2, self._flush_interval), 5.0)

    async def _spill_overflow(self) -> None:
        if self._overflow:
            rows, self._overflow = self._overflow, []
            await anyio.to_thread.run_sync(self._spool.append, rows)

    async def _write_batch(self) -> None:
        batch = [self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))]
        try:
            await self._insert(batch)
        except BaseException:
            self._buffer.extendleft(reversed(batch))  # back in front, order kept
            raise

    async def _replay_spool(self) -> None:
        self._spool.claim()
        for replay in self._spool.pending_replays():
            try:
                lines = replay.read_bytes().splitlines()
            except FileNotFoundError:
                continue
            entries = _readable_entries(replay, lines)
            for start in range(0, len(entries), self._batch_size):
                await self._insert(entries[start : start + self._batch_size], skip_existing=True)
            replay.unlink(missing_ok=True)

    async def _insert(self, entries: list[LogEntry], skip_existing: bool = False) -> None:
        if not entries:
            return
        async with self._session_factory() as session:
            if skip_existing:
                # A replay interrupted half-way may already have written some rows.
                ids = [e.id for e in entries]
                found = set(
                    await session.scalars(
                        PredictionRecord.__table__.select()
                        .with_only_columns(PredictionRecord.id)
                        .where(PredictionRecord.id.in_(ids))
                    )
                )
                entries = [e for e in entries if e.id not in found]
            if entries:
                await session.execute(insert(PredictionRecord), [e.__dict__ for e in entries])
            await session.commit()
        self.written += len(entries)
