"""The failed-sign-in throttle on its own, in memory and in Redis: which buckets an attempt
uses, that attempts are reserved atomically, and that a right password gives them back."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis

from modelport.errors import TooManyRequestsError
from modelport.ratelimit.buckets import Buckets, Limit, Limiter, MemoryBuckets, RedisBuckets
from modelport.ratelimit.shared import SharedMemoryBuckets
from modelport.ratelimit.sign_in import Attempt, SignInLimits, SignInThrottle
from tests.helpers import run
from tests.ratelimit.support import require_redis

HOUR = 3600.0
LIMITS = SignInLimits(
    per_pair=Limit(3, HOUR), per_address=Limit(5, HOUR), per_account=Limit(6, HOUR)
)


@asynccontextmanager
async def memory() -> AsyncIterator[list[Buckets]]:
    shared = MemoryBuckets()
    yield [shared, shared]


@asynccontextmanager
async def redis() -> AsyncIterator[list[Buckets]]:
    """Two clients on one Redis, like two replicas; each test uses its own accounts."""
    url = require_redis()
    clients = [Redis.from_url(url), Redis.from_url(url)]
    try:
        yield [RedisBuckets(client) for client in clients]
    finally:
        for client in clients:
            await client.aclose()


@asynccontextmanager
async def shared() -> AsyncIterator[list[Buckets]]:
    """Two workers of one server without Redis: two maps of one table file."""
    with tempfile.TemporaryDirectory() as directory:
        tables = [SharedMemoryBuckets(Path(directory) / "buckets") for _ in range(2)]
        try:
            yield list(tables)
        finally:
            for table in tables:
                table.close()


BACKENDS = {"memory": memory, "shared": shared, "redis": redis}
Scenario = Callable[[list[SignInThrottle], str], Awaitable[None]]


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name == "redis":
        require_redis()
    return name


def play(backend: str, scenario: Scenario) -> None:
    async def main() -> None:
        async with BACKENDS[backend]() as buckets:
            throttles = [SignInThrottle(Limiter(b), LIMITS) for b in buckets]
            await scenario(throttles, uuid.uuid4().hex)  # a fresh account name per test

    run(main())


async def attempt(throttle: SignInThrottle, account: str, address: str) -> Attempt | None:
    """A reserved attempt, or None when the throttle refused it."""
    try:
        return await throttle.reserve(account, address)
    except TooManyRequestsError:
        return None


def test_concurrent_attempts_are_counted_one_by_one(backend: str) -> None:
    async def scenario(throttles: list[SignInThrottle], account: str) -> None:
        tried = await asyncio.gather(
            *(attempt(throttles[n % 2], account, "192.0.2.1") for n in range(40))
        )
        assert sum(a is not None for a in tried) == LIMITS.per_pair.capacity

    play(backend, scenario)


def test_a_guesser_s_failures_leave_the_owner_s_other_addresses_alone(backend: str) -> None:
    async def scenario(throttles: list[SignInThrottle], account: str) -> None:
        for _ in range(3):
            assert await attempt(throttles[0], account, "192.0.2.66") is not None
        assert await attempt(throttles[0], account, "192.0.2.66") is None
        assert await attempt(throttles[1], account, "198.51.100.20") is not None

    play(backend, scenario)


def test_failures_from_many_addresses_reach_the_account_s_own_limit(backend: str) -> None:
    async def scenario(throttles: list[SignInThrottle], account: str) -> None:
        for n in range(6):
            assert await attempt(throttles[n % 2], account, f"10.9.0.{n}") is not None
        assert await attempt(throttles[0], account, "10.9.0.200") is None

    play(backend, scenario)


def test_a_refused_attempt_costs_the_other_buckets_nothing(backend: str) -> None:
    async def scenario(throttles: list[SignInThrottle], account: str) -> None:
        for _ in range(3):
            assert await attempt(throttles[0], account, "192.0.2.9") is not None
        # Refused at the pair: neither the address nor the account pays for these.
        for _ in range(10):
            assert await attempt(throttles[0], account, "192.0.2.9") is None
        for n in range(2):
            assert await attempt(throttles[0], f"{account}-other-{n}", "192.0.2.9") is not None
        for n in range(3):
            assert await attempt(throttles[1], account, f"10.8.0.{n}") is not None

    play(backend, scenario)


def test_a_successful_attempt_gives_its_tokens_back(backend: str) -> None:
    async def scenario(throttles: list[SignInThrottle], account: str) -> None:
        for _ in range(10):  # the owner signing in again and again is never throttled
            reserved = await attempt(throttles[0], account, "192.0.2.5")
            assert reserved is not None
            await reserved.release()
        for _ in range(3):
            assert await attempt(throttles[1], account, "192.0.2.5") is not None

    play(backend, scenario)
