"""Enqueue, lease and finish jobs. Leasing is one conditional UPDATE, so two workers (or two
replicas) can never both win the same job; on PostgreSQL the candidate is picked with
``FOR UPDATE SKIP LOCKED`` so busy workers do not queue behind each other."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
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


# How many owners with waiting jobs one lease looks at (the longest-waiting first).
_OWNERS_CONSIDERED = 50
# How far back a lease looks for whose turn it is; an owner served longer ago counts as new.
_TURN_MEMORY = timedelta(hours=1)


def _running(now: datetime) -> Any:
    return and_(Job.status == "running", Job.lease_expires_at >= now)


def _owned_by(owner_id: uuid.UUID | None) -> Any:
    return Job.owner_id.is_(None) if owner_id is None else Job.owner_id == owner_id


async def lease_next(
    session: AsyncSession,
    worker_id: str,
    kinds: list[str],
    lease: timedelta,
    per_owner: int | None = None,
) -> Job | None:
    """Lease a runnable job of ``kinds`` for ``worker_id``; None if there is none.

    Fair across owners, in turns: the owner with the fewest jobs of ``kinds`` running goes
    first, among equals the one whose last job started longest ago (then the one waiting
    longest), and an owner with ``per_owner`` running gets none until one ends, so one
    account's queue never holds up everyone else's. Within an owner, oldest first.
    Jobs without an owner (anonymous uploads) take turns as one owner, without the cap. The cap
    is read, not locked: workers leasing at the same instant may pass it by one job each."""
    now = datetime.now(UTC)
    running: dict[uuid.UUID | None, int] = {
        owner: count
        for owner, count in await session.execute(
            select(Job.owner_id, func.count())
            .where(Job.kind.in_(kinds), _running(now))
            .group_by(Job.owner_id)
        )
    }
    capped = [
        owner
        for owner, count in running.items()
        if owner is not None and per_owner is not None and count >= per_owner
    ]
    waiting = select(Job.owner_id, func.min(Job.created_at).label("oldest")).where(
        Job.kind.in_(kinds), _claimable(now)
    )
    if capped:
        waiting = waiting.where(or_(Job.owner_id.is_(None), Job.owner_id.not_in(capped)))
    owners = list(
        await session.execute(
            waiting.group_by(Job.owner_id).order_by("oldest").limit(_OWNERS_CONSIDERED)
        )
    )
    served = await _last_served(session, kinds, [row.owner_id for row in owners], now)
    never = datetime.min.replace(tzinfo=UTC)
    owners.sort(
        key=lambda row: (running.get(row.owner_id, 0), served.get(row.owner_id, never), row.oldest)
    )
    for owner_id, _ in owners:
        job = await _claim_oldest(session, worker_id, kinds, owner_id, now, lease)
        if job is not None:
            return job
    await session.commit()
    return None


async def _last_served(
    session: AsyncSession, kinds: list[str], owners: list[uuid.UUID | None], now: datetime
) -> dict[uuid.UUID | None, datetime]:
    """When each owner's latest job of ``kinds`` started (within the last hour): the owner
    served longest ago goes first, so owners take turns even on a single worker."""
    known = [owner for owner in owners if owner is not None]
    whose = [Job.owner_id.in_(known)] if known else []
    if None in owners:
        whose.append(Job.owner_id.is_(None))
    if not whose:
        return {}
    rows = await session.execute(
        select(Job.owner_id, func.max(Job.started_at))
        .where(Job.kind.in_(kinds), or_(*whose), Job.started_at >= now - _TURN_MEMORY)
        .group_by(Job.owner_id)
    )
    return {owner: started for owner, started in rows if started is not None}


async def _claim_oldest(
    session: AsyncSession,
    worker_id: str,
    kinds: list[str],
    owner_id: uuid.UUID | None,
    now: datetime,
    lease: timedelta,
) -> Job | None:
    candidates = (
        select(Job.id)
        .where(Job.kind.in_(kinds), _owned_by(owner_id), _claimable(now))
        .order_by(Job.created_at)
        .limit(5)
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
