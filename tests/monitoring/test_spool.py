"""The spool file: where log rows wait on disk, and how they are replayed without duplicates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelport.db.engine import create_engine, create_session_factory
from modelport.monitoring.prediction_log import LogEntry, PredictionLogWriter, Spool
from tests.helpers import run
from tests.monitoring.support import count_rows, log_entries


def flush(
    database_url: str, spool_path: Path, recorded: Sequence[LogEntry] = (), **settings: Any
) -> None:
    """What a writer process does: record rows, then write them and any spool to the database."""

    async def write() -> None:
        engine = create_engine(database_url)
        try:
            writer = PredictionLogWriter(
                create_session_factory(engine), spool_path=spool_path, batch_size=2, **settings
            )
            for entry in recorded:
                writer.record(entry)
            await writer.flush()
        finally:
            await engine.dispose()

    run(write())


def test_claim_moves_the_spool_aside_and_new_rows_start_a_fresh_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    assert spool.claim() is None

    first, second = log_entries(2), log_entries(1)
    spool.append(first)
    claimed = spool.claim()
    assert claimed is not None
    assert not spool.path.exists()
    assert [LogEntry.from_json(line) for line in claimed.read_bytes().splitlines()] == first

    spool.append(second)
    assert [LogEntry.from_json(line) for line in spool.path.read_bytes().splitlines()] == second
    assert spool.pending_replays() == [claimed]


def test_spooled_rows_round_trip_unchanged(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "nested" / "spool.jsonl")
    original = log_entries(1)[0]
    original.inputs = {"note": "ünïcode ' \" ; --", "values": [1, 2.5, None]}
    spool.append([original])
    assert LogEntry.from_json(spool.path.read_bytes().strip()) == original


def test_replay_interrupted_after_a_partial_insert_writes_each_row_once(
    database_url: str, tmp_path: Path
) -> None:
    rows = log_entries(5)
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append(rows)
    assert spool.claim() is not None
    # The interrupted replay had committed its first batch before the process died.
    flush(database_url, tmp_path / "elsewhere.jsonl", recorded=rows[:2])

    flush(database_url, spool.path)

    request_ids = [row.request_id for row in rows]
    assert count_rows(database_url, request_ids) == dict.fromkeys(request_ids, 1)
    assert spool.pending_replays() == []


def test_a_torn_spool_line_does_not_keep_the_other_rows_out(
    database_url: str, tmp_path: Path
) -> None:
    rows = log_entries(3)
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append(rows[:2])
    with spool.path.open("ab") as handle:  # a crash cut this row short
        handle.write(rows[2].to_json()[:40] + b"\n")
    later = log_entries(1)

    flush(database_url, spool.path, recorded=later)

    written = [row.request_id for row in [*rows[:2], *later]]
    assert count_rows(database_url, written) == dict.fromkeys(written, 1)
    assert not spool.path.exists()
    assert spool.pending_replays() == []


def test_rows_appended_after_a_torn_line_are_not_lost(database_url: str, tmp_path: Path) -> None:
    rows = log_entries(3)
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append(rows[:1])
    with spool.path.open("ab") as handle:  # a crash cut this row short, newline and all
        handle.write(rows[1].to_json()[:40])
    spool.append(rows[2:])  # the next process spools on

    flush(database_url, spool.path)

    kept = [rows[0].request_id, rows[2].request_id]
    assert count_rows(database_url, kept) == dict.fromkeys(kept, 1)
    assert spool.pending_replays() == []


def test_a_spool_file_being_replayed_is_left_to_its_replayer(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append(log_entries(2))
    first = spool.next_replay()
    assert first is not None
    try:
        # Another process (or worker) looking for work now finds none: no double replay.
        assert spool.next_replay() is None
        spool.append(log_entries(1))
        second = spool.next_replay()
        assert second is not None and second.path != first.path
        second.close()
    finally:
        first.close()
    # A replayer that stopped (or died) lets go: its file is free for the next one.
    again = spool.next_replay()
    assert again is not None
    again.close()


def test_a_long_spool_is_replayed_in_bounded_chunks(database_url: str, tmp_path: Path) -> None:
    rows = log_entries(300)
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append(rows)
    replay = spool.next_replay()
    assert replay is not None
    try:
        chunk = replay.read_lines(4096)
    finally:
        replay.close()
    assert 0 < len(chunk) < 300
    assert all(LogEntry.from_json(line) for line in chunk)  # whole lines only

    # With a memory bound far below the spool's size: it is replayed a few KiB at a time.
    flush(database_url, spool.path, buffer_bytes=32 * 1024)

    request_ids = [row.request_id for row in rows]
    assert count_rows(database_url, request_ids) == dict.fromkeys(request_ids, 1)
    assert spool.pending_replays() == []
