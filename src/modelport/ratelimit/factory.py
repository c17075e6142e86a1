"""The limiter one server process uses, chosen from the settings and how the server runs."""

from __future__ import annotations

from redis.asyncio import Redis

from modelport.ratelimit.buckets import Buckets, LeasedBuckets, Limiter, MemoryBuckets, RedisBuckets
from modelport.ratelimit.shared import FILE_NAME, SharedMemoryBuckets
from modelport.settings import Settings
from modelport.workers import run_dir


def build_limiter(settings: Settings, redis: Redis | None) -> Limiter:
    """Redis when configured (leased unless MODELPORT_RATE_LIMIT_LEASE_FRACTION is 0; failed
    sign-ins always exact); else a table the workers of this server share; else memory."""
    fail_open = settings.rate_limit_fail_open
    if redis is not None:
        exact = RedisBuckets(redis)
        if settings.rate_limit_lease_fraction <= 0:
            return Limiter(exact, fail_open=fail_open)
        leased = LeasedBuckets(
            exact,
            lease_fraction=settings.rate_limit_lease_fraction,
            lease_seconds=settings.rate_limit_lease_seconds,
        )
        return Limiter(leased, fail_open=fail_open, exact=exact)
    shared = run_dir()
    buckets: Buckets = (
        SharedMemoryBuckets(shared / FILE_NAME) if shared is not None else MemoryBuckets()
    )
    return Limiter(buckets, fail_open=fail_open)
