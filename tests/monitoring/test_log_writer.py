"""The write-behind log writer: a flush means the rows are in the database, each exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select

from modelport.db.engine import create_engine, create_session_factory
from modelport.monitoring.prediction_log import LogEntry, PredictionLogWriter
from modelport.monitoring.tables import PredictionRecord
from tests.helpers import WINE_ROW, run
from tests.monitoring.support import count_rows, log_entries, metric


def test_flush_returns_only_once_rows_the_background_task_took_are_written(
    database_url: str, tmp_path: Path
) -> None:
    async def scenario() -> list[int | None]:
        engine = create_engine(database_url)
        session_factory = create_session_factory(engine)
        # The background task wakes every millisecond, so it is often mid-write when we flush.
        writer = PredictionLogWriter(
            session_factory, spool_path=tmp_path / "spool.jsonl", flush_interval=0.001
        )
        writer.start()
        counts: list[int | None] = []
        try:
            for entry in log_entries(30):
                writer.record(entry)
                await asyncio.sleep(0.001)
                await writer.flush()
                async with session_factory() as session:
                    counts.append(
                        await session.scalar(
                            select(func.count())
                            .select_from(PredictionRecord)
                            .where(PredictionRecord.request_id == entry.request_id)
                        )
                    )
        finally:
            await writer.close(timeout=5)
            await engine.dispose()
        return counts

    assert run(scenario()) == [1] * 30


def test_a_burst_past_every_memory_bound_is_written_exactly_once(
    database_url: str, tmp_path: Path
) -> None:
    """Rows arrive faster than one pass writes them and past the row and byte bounds: memory
    stays bounded (the rest waits in the spool file) and every row reaches the database once."""
    bound = 64 * 1024
    rows = log_entries(3000, inputs={**WINE_ROW, "note": "x" * 400})

    async def scenario() -> tuple[int, int]:
        engine = create_engine(database_url)
        writer = PredictionLogWriter(
            create_session_factory(engine),
            spool_path=tmp_path / "spool.jsonl",
            buffer_size=200,
            buffer_bytes=bound,
            batch_size=50,
            flush_interval=0.01,
        )
        writer.start()
        peak = 0
        try:
            for start in range(0, len(rows), 150):  # bursts of 150 requests between yields
                for entry in rows[start : start + 150]:
                    writer.record(entry)
                    peak = max(peak, writer.buffered_bytes)
                await asyncio.sleep(0)
        finally:
            await writer.close(timeout=60)
            await engine.dispose()
        return peak, writer.spooled

    peak, spooled = run(scenario())

    assert peak <= bound
    assert spooled > 0  # the bound was reached: some rows went by way of the spool file
    request_ids = [entry.request_id for entry in rows]
    assert count_rows(database_url, request_ids) == dict.fromkeys(request_ids, 1)
    assert not (tmp_path / "spool.jsonl").exists()


def test_rows_past_the_byte_bound_are_on_disk_before_any_flush_and_written_once(
    database_url: str, tmp_path: Path
) -> None:
    bound = 32 * 1024
    rows = log_entries(120, inputs={**WINE_ROW, "note": "y" * 1000})
    spool = tmp_path / "spool.jsonl"
    buffered_before = metric("modelport_prediction_log_buffered_rows")
    bytes_before = metric("modelport_prediction_log_buffered_bytes")
    spooled_before = metric("modelport_prediction_log_spooled_rows_total", reason="buffer_full")
    behind_before = metric("modelport_prediction_log_spooled_rows_total", reason="spool_behind")
    written_before = metric("modelport_prediction_log_written_rows_total")

    async def scenario() -> None:
        engine = create_engine(database_url)
        # Not started: no background task moves anything, so what is on disk got there
        # because memory was full.
        writer = PredictionLogWriter(
            create_session_factory(engine), spool_path=spool, buffer_bytes=bound, batch_size=7
        )
        try:
            for entry in rows:
                writer.record(entry)
            assert writer.buffered_bytes <= bound
            on_disk = spool.read_bytes().splitlines()
            assert len(on_disk) + writer.buffered == len(rows)
            assert [LogEntry.from_json(line).request_id for line in on_disk] == [
                entry.request_id for entry in rows[-len(on_disk) :]
            ]
            # The metrics show the same: rows and bytes held, and rows sent to the spool.
            held = metric("modelport_prediction_log_buffered_rows") - buffered_before
            assert held == writer.buffered
            held_bytes = metric("modelport_prediction_log_buffered_bytes") - bytes_before
            assert held_bytes == writer.buffered_bytes
            spooled = (
                metric("modelport_prediction_log_spooled_rows_total", reason="buffer_full")
                - spooled_before
                + metric("modelport_prediction_log_spooled_rows_total", reason="spool_behind")
                - behind_before
            )
            assert spooled == writer.spooled >= len(on_disk) > 0

            await writer.flush()
            assert writer.buffered == 0
            assert metric("modelport_prediction_log_buffered_rows") == buffered_before
            assert metric("modelport_prediction_log_buffered_bytes") == bytes_before
            await writer.flush()  # a second flush finds nothing more to write
        finally:
            await engine.dispose()

    run(scenario())

    request_ids = [entry.request_id for entry in rows]
    assert count_rows(database_url, request_ids) == dict.fromkeys(request_ids, 1)
    assert metric("modelport_prediction_log_written_rows_total") - written_before == len(rows)
    assert not spool.exists()
    assert list(tmp_path.glob("spool.jsonl.*")) == []


def test_a_row_already_in_the_database_is_not_written_twice_nor_holds_back_the_rest(
    database_url: str, tmp_path: Path
) -> None:
    """A write can commit and its answer still be lost (the connection died just after): the
    same rows are then offered again. They must neither be duplicated nor block the log."""
    rows = log_entries(6)

    async def scenario() -> None:
        engine = create_engine(database_url)
        session_factory = create_session_factory(engine)
        try:
            earlier = PredictionLogWriter(session_factory, spool_path=tmp_path / "a.jsonl")
            for entry in rows[2:4]:
                earlier.record(entry)
            await earlier.flush()

            writer = PredictionLogWriter(
                session_factory, spool_path=tmp_path / "b.jsonl", batch_size=4
            )
            for entry in rows:
                writer.record(entry)
            await writer.flush()
            assert writer.written == 4
        finally:
            await engine.dispose()

    run(scenario())

    request_ids = [entry.request_id for entry in rows]
    assert count_rows(database_url, request_ids) == dict.fromkeys(request_ids, 1)


def test_a_row_too_long_for_its_columns_does_not_block_the_rows_behind_it(
    database_url: str, tmp_path: Path
) -> None:
    # Values the HTTP layer never lets through today; the writer must not depend on that.
    odd = log_entries(
        1,
        model_name="m" * 300,
        model_version="9" * 40,
        error="bad\x00byte",
        client_address="a" * 99,
    )
    rows = [*odd, *log_entries(3)]

    async def scenario() -> None:
        engine = create_engine(database_url)
        try:
            writer = PredictionLogWriter(
                create_session_factory(engine), spool_path=tmp_path / "spool.jsonl"
            )
            for entry in rows:
                writer.record(entry)
            await writer.flush()
        finally:
            await engine.dispose()

    run(scenario())

    request_ids = [entry.request_id for entry in rows]
    assert count_rows(database_url, request_ids) == dict.fromkeys(request_ids, 1)
