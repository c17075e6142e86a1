"""The background loops each server process runs: lease a job, run its handler, record it.

Kinds are grouped in lanes (``register(..., lane=...)``), each with its own loop running one
job at a time: a long job in one lane (training) never holds up another lane's (images)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.errors import ModelportError
from modelport.jobs import service
from modelport.jobs.tables import Job

logger = logging.getLogger(__name__)
Handler = Callable[[Job], Awaitable[dict[str, Any]]]
# Called once when a job fails for good (no attempt left, or a permanent error), with the error.
GiveUpHook = Callable[[Job, str], Awaitable[None]]
# What a job's owner reads when it failed on a bug (the traceback is in the log, by job id).
JOB_INTERNAL_ERROR = "internal error; the server log has the details under this job's id"


class PermanentJobError(Exception):
    """The job can never succeed (bad input); do not retry it."""


class JobRunner:
    def __init__(
        self,
        session_factory: async_sessionmaker[AsyncSession],
        *,
        poll_seconds: float = 0.5,
        lease_seconds: float = 300.0,
        jobs_per_owner: int | None = None,
    ) -> None:
        self._session_factory = session_factory
        self._poll_seconds = poll_seconds
        self._lease = timedelta(seconds=lease_seconds)
        self._handlers: dict[str, Handler] = {}
        self._give_up_hooks: dict[str, GiveUpHook] = {}
        self._lanes: dict[str, list[str]] = {}
        self._wakes: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._jobs_per_owner = jobs_per_owner
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.completed = 0

    def register(
        self,
        kind: str,
        handler: Handler,
        on_give_up: GiveUpHook | None = None,
        lane: str | None = None,
    ) -> None:
        """Run ``handler`` for jobs of ``kind`` in ``lane`` ("default" at first); ``on_give_up``
        and ``lane`` (kept when a later call omits them) let the owner of the work record that
        it will never be done, and keep long kinds from holding up quick ones."""
        self._handlers[kind] = handler
        current = next((name for name, kinds in self._lanes.items() if kind in kinds), None)
        lane = lane or current or "default"
        if current != lane:
            if current is not None:
                self._lanes[current].remove(kind)
            self._lanes.setdefault(lane, []).append(kind)
        self._wakes.setdefault(lane, asyncio.Event())
        if on_give_up is not None:
            self._give_up_hooks[kind] = on_give_up

    def notify(self) -> None:
        """A job was just enqueued here: look now instead of at the next poll."""
        for wake in self._wakes.values():
            wake.set()

    def start(self) -> None:
        for lane, kinds in self._lanes.items():
            if kinds:
                self._tasks.append(asyncio.create_task(self._run(lane), name=f"jobs-{lane}"))

    async def close(self) -> None:
        """Stop taking jobs. One that is running finishes or, if cut off, its lease runs out
        and another worker (or this one after a restart) runs it again. A running job is
        cancelled, so its handler can end what it started (a training's child process)."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def run_once(self, lane: str | None = None) -> bool:
        """Lease and run one job (of ``lane``, or of any kind); False when there was none."""
        kinds = self._lanes[lane] if lane is not None else list(self._handlers)
        async with self._session_factory() as session:
            abandoned = await service.give_up_abandoned(session, kinds)
            job = await service.lease_next(
                session, self.worker_id, kinds, self._lease, self._jobs_per_owner
            )
        for lost in abandoned:
            await self._give_up(lost, lost.error or "gave up")
        if job is None:
            return False
        await self._execute(job)
        return True

    async def _run(self, lane: str) -> None:
        wake = self._wakes[lane]
        while True:
            try:
                while await self.run_once(lane):
                    pass
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database away: keep polling, it will come back
                logger.warning("job runner could not lease a job", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll_seconds):
                    await wake.wait()
            wake.clear()

    async def _execute(self, job: Job) -> None:
        work = asyncio.ensure_future(self._handlers[job.kind](job))
        heartbeat = asyncio.create_task(self._heartbeat(job, work), name=f"lease-{job.id}")
        try:
            result = await work
        except asyncio.CancelledError:
            if heartbeat.done() and heartbeat.result() is False:
                return  # the lease was lost and the work stopped: its new holder runs it
            work.cancel()
            raise
        except PermanentJobError as exc:
            if await self._finish(job, error=str(exc)):
                await self._give_up(job, str(exc))
        except Exception as exc:
            internal = exc.internal if isinstance(exc, ModelportError) else None
            logger.exception(
                "job failed", extra={"job_id": str(job.id), "kind": job.kind, "internal": internal}
            )
            retry = job.attempts < job.max_attempts
            # The job's owner reads this: a message written for users, never a library's text.
            error = exc.message if isinstance(exc, ModelportError) else JOB_INTERNAL_ERROR
            if await self._finish(job, error=error, retry=retry) and not retry:
                await self._give_up(job, error)
        else:
            await self._finish(job, result=result)
            self.completed += 1
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat

    async def _heartbeat(self, job: Job, work: asyncio.Future[Any]) -> bool:
        """Renew the lease while the work runs, so a job longer than one lease is not taken by
        another worker and run twice. If the lease is lost anyway (this worker was cut off from
        the database for longer than a lease), stop the work: someone else now holds the job."""
        while True:
            await asyncio.sleep(self._lease.total_seconds() / 3)
            try:
                async with self._session_factory() as session:
                    kept = await service.renew(session, job.id, self.worker_id, self._lease)
            except Exception as exc:  # database away: try again, the lease may still hold
                logger.warning("could not renew a job lease", extra={"error": str(exc)})
                continue
            if not kept:
                logger.warning("job lease lost while running", extra={"job_id": str(job.id)})
                work.cancel()
                return False

    async def _finish(self, job: Job, **outcome: Any) -> bool:
        async with self._session_factory() as session:
            kept = await service.finish(session, job.id, self.worker_id, **outcome)
        if not kept:
            logger.warning("job lease was lost before it finished", extra={"job_id": str(job.id)})
        return kept

    async def _give_up(self, job: Job, error: str) -> None:
        hook = self._give_up_hooks.get(job.kind)
        if hook is None:
            return
        try:
            await hook(job, error)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("job give-up hook failed", extra={"job_id": str(job.id)})
