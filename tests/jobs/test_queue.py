"""The jobs table as a queue: enqueue in the caller's transaction, lease to one worker at a
time, finish only by the lease holder, retry, and take over from workers that died."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.jobs import service
from modelport.jobs.tables import Job
from tests.helpers import run
from tests.jobs.support import (
    KIND,
    enqueue,
    finish,
    lease,
    lease_and_let_expire,
    load,
    sessions,
)


def test_an_enqueued_job_waits_queued_and_exists_only_if_the_caller_commits(
    database_url: str,
) -> None:
    async def scenario() -> None:
        async with sessions(database_url) as factory:
            (kept,) = await enqueue(factory)
            async with factory() as session:
                dropped = (await service.enqueue(session, KIND, {"number": 9})).id
                await session.rollback()  # the caller's work failed: no job either

            job = await load(factory, kept)
            assert (job.status, job.attempts, job.max_attempts) == ("queued", 0, 3)
            assert job.payload == {"number": 0}
            assert job.leased_by is None and job.started_at is None
            async with factory() as session:
                assert await session.get(Job, dropped) is None

    run(scenario())


def test_leasing_takes_the_oldest_job_of_the_wanted_kinds(database_url: str) -> None:
    async def scenario() -> None:
        async with sessions(database_url) as factory:
            (first,) = await enqueue(factory)
            (other_kind,) = await enqueue(factory, kind="other")
            (second,) = await enqueue(factory)
            before = datetime.now(UTC)

            leased = await lease(factory, "worker-a")
            assert leased is not None
            assert leased.id == first
            assert (leased.status, leased.leased_by, leased.attempts) == ("running", "worker-a", 1)
            assert leased.lease_expires_at is not None and leased.lease_expires_at > before
            assert leased.started_at is not None
            assert (await lease(factory, "worker-a")).id == second  # type: ignore[union-attr]
            assert await lease(factory, "worker-a") is None  # "other" was not asked for
            assert (await lease(factory, "worker-b", kinds=("other",))).id == other_kind  # type: ignore[union-attr]

    run(scenario())


def test_a_leased_job_is_not_leased_again_while_its_lease_holds(database_url: str) -> None:
    async def scenario() -> None:
        async with sessions(database_url) as factory:
            (job_id,) = await enqueue(factory)

            assert (await lease(factory, "worker-a")).id == job_id  # type: ignore[union-attr]
            assert await lease(factory, "worker-b") is None
            assert (await load(factory, job_id)).leased_by == "worker-a"

    run(scenario())


def test_only_the_lease_holder_records_the_outcome(database_url: str) -> None:
    async def scenario() -> None:
        async with sessions(database_url) as factory:
            (job_id,) = await enqueue(factory)
            await lease(factory, "worker-a")

            assert not await finish(factory, job_id, "worker-b", result={"by": "b"})
            assert (await load(factory, job_id)).status == "running"
            assert await finish(factory, job_id, "worker-a", result={"by": "a"})
            assert not await finish(factory, job_id, "worker-a", result={"twice": True})

            job = await load(factory, job_id)
            assert (job.status, job.result, job.error) == ("succeeded", {"by": "a"}, None)
            assert job.finished_at is not None
            assert job.leased_by is None and job.lease_expires_at is None
            assert await lease(factory, "worker-b") is None

    run(scenario())


def test_a_failed_attempt_to_retry_is_queued_again_and_counted(database_url: str) -> None:
    async def scenario() -> None:
        async with sessions(database_url) as factory:
            (job_id,) = await enqueue(factory)
            await lease(factory, "worker-a")

            assert await finish(factory, job_id, "worker-a", error="timeout", retry=True)
            queued = await load(factory, job_id)
            assert (queued.status, queued.error, queued.finished_at) == ("queued", "timeout", None)
            again = await lease(factory, "worker-b")
            assert again is not None
            assert (again.id, again.attempts, again.leased_by) == (job_id, 2, "worker-b")

    run(scenario())


def test_a_failure_without_retry_is_final(database_url: str) -> None:
    async def scenario() -> None:
        async with sessions(database_url) as factory:
            (job_id,) = await enqueue(factory)
            await lease(factory, "worker-a")

            assert await finish(factory, job_id, "worker-a", error="bad input")

            job = await load(factory, job_id)
            assert (job.status, job.error) == ("failed", "bad input")
            assert job.finished_at is not None
            assert await lease(factory, "worker-b") is None

    run(scenario())


def test_a_job_whose_worker_died_is_taken_over_when_the_lease_runs_out(
    database_url: str,
) -> None:
    async def scenario() -> None:
        async with sessions(database_url) as factory:
            (job_id,) = await enqueue(factory)
            await lease_and_let_expire(factory)

            taken = await lease(factory, "worker-b")

            assert taken is not None
            assert (taken.id, taken.leased_by, taken.attempts) == (job_id, "worker-b", 2)
            # The dead worker, should it wake up, can no longer record anything.
            assert not await finish(factory, job_id, "worker-that-died", result={})
            assert await finish(factory, job_id, "worker-b", result={"ok": True})
            assert (await load(factory, job_id)).result == {"ok": True}

    run(scenario())


def test_a_job_cut_off_on_its_last_attempt_is_given_up_not_left_running(
    database_url: str,
) -> None:
    async def scenario() -> None:
        async with sessions(database_url) as factory:
            (job_id,) = await enqueue(factory, max_attempts=1)
            (still_running,) = await enqueue(factory, max_attempts=1)
            await lease_and_let_expire(factory)
            await lease(factory, "worker-alive")  # the second, on a lease that still holds

            async with factory() as session:
                given_up = await service.give_up_abandoned(session, [KIND])

            assert [job.id for job in given_up] == [job_id]
            job = await load(factory, job_id)
            assert job.status == "failed"
            assert "stopped before finishing" in (job.error or "")
            assert job.finished_at is not None
            assert await lease(factory, "worker-b") is None
            assert (await load(factory, still_running)).status == "running"
            async with factory() as session:
                assert await service.give_up_abandoned(session, [KIND]) == []

    run(scenario())


def test_concurrent_leases_never_hand_one_job_to_two_workers(database_url: str) -> None:
    async def scenario() -> None:
        async with sessions(database_url) as first, sessions(database_url) as second:
            ids = await enqueue(first, count=12)

            async def take_all(
                factory: async_sessionmaker[AsyncSession], worker: str
            ) -> list[uuid.UUID]:
                taken = []
                while (job := await lease(factory, worker)) is not None:
                    taken.append(job.id)
                return taken

            a, b = await asyncio.gather(take_all(first, "worker-a"), take_all(second, "worker-b"))

            assert sorted(map(str, a + b)) == sorted(map(str, ids))
            assert not set(a) & set(b)

    run(scenario())
