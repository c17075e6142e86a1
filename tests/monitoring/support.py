"""Helpers for the monitoring tests: read the prediction log straight from the database."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from sqlalchemy import func, select

from modelport.db.engine import create_engine, create_session_factory
from modelport.monitoring.prediction_log import LogEntry, PredictionLogWriter
from modelport.monitoring.tables import PredictionRecord
from tests.helpers import WINE_ROW, run


def count_rows(database_url: str, request_ids: Iterable[str]) -> dict[str, int]:
    """How many prediction-log rows each request id has, read without the app in between."""
    result: dict[str, int] = run(count_rows_async(database_url, request_ids))
    return result


async def count_rows_async(database_url: str, request_ids: Iterable[str]) -> dict[str, int]:
    """``count_rows`` for a test already inside an event loop."""
    wanted = list(request_ids)
    engine = create_engine(database_url)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                select(PredictionRecord.request_id, func.count())
                .where(PredictionRecord.request_id.in_(wanted))
                .group_by(PredictionRecord.request_id)
            )
            found = {request_id: int(count) for request_id, count in rows}
    finally:
        await engine.dispose()
    return {request_id: found.get(request_id, 0) for request_id in wanted}


def log_entries(count: int, **fields: Any) -> list[LogEntry]:
    """Rows as the serving path records them, each with its own request id; ``fields``
    replace the defaults."""
    values: dict[str, Any] = {
        "model_name": "wine-quality",
        "model_version": "1",
        "inputs": WINE_ROW,
        "outputs": [{"predicted_quality": 5.5}],
        "latency_ms": 1.5,
        "status": "success",
        **fields,
    }
    return [LogEntry(request_id=f"spooled-{uuid.uuid4().hex}", **values) for _ in range(count)]


def write_entries(database_url: str, spool_path: Path, entries: Iterable[LogEntry]) -> None:
    """Put rows in the log the way the app does, through a writer and its flush."""

    async def write() -> None:
        engine = create_engine(database_url)
        try:
            writer = PredictionLogWriter(create_session_factory(engine), spool_path=spool_path)
            for entry in entries:
                writer.record(entry)
            await writer.flush()
        finally:
            await engine.dispose()

    run(write())


def metric(name: str, **labels: str) -> float:
    """The current value of one Prometheus sample in this process (0 when never touched)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
