"""Helpers for the job tests: a session factory on the test database, jobs read back from it,
and handlers that remember every call."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.db.engine import create_engine, create_session_factory
from modelport.jobs import service
from modelport.jobs.runner import JobRunner
from modelport.jobs.tables import Job

KIND = "test-job"
LONG_LEASE = timedelta(minutes=5)
SHORT_LEASE = timedelta(milliseconds=10)


@asynccontextmanager
async def sessions(database_url: str) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    """A session factory on its own engine, as each server process would have."""
    engine = create_engine(database_url)
    try:
        yield create_session_factory(engine)
    finally:
        await engine.dispose()


async def enqueue(
    factory: async_sessionmaker[AsyncSession],
    count: int = 1,
    kind: str = KIND,
    max_attempts: int = 3,
    owner_id: uuid.UUID | None = None,
) -> list[uuid.UUID]:
    ids = []
    async with factory() as session:
        for number in range(count):
            job = await service.enqueue(
                session, kind, {"number": number}, owner_id=owner_id, max_attempts=max_attempts
            )
            ids.append(job.id)
        await session.commit()
    return ids


async def load(factory: async_sessionmaker[AsyncSession], job_id: uuid.UUID) -> Job:
    async with factory() as session:
        job = await session.get(Job, job_id)
        assert job is not None, f"job {job_id} is gone"
        return job


async def lease(
    factory: async_sessionmaker[AsyncSession],
    worker: str,
    duration: timedelta = LONG_LEASE,
    kinds: tuple[str, ...] = (KIND,),
    per_owner: int | None = None,
) -> Job | None:
    async with factory() as session:
        return await service.lease_next(session, worker, list(kinds), duration, per_owner)


async def finish(
    factory: async_sessionmaker[AsyncSession], job_id: uuid.UUID, worker: str, **outcome: Any
) -> bool:
    async with factory() as session:
        return await service.finish(session, job_id, worker, **outcome)


async def lease_and_let_expire(factory: async_sessionmaker[AsyncSession]) -> Job:
    """A worker leases the oldest job and dies: its short lease runs out."""
    job = await lease(factory, "worker-that-died", SHORT_LEASE)
    assert job is not None
    await asyncio.sleep(SHORT_LEASE.total_seconds() * 5)
    return job


class Recorder:
    """A job handler that counts its calls per job and behaves as told."""

    def __init__(self, fail_times: int = 0, error: Exception | None = None) -> None:
        self.calls: Counter[uuid.UUID] = Counter()
        self.fail_times = fail_times
        self.error = error or RuntimeError("the disk is on fire")
        self.given_up: list[tuple[uuid.UUID, str]] = []

    async def __call__(self, job: Job) -> dict[str, Any]:
        self.calls[job.id] += 1
        await asyncio.sleep(0.002)  # let other workers interleave
        if self.calls[job.id] <= self.fail_times:
            raise self.error
        return {"number": job.payload["number"], "attempt": job.attempts}

    async def give_up(self, job: Job, error: str) -> None:
        self.given_up.append((job.id, error))


def runner_with(
    factory: async_sessionmaker[AsyncSession], handler: Recorder, **options: Any
) -> JobRunner:
    runner = JobRunner(factory, poll_seconds=0.05, **options)
    runner.register(KIND, handler, on_give_up=handler.give_up)
    return runner


async def drain(runner: JobRunner) -> int:
    """Run jobs until none is left for this runner; how many it ran."""
    ran = 0
    while await runner.run_once():
        ran += 1
    return ran
