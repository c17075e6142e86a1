"""The job runner each server process runs: every job once, retried on failure up to its
limit, taken over from a worker that died, and given up (not left hanging) in the end."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from modelport.jobs.runner import JOB_INTERNAL_ERROR, PermanentJobError
from modelport.jobs.tables import Job
from tests.helpers import run, wait_until_async
from tests.jobs.support import (
    Recorder,
    drain,
    enqueue,
    lease,
    lease_and_let_expire,
    load,
    runner_with,
    sessions,
)


def test_two_runners_racing_over_the_same_jobs_run_each_exactly_once(database_url: str) -> None:
    async def scenario() -> None:
        handler = Recorder()
        async with sessions(database_url) as first, sessions(database_url) as second:
            ids = await enqueue(first, count=24)
            runners = [runner_with(first, handler), runner_with(second, handler)]

            for runner in runners:
                runner.start()
                runner.notify()

            async def all_done() -> bool:
                return sum(runner.completed for runner in runners) >= len(ids)

            try:
                await wait_until_async(all_done, "both runners to finish the jobs")
            finally:
                for runner in runners:
                    await runner.close()

            assert handler.calls == dict.fromkeys(ids, 1)
            assert sum(runner.completed for runner in runners) == len(ids)
            for job_id in ids:
                job = await load(first, job_id)
                assert (job.status, job.attempts) == ("succeeded", 1)
                assert job.result is not None and job.result["attempt"] == 1

    run(scenario())


def test_a_runner_takes_only_the_kinds_it_has_handlers_for(database_url: str) -> None:
    async def scenario() -> None:
        handler = Recorder()
        async with sessions(database_url) as factory:
            (unknown,) = await enqueue(factory, kind="someone-else's")
            (mine,) = await enqueue(factory)

            assert await drain(runner_with(factory, handler)) == 1

            assert handler.calls == {mine: 1}
            assert (await load(factory, unknown)).status == "queued"

    run(scenario())


def test_a_job_whose_worker_died_is_run_again_by_another_worker(database_url: str) -> None:
    async def scenario() -> None:
        handler = Recorder()
        async with sessions(database_url) as factory, sessions(database_url) as other:
            (job_id,) = await enqueue(factory)
            await lease_and_let_expire(factory)

            assert await drain(runner_with(other, handler)) == 1

            assert handler.calls == {job_id: 1}
            job = await load(factory, job_id)
            assert (job.status, job.attempts, job.leased_by) == ("succeeded", 2, None)
            assert job.result == {"number": 0, "attempt": 2}

    run(scenario())


def test_a_job_on_a_live_lease_is_left_to_its_worker(database_url: str) -> None:
    async def scenario() -> None:
        handler = Recorder()
        async with sessions(database_url) as factory:
            (job_id,) = await enqueue(factory)
            await lease(factory, "busy-worker")

            assert await drain(runner_with(factory, handler)) == 0

            assert handler.calls == {}
            job = await load(factory, job_id)
            assert (job.status, job.leased_by) == ("running", "busy-worker")

    run(scenario())


def test_a_failing_job_is_retried_then_succeeds(database_url: str) -> None:
    async def scenario() -> None:
        handler = Recorder(fail_times=2)
        async with sessions(database_url) as factory:
            (job_id,) = await enqueue(factory, max_attempts=3)

            await drain(runner_with(factory, handler))

            assert handler.calls == {job_id: 3}
            job = await load(factory, job_id)
            assert (job.status, job.attempts) == ("succeeded", 3)
            assert handler.given_up == []

    run(scenario())


def test_a_job_failing_every_attempt_ends_failed_after_max_attempts(database_url: str) -> None:
    async def scenario() -> None:
        handler = Recorder(fail_times=100)
        async with sessions(database_url) as factory:
            (job_id,) = await enqueue(factory, max_attempts=3)
            runner = runner_with(factory, handler)

            await drain(runner)

            assert handler.calls == {job_id: 3}
            job = await load(factory, job_id)
            assert (job.status, job.attempts) == ("failed", 3)
            assert job.error == JOB_INTERNAL_ERROR  # the fire is for the log, not the owner
            assert job.finished_at is not None
            assert handler.given_up == [(job_id, JOB_INTERNAL_ERROR)]
            assert await drain(runner) == 0
            assert handler.calls == {job_id: 3}

    run(scenario())


def test_a_permanent_error_is_not_retried(database_url: str) -> None:
    async def scenario() -> None:
        handler = Recorder(fail_times=100, error=PermanentJobError("not an image"))
        async with sessions(database_url) as factory:
            (job_id,) = await enqueue(factory, max_attempts=3)

            await drain(runner_with(factory, handler))

            assert handler.calls == {job_id: 1}
            job = await load(factory, job_id)
            assert (job.status, job.attempts, job.error) == ("failed", 1, "not an image")
            assert handler.given_up == [(job_id, "not an image")]

    run(scenario())


def test_a_job_cut_off_on_its_last_attempt_ends_failed_without_running_again(
    database_url: str,
) -> None:
    async def scenario() -> None:
        handler = Recorder()
        async with sessions(database_url) as factory:
            (job_id,) = await enqueue(factory, max_attempts=1)
            await lease_and_let_expire(factory)

            assert await drain(runner_with(factory, handler)) == 0

            assert handler.calls == {}
            job = await load(factory, job_id)
            assert (job.status, job.attempts) == ("failed", 1)
            assert len(handler.given_up) == 1
            assert handler.given_up[0][0] == job_id

    run(scenario())


def test_a_running_runner_picks_up_new_work_and_stops_cleanly(database_url: str) -> None:
    async def scenario() -> None:
        handler = Recorder()
        async with sessions(database_url) as factory:
            runner = runner_with(factory, handler)
            runner.start()
            try:
                (job_id,) = await enqueue(factory)
                runner.notify()

                async def done() -> bool:
                    return (await load(factory, job_id)).status == "succeeded"

                await wait_until_async(done, "the job to succeed")
            finally:
                await runner.close()
            (later,) = await enqueue(factory)
            await asyncio.sleep(0.2)  # several poll intervals: a closed runner takes nothing

            assert handler.calls == {job_id: 1}
            assert (await load(factory, later)).status == "queued"

    run(scenario())


class SlowRecorder(Recorder):
    """A handler whose work takes several lease lengths."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    async def __call__(self, job: Job) -> dict[str, Any]:
        self.calls[job.id] += 1
        await asyncio.sleep(self.seconds)
        return {"number": job.payload["number"], "attempt": job.attempts}


def test_a_job_longer_than_its_lease_keeps_it_and_runs_once(database_url: str) -> None:
    async def scenario() -> None:
        lease = timedelta(milliseconds=300)
        handler = SlowRecorder(seconds=lease.total_seconds() * 4)
        async with sessions(database_url) as first, sessions(database_url) as second:
            (job_id,) = await enqueue(first)
            runners = [
                runner_with(first, handler, lease_seconds=lease.total_seconds()),
                runner_with(second, handler, lease_seconds=lease.total_seconds()),
            ]
            for runner in runners:
                runner.start()
                runner.notify()

            async def done() -> bool:
                return (await load(first, job_id)).status == "succeeded"

            try:
                await wait_until_async(done, "the long job to finish")
                # Give the other runner several more leases' time to (wrongly) take it again.
                await asyncio.sleep(lease.total_seconds() * 3)
            finally:
                for runner in runners:
                    await runner.close()

            assert handler.calls == {job_id: 1}
            job = await load(first, job_id)
            assert (job.status, job.attempts) == ("succeeded", 1)

    run(scenario())
