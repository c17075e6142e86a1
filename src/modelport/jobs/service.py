"""Enqueue, lease and finish jobs. Leasing is one conditional UPDATE, so two workers (or two
replicas) can never both win the same job; on PostgreSQL the candidate is picked with
``FOR UPDATE SKIP LOCKED`` so busy workers do not queue behind each other."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.auth.principal import Principal
from modelport.errors import NotFoundError
from modelport.jobs.tables import Job


async def enqueue(
    session: AsyncSession,
    kind: str,
    payload: dict[str, Any],
    owner_id: uuid.UUID | None = None,
    max_attempts: int = 3,
) -> Job:
    """Add a job in the caller's transaction: it exists exactly when the caller's work does."""
    job = Job(kind=kind, payload=payload, owner_id=owner_id, max_attempts=max_attempts)
    session.add(job)
    await session.flush()
    return job


def _claimable(now: datetime) -> Any:
    # Queued, or leased by a worker that died (its lease ran out) and attempts remain.
    return or_(
        Job.status == "queued",
        and_(
            Job.status == "running",
            Job.lease_expires_at < now,
            Job.attempts < Job.max_attempts,
        ),
    )


def _abandoned(now: datetime) -> Any:
    # Leased for its last allowed attempt by a worker that died: nobody would ever run it again.
    return and_(
        Job.status == "running",
        Job.lease_expires_at < now,
        Job.attempts >= Job.max_attempts,
    )


async def give_up_abandoned(session: AsyncSession, kinds: list[str]) -> list[Job]:
    """Mark failed the jobs whose last attempt was cut off (its lease ran out); otherwise they
    would stay "running" for ever. Returns the jobs this worker gave up, for their owners'
    clean-up."""
    now = datetime.now(UTC)
    candidates = select(Job.id).where(Job.kind.in_(kinds), _abandoned(now)).limit(20)
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    given_up: list[uuid.UUID] = []
    for job_id in list(await session.scalars(candidates)):
        failed = await session.execute(
            update(Job)
            .where(Job.id == job_id, _abandoned(now))
            .values(
                status="failed",
                error="gave up: the worker running its last attempt stopped before finishing",
                leased_by=None,
                lease_expires_at=None,
                finished_at=now,
            )
        )
        if failed.rowcount == 1:  # type: ignore[attr-defined]
            given_up.append(job_id)
    await session.commit()
    jobs = [await session.get(Job, job_id, populate_existing=True) for job_id in given_up]
    return [job for job in jobs if job is not None]


async def lease_next(
    session: AsyncSession, worker_id: str, kinds: list[str], lease: timedelta
) -> Job | None:
    """Lease the oldest runnable job of ``kinds`` for ``worker_id``; None if there is none."""
    now = datetime.now(UTC)
    candidates = (
        select(Job.id).where(Job.kind.in_(kinds), _claimable(now)).order_by(Job.created_at).limit(5)
    )
    if session.get_bind().dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    for job_id in list(await session.scalars(candidates)):
        claimed = await session.execute(
            update(Job)
            .where(Job.id == job_id, _claimable(now))
            .values(
                status="running",
                leased_by=worker_id,
                lease_expires_at=now + lease,
                attempts=Job.attempts + 1,
                started_at=now,
            )
        )
        if claimed.rowcount == 1:  # type: ignore[attr-defined]
            await session.commit()
            return await session.get(Job, job_id, populate_existing=True)
    await session.commit()
    return None


async def renew(session: AsyncSession, job_id: uuid.UUID, worker_id: str, lease: timedelta) -> bool:
    """Extend this worker's lease on a running job; False if the lease is no longer its own."""
    renewed = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.leased_by == worker_id, Job.status == "running")
        .values(lease_expires_at=datetime.now(UTC) + lease)
    )
    await session.commit()
    return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]


async def finish(
    session: AsyncSession,
    job_id: uuid.UUID,
    worker_id: str,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    retry: bool = False,
) -> bool:
    """Record the outcome if this worker still holds the lease; False if it lost it."""
    values: dict[str, Any] = {"lease_expires_at": None, "leased_by": None}
    if error is None:
        values.update(status="succeeded", result=result, finished_at=datetime.now(UTC))
    elif retry:
        values.update(status="queued", error=error)
    else:
        values.update(status="failed", error=error, finished_at=datetime.now(UTC))
    done = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.leased_by == worker_id, Job.status == "running")
        .values(**values)
    )
    await session.commit()
    return bool(done.rowcount == 1)  # type: ignore[attr-defined]


async def get_visible_job(session: AsyncSession, viewer: Principal, job_id: uuid.UUID) -> Job:
    job = await session.get(Job, job_id)
    if job is None or not viewer.can_access_by_id(job.owner_id):
        raise NotFoundError(f"job {job_id} not found")
    return job
