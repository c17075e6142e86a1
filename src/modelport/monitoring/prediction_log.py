"""Write-behind prediction log: the response never waits for, or fails because of, the database.

``record`` encodes a row's JSON once (orjson) and appends it to a memory buffer bounded in rows
and bytes; one background task writes the buffer in batches (``log_store``: COPY on PostgreSQL,
a batched INSERT on SQLite) every ``flush_interval`` seconds or as soon as a batch is full, each
pass writing at most the rows that were there when it began. Past the memory bound rows go to
an append-only spool file (``spool``; written from a worker thread, and from the request path
only when the disk falls so far behind that memory would otherwise grow without bound); at
shutdown whatever cannot reach the database goes there too. The spool is replayed in bounded
chunks, idempotently by row id, whenever the database is reachable, also by the next process
to start. So an accepted prediction's log row is written exactly once and never dropped.

What is stored is bounded too: inputs or outputs whose JSON exceeds ``max_field_bytes`` are
kept as a marker with their size and sha256, and so are the bodies of calls that never reached
a model (unknown model, or a body that could not be parsed); a retention period, when set,
deletes old rows in batches from a background task.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import uuid
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import anyio
import orjson
from prometheus_client import Counter, Gauge
from sqlalchemy import String
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from modelport.monitoring.log_store import (
    COLUMNS,
    PREDICTIONS,
    DuplicateRowsError,
    Row,
    open_log_store,
)
from modelport.monitoring.spool import Replay, Spool

__all__ = ["LogEntry", "PredictionLogWriter", "Spool"]

logger = logging.getLogger(__name__)

BUFFERED_ROWS = Gauge(
    "modelport_prediction_log_buffered_rows",
    "Prediction-log rows held in memory, waiting for the database or the spool file",
    multiprocess_mode="livesum",
)
BUFFERED_BYTES = Gauge(
    "modelport_prediction_log_buffered_bytes",
    "Approximate memory held by those rows (their encoded size plus a fixed overhead)",
    multiprocess_mode="livesum",
)
SPOOLED_ROWS = Counter(
    "modelport_prediction_log_spooled_rows",
    "Prediction-log rows sent to the spool file instead of straight to the database",
    ["reason"],
)
WRITTEN_ROWS = Counter(
    "modelport_prediction_log_written_rows",
    "Prediction-log rows written to the database, replayed spool rows included",
)
NOT_STORED = Counter(
    "modelport_prediction_log_not_stored",
    "Inputs or outputs logged as a marker (size and sha256) instead of in full",
    ["field", "reason"],
)
# Every label appears from the start (at 0), so a rate over it never misses the first rows.
for _reason in ("buffer_full", "spool_behind", "shutdown"):
    SPOOLED_ROWS.labels(reason=_reason)
for _field, _reason in (
    ("inputs", "too_large"),
    ("inputs", "model_not_resolved"),
    ("inputs", "unparseable"),
    ("inputs", "unencodable"),
    ("outputs", "too_large"),
    ("outputs", "unencodable"),
):
    NOT_STORED.labels(field=_field, reason=_reason)
EXPIRED_ROWS = Counter(
    "modelport_prediction_log_expired_rows",
    "Prediction-log rows deleted because they are older than the retention period",
)

# A row's memory beyond its text: the tuple, the id and time objects, the buffer's slot.
_ROW_OVERHEAD = 400
# Error messages can echo the caller's input; keep their start, which says what went wrong.
_MAX_ERROR_CHARS = 4096
# How often the spool is looked at when this process has not spooled anything itself (another
# process may have left rows there).
_SPOOL_CHECK_SECONDS = 5.0
# Spool replay reads this much at a time at most: a long backlog is written a chunk per pass.
_REPLAY_CHUNK_BYTES = 1024**2
_RETENTION_CHECK_SECONDS = 3600.0
_RETENTION_RETRY_SECONDS = 60.0
_RETENTION_BATCH = 2000
_MAX_RETRY_DELAY = 5.0
_DUMP_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
# Column widths, so a row always fits (an oversized value must not block every later row).
_WIDTHS = {
    column.name: column.type.length
    for column in PREDICTIONS.columns
    if isinstance(column.type, String) and column.type.length
}
_INPUTS, _OUTPUTS = COLUMNS.index("inputs"), COLUMNS.index("outputs")


@dataclass
class LogEntry:
    """One prediction call as the serving path saw it.

    ``model_version`` is None when the call never reached a model (unknown or invisible model,
    unparseable body, registry unreachable): its inputs are then logged as a marker, not whole.
    """

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
        return orjson.dumps(self.__dict__, default=str, option=_DUMP_OPTIONS)

    @classmethod
    def from_json(cls, line: bytes) -> LogEntry:
        data = orjson.loads(line)
        for name in ("id", "user_id", "api_key_id"):
            if data.get(name) is not None:
                data[name] = uuid.UUID(data[name])
        data["created_at"] = datetime.fromisoformat(data["created_at"])
        return cls(**data)


@dataclass(slots=True)
class _Row:
    """A row ready for the database: values in column order, JSON columns as text."""

    seq: int
    values: Row
    size: int

    def to_json(self) -> bytes:
        """The spool line: the LogEntry JSON, with the encoded inputs and outputs embedded as
        they are rather than parsed and encoded again."""
        document = dict(zip(COLUMNS, self.values, strict=True))
        for name in ("inputs", "outputs"):
            if document[name] is not None:
                document[name] = orjson.Fragment(document[name])
        # default=str: a caller's ids read from PostgreSQL are asyncpg's own UUID type, which
        # orjson does not know; refusing them killed the spill and kept those rows off disk.
        return orjson.dumps(document, default=str)


def _marker(reason: str, data: bytes | None = None) -> str:
    """What is stored instead of a value: why, and (when known) the size and sha256 of its
    compact JSON, so an auditor holding the original can still prove which one it was."""
    marker: dict[str, Any] = {"not_stored": reason}
    if data is not None:
        marker["bytes"] = len(data)
        marker["sha256"] = hashlib.sha256(data).hexdigest()
    return orjson.dumps(marker).decode()


def _is_marker(value: Any) -> bool:
    return isinstance(value, dict) and "not_stored" in value and len(value) <= 3


def _text(value: str | None, column: str) -> str | None:
    """PostgreSQL text cannot hold NUL; a value longer than its column would fail the batch."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    width = _WIDTHS.get(column)
    return value[:width] if width is not None and len(value) > width else value


