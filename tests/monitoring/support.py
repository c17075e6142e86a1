"""Helpers for the monitoring tests: read the prediction log straight from the database."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable

from sqlalchemy import func, select

from modelport.db.engine import create_engine
from modelport.monitoring.prediction_log import LogEntry
from modelport.monitoring.tables import PredictionRecord
from tests.helpers import WINE_ROW, run


def count_rows(database_url: str, request_ids: Iterable[str]) -> dict[str, int]:
    """How many prediction-log rows each request id has, read without the app in between."""
    wanted = list(request_ids)

    async def query() -> dict[str, int]:
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

    result: dict[str, int] = run(query())
    return result


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def log_entries(count: int) -> list[LogEntry]:
    """Rows as the serving path records them, each with its own request id."""
    return [
        LogEntry(
            request_id=f"spooled-{uuid.uuid4().hex}",
            model_name="wine-quality",
            model_version="1",
            inputs=WINE_ROW,
            outputs=[{"predicted_quality": 5.5}],
            latency_ms=1.5,
            status="success",
        )
        for _ in range(count)
    ]
