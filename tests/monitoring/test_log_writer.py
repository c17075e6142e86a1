"""The write-behind log writer: a flush means the rows are in the database, each exactly once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from sqlalchemy import func, select

from modelport.db.engine import create_engine, create_session_factory
from modelport.monitoring.prediction_log import PredictionLogWriter
from modelport.monitoring.tables import PredictionRecord
from tests.helpers import run
from tests.monitoring.support import log_entries


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