class PredictionLogWriter:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        spool_path: Path,
        buffer_size: int = 10_000,
        buffer_bytes: int = 64 * 1024**2,
        batch_size: int = 500,
        flush_interval: float = 0.1,
        max_field_bytes: int = 16 * 1024,
        retention_days: int = 0,
    ) -> None:
        engine = session_factory.kw.get("bind")
        if not isinstance(engine, AsyncEngine):
            raise TypeError("the prediction log needs a session factory bound to an engine")
        self._store = open_log_store(engine)
        self._spool = Spool(spool_path)
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._max_field_bytes = max_field_bytes
        self._retention = timedelta(days=retention_days) if retention_days > 0 else None
        # Memory: half the bound for rows waiting for the database, a quarter for rows on their
        # way to the spool, a quarter for a chunk of the spool being replayed.
        self._buffer_rows = buffer_size
        self._buffer_bytes_limit = max(buffer_bytes // 2, 1)
        self._overflow_bytes_limit = max(buffer_bytes // 4, 1)
        self._replay_chunk_bytes = max(min(buffer_bytes // 4, _REPLAY_CHUNK_BYTES), 1)

        self._buffer: deque[_Row] = deque()
        self._buffer_bytes = 0
        self._overflow: list[_Row] = []  # past the buffer, on their way to the spool
        self._overflow_bytes = 0
        self._seq = 0
        # Rows at the buffer's front whose last write failed after it may have committed (the
        # connection died before the answer came): they are written only if not there yet.
        self._uncertain = 0
        self._replay: Replay | None = None
        self._replay_rows: list[Row] = []  # read from the spool, not yet written
        self._spool_dirty = True  # look at the spool on the first pass (a previous run's rows)
        self._spool_checked = -math.inf

        self._wake = asyncio.Event()
        self._spill_wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._spilling = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._spill_task: asyncio.Task[None] | None = None
        self._retention_task: asyncio.Task[None] | None = None
        self.written = 0
        self.spooled = 0
        self.expired = 0
        self.last_error: str | None = None

    # --- the request path -----------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Rows held in memory."""
        return len(self._buffer) + len(self._overflow)

    @property
    def buffered_bytes(self) -> int:
        return self._buffer_bytes + self._overflow_bytes

    def record(self, entry: LogEntry) -> None:
        """Accept one row without waiting; called on the request path. Never raises for what
        the entry holds: a value that cannot be stored is logged as a marker."""
        values, size = self._encode(entry)
        self._seq += 1
        row = _Row(self._seq, values, size)
        if len(self._buffer) < self._buffer_rows and (
            self._buffer_bytes + row.size <= self._buffer_bytes_limit
        ):
            self._buffer.append(row)
            self._held(1, row.size)
            self._buffer_bytes += row.size
            if len(self._buffer) >= self._batch_size:
                self._wake.set()
            return
        self.spooled += 1
        self._spool_dirty = True
        self._wake.set()
        self._spill_wake.set()
        if not self._overflow or self._overflow_bytes + row.size <= self._overflow_bytes_limit:
            # The background task moves these to the spool from a worker thread.
            self._overflow.append(row)
            self._overflow_bytes += row.size
            self._held(1, row.size)
            SPOOLED_ROWS.labels(reason="buffer_full").inc()
            return
        # The disk is not keeping up with arrivals: write this row here, slowing this request,
        # rather than hold more in memory or drop it.
        try:
            self._spool.append([row])
        except OSError as exc:
            # The spool cannot be written at all (disk full?): keep the row in memory, past the
            # bound, rather than lose it or fail the request; the operator is told.
            logger.error("prediction log: writing the spool failed", extra={"error": str(exc)})
            self._overflow.append(row)
            self._overflow_bytes += row.size
            self._held(1, row.size)
            return
        SPOOLED_ROWS.labels(reason="spool_behind").inc()

    def _encode(self, entry: LogEntry) -> tuple[Row, int]:
        """The row's values in column order and its approximate memory size. Touches no state
        of the writer: it also runs in the worker thread that reads the spool back."""
        reached_model = entry.model_version is not None
        inputs = self._json("inputs", entry.inputs, reached_model=reached_model)
        outputs = self._json("outputs", entry.outputs, reached_model=True)
        error = entry.error
        if error is not None and len(error) > _MAX_ERROR_CHARS:
            error = (
                f"{error[:_MAX_ERROR_CHARS]}... ({len(error) - _MAX_ERROR_CHARS} more characters)"
            )
        created_at = entry.created_at
        if created_at.tzinfo is None:
            created_at = created_at.replace(tzinfo=UTC)
        latency_ms = float(entry.latency_ms)
        request_id = _text(entry.request_id, "request_id") or ""
        error = _text(error, "error")
        values: Row = (
            entry.id,
            request_id,
            _text(entry.model_name, "model_name"),
            _text(entry.model_version, "model_version"),
            inputs,
            outputs,
            latency_ms if math.isfinite(latency_ms) else 0.0,
            _text(entry.status, "status"),
            error,
            created_at,
            entry.user_id,
            entry.api_key_id,
            _text(entry.client_address, "client_address"),
        )
        # The short columns are bounded and counted in the overhead; the rest by their length.
        size = len(inputs or "") + len(outputs or "") + len(error or "") + len(request_id)
        return values, _ROW_OVERHEAD + size

    def _json(self, name: str, value: Any, *, reached_model: bool) -> str | None:
        if value is None:
            if reached_model:
                return None
            NOT_STORED.labels(field=name, reason="unparseable").inc()
            return _marker("unparseable")
        try:
            data = orjson.dumps(value, default=str, option=_DUMP_OPTIONS)
        except TypeError:  # orjson.JSONEncodeError: e.g. a lone surrogate, a cycle
            NOT_STORED.labels(field=name, reason="unencodable").inc()
            return _marker("unencodable")
        if _is_marker(value):  # replayed from the spool: already reduced
            return data.decode()
        if not reached_model:
            NOT_STORED.labels(field=name, reason="model_not_resolved").inc()
            return _marker("model_not_resolved", data)
        if len(data) > self._max_field_bytes:
            NOT_STORED.labels(field=name, reason="too_large").inc()
            return _marker("too_large", data)
        return data.decode()

    def _held(self, rows: int, size: int) -> None:
        BUFFERED_ROWS.inc(rows)
        BUFFERED_BYTES.inc(size)

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="prediction-log-writer")
        # Spilling to disk has a task of its own, so a database that hangs cannot hold it up.
        self._spill_task = asyncio.create_task(self._spill_forever(), name="prediction-log-spill")
        if self._retention is not None:
            self._retention_task = asyncio.create_task(
                self._expire_forever(), name="prediction-log-retention"
            )

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109
        """Stop the background tasks, write what is left; spool it if the database is away."""
        for task in (self._retention_task, self._spill_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._retention_task = self._spill_task = None
        try:
            async with asyncio.timeout(timeout):
                async with self._flushing:  # let a write in progress finish, not half-happen
                    if self._task is not None:
                        self._task.cancel()
                await self.flush()
        except Exception as exc:
            logger.warning(
                "prediction log: database unavailable at shutdown, spooling rows to disk",
                extra={"rows": self.buffered, "error": str(exc)},
            )
        if self._task is not None:
            self._task.cancel()  # still writing after the timeout: its rows stay in the buffer
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        remaining = [*self._buffer, *self._overflow]
        if remaining:
            await anyio.to_thread.run_sync(self._spool.append, remaining)
            self.spooled += len(self._buffer)
            SPOOLED_ROWS.labels(reason="shutdown").inc(len(self._buffer))
        self._held(-len(remaining), -self.buffered_bytes)
        self._buffer.clear()
        self._overflow.clear()
        self._buffer_bytes = self._overflow_bytes = 0
        if self._replay is not None:  # its file stays for the next start to finish
            self._replay.close()
            self._replay, self._replay_rows = None, []

    async def flush(self) -> None:
        """Write every row recorded before this call, and every spooled row; raises if the
        database fails. Rows recorded meanwhile are left for the background task.

        One flush at a time: a caller must not return while the background task still has
        rows in flight, and two replays of one spool file would collide.
        """
        async with self._flushing:
            await self._spill_overflow()
            mark = self._seq
            while self._buffer and self._buffer[0].seq <= mark:
                count = 0
                for row in islice(self._buffer, self._batch_size):
                    if row.seq > mark:
                        break
                    count += 1
                await self._write_front(count)
            while await self._replay_chunk():
                pass

    async def delete_expired(self) -> int:
        """Delete rows older than the retention period, a batch per transaction."""
        if self._retention is None:
            return 0
        cutoff = datetime.now(UTC) - self._retention
        deleted = 0
        while True:
            count = await self._store.delete_older_than(cutoff, _RETENTION_BATCH)
            deleted += count
            self.expired += count
            EXPIRED_ROWS.inc(count)
            if count < _RETENTION_BATCH:
                return deleted
            await asyncio.sleep(0.01)  # let other writers take the database's locks between

    # --- the background task --------------------------------------------------------------

    async def _run(self) -> None:
        delay = self._flush_interval
        while True:
            if self.last_error is None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
            else:  # backing off: rows arriving meanwhile must not turn retries into a busy loop
                await asyncio.sleep(delay)
            self._wake.clear()
            try:
                more = True
                while more:  # each pass is bounded; other tasks run between passes
                    async with self._flushing:
                        more = await self._pass()
                    await asyncio.sleep(0)
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
                delay = min(max(delay * 2, self._flush_interval), _MAX_RETRY_DELAY)

    async def _pass(self) -> bool:
        """Write the rows buffered when the pass began and one chunk of the spool; True when
        more work is already waiting."""
        pending = len(self._buffer)
        while pending:
            count = min(self._batch_size, pending)
            await self._write_front(count)
            pending -= count
        replaying = False
        now = asyncio.get_running_loop().time()
        if (
            self._spool_dirty
            or self._replay is not None
            or (now - self._spool_checked >= _SPOOL_CHECK_SECONDS)
        ):
            self._spool_dirty = False
            self._spool_checked = now
            replaying = await self._replay_chunk()
        return replaying or bool(self._overflow) or len(self._buffer) >= self._batch_size

    async def _spill_forever(self) -> None:
        while True:
            await self._spill_wake.wait()
            self._spill_wake.clear()
            try:
                await self._spill_overflow()
            except OSError as exc:  # the rows stay in memory, bounded; the next row retries
                logger.error("prediction log: writing the spool failed", extra={"error": str(exc)})

    async def _spill_overflow(self) -> None:
        """Move the overflow to the spool file; returns once every row spilled before the call
        (also by the spill task) is on disk."""
        async with self._spilling:
            if not self._overflow:
                return
            rows, self._overflow = self._overflow, []
            size, self._overflow_bytes = self._overflow_bytes, 0
            try:
                await anyio.to_thread.run_sync(self._spool.append, rows)
            except BaseException:
                self._overflow[:0] = rows
                self._overflow_bytes += size
                raise
            self._held(-len(rows), -size)
            self._spool_dirty = True

    async def _write_front(self, count: int) -> None:
        """Write the first ``count`` buffered rows; they leave the buffer only once written."""
        rows = [row.values for row in islice(self._buffer, count)]
        try:
            written = await self._write(rows, maybe_written=self._uncertain > 0)
        except BaseException:
            self._uncertain = max(self._uncertain, count)
            raise
        self._uncertain = max(0, self._uncertain - count)
        size = 0
        for _ in range(count):
            size += self._buffer.popleft().size
        self._buffer_bytes -= size
        self._held(-count, -size)
        self._count_written(written)

    async def _write(self, rows: list[Row], *, maybe_written: bool) -> int:
        try:
            return await self._store.write(rows, skip_existing=maybe_written)
        except DuplicateRowsError:
            # Written before by a write whose answer never came back, or by another process
            # replaying the same rows: keep only those still missing.
            return await self._store.write(rows, skip_existing=True)

    async def _replay_chunk(self) -> bool:
        """Write the next chunk of the spool; False once nothing is left."""
        if not self._replay_rows:
            if self._replay is None:
                self._replay = await anyio.to_thread.run_sync(self._spool.next_replay)
                if self._replay is None:
                    return False
            replay = self._replay
            rows = await anyio.to_thread.run_sync(self._read_replay, replay)
            if rows is None:
                await anyio.to_thread.run_sync(replay.finish)
                self._replay = None
                self._spool_dirty = True  # more files may wait: look again on the next pass
                return True
            self._replay_rows = rows
        while self._replay_rows:
            batch = self._replay_rows[: self._batch_size]
            # An interrupted replay may already have written some of these rows.
            self._count_written(await self._store.write(batch, skip_existing=True))
            del self._replay_rows[: len(batch)]
        return True

    def _read_replay(self, replay: Replay) -> list[Row] | None:
        """The next chunk of spooled rows as database rows (None at the end of the file),
        skipping any a crash cut short: one torn line must not keep every later row out of the
        database. Runs in a worker thread: reading and decoding stay off the event loop."""
        lines = replay.read_lines(self._replay_chunk_bytes)
        if not lines:
            return None
        rows, unreadable = [], 0
        for line in lines:
            if not line.strip():
                continue
            try:
                entry = LogEntry.from_json(line)
            except (ValueError, TypeError, KeyError):  # orjson.JSONDecodeError is a ValueError
                unreadable += 1
                continue
            rows.append(self._encode(entry)[0])
        if unreadable:
            logger.error(
                "prediction log: skipped unreadable spooled rows",
                extra={"rows": unreadable, "file": str(replay.path)},
            )
        return rows

    def _count_written(self, rows: int) -> None:
        self.written += rows
        WRITTEN_ROWS.inc(rows)

    async def _expire_forever(self) -> None:
        while True:
            delay = _RETENTION_CHECK_SECONDS
            try:
                deleted = await self.delete_expired()
                if deleted:
                    logger.info("prediction log: deleted expired rows", extra={"rows": deleted})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "prediction log: deleting expired rows failed; will retry",
                    extra={"error": str(exc)},
                )
                delay = _RETENTION_RETRY_SECONDS
            await asyncio.sleep(delay)
