"""Token buckets on their own: in memory and in Redis, and the limiter's outage policy."""

from __future__ import annotations

import asyncio
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from redis.asyncio import Redis

from modelport.errors import ServiceUnavailableError
from modelport.ratelimit.buckets import (
    SIGN_IN_PREFIX,
    Buckets,
    Decision,
    LeasedBuckets,
    Limit,
    Limiter,
    MemoryBuckets,
    RedisBuckets,
)
from modelport.ratelimit.shared import SharedMemoryBuckets
from tests.helpers import run
from tests.ratelimit.support import closed_port_url, require_redis

WAIT_SECONDS = 10.0  # generous: only a hung refill would ever reach it


@asynccontextmanager
async def memory_buckets() -> AsyncIterator[list[Buckets]]:
    shared = MemoryBuckets()
    yield [shared, shared]


@asynccontextmanager
async def shared_buckets() -> AsyncIterator[list[Buckets]]:
    """Two maps of one table file, like two workers of one server."""
    with tempfile.TemporaryDirectory() as directory:
        tables = [SharedMemoryBuckets(Path(directory) / "buckets") for _ in range(2)]
        try:
            yield list(tables)
        finally:
            for table in tables:
                table.close()


@asynccontextmanager
async def redis_buckets() -> AsyncIterator[list[Buckets]]:
    """Two clients on one Redis, like two replicas; each test uses its own bucket keys."""
    url = require_redis()
    clients = [Redis.from_url(url), Redis.from_url(url)]
    try:
        yield [RedisBuckets(client) for client in clients]
    finally:
        for client in clients:
            await client.aclose()


@asynccontextmanager
async def leased_buckets() -> AsyncIterator[list[Buckets]]:
    """Two replicas with the default lease: the buckets here are too small to lease, so they
    must behave exactly as the exact ones."""
    async with redis_buckets() as exact:
        yield [LeasedBuckets(buckets) for buckets in exact]  # type: ignore[arg-type]


BACKENDS = {
    "memory": memory_buckets,
    "shared": shared_buckets,
    "redis": redis_buckets,
    "leased": leased_buckets,
}
Scenario = Callable[[list[Buckets], str], Awaitable[None]]


def play(backend: str, scenario: Scenario) -> None:
    async def main() -> None:
        async with BACKENDS[backend]() as buckets:
            await scenario(buckets, f"test:{uuid.uuid4().hex}")

    run(main())


async def take_all(buckets: Buckets, key: str, limit: Limit, times: int) -> list[Decision]:
    return [await buckets.take(key, limit) for _ in range(times)]


@pytest.fixture(params=list(BACKENDS))
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    if name in ("redis", "leased"):
        require_redis()
    return name


def test_a_bucket_allows_its_capacity_then_refuses(backend: str) -> None:
    async def scenario(buckets: list[Buckets], key: str) -> None:
        decisions = await take_all(buckets[0], key, Limit(3), 4)
        assert [d.allowed for d in decisions] == [True, True, True, False]
        assert [d.remaining for d in decisions] == [2, 1, 0, 0]
        assert {d.limit for d in decisions} == {3}
        assert [d.retry_after for d in decisions[:3]] == [0, 0, 0]
        # One token comes back every 20 s at 3 a minute.
        assert 1 <= decisions[3].retry_after <= 20
        assert 0 < decisions[3].reset_seconds <= 60

    play(backend, scenario)


def test_a_full_bucket_says_so(backend: str) -> None:
    async def scenario(buckets: list[Buckets], key: str) -> None:
        peek = await buckets[0].take(key, Limit(5), cost=0)
        assert (peek.allowed, peek.remaining, peek.reset_seconds) == (True, 5, 0)

    play(backend, scenario)


def test_buckets_are_separate_per_key(backend: str) -> None:
    async def scenario(buckets: list[Buckets], key: str) -> None:
        await take_all(buckets[0], key, Limit(2), 3)
        other = await buckets[0].take(key + ":other", Limit(2))
        assert (other.allowed, other.remaining) == (True, 1)

    play(backend, scenario)


def test_peeking_with_cost_zero_takes_nothing(backend: str) -> None:
    async def scenario(buckets: list[Buckets], key: str) -> None:
        for _ in range(5):
            assert (await buckets[0].take(key, Limit(2), cost=0)).remaining == 2
        assert [d.allowed for d in await take_all(buckets[0], key, Limit(2), 3)] == [
            True,
            True,
            False,
        ]
        assert (await buckets[0].take(key, Limit(2), cost=0)).remaining == 0

    play(backend, scenario)


def test_an_empty_bucket_refills_over_time(backend: str) -> None:
    async def scenario(buckets: list[Buckets], key: str) -> None:
        limit = Limit(2, period_seconds=0.5)  # one token every quarter second
        await take_all(buckets[0], key, limit, 2)
        assert not (await buckets[0].take(key, limit)).allowed
        async with asyncio.timeout(WAIT_SECONDS):
            while not (await buckets[0].take(key, limit)).allowed:
                await asyncio.sleep(0.05)
        # ...and never beyond its capacity, however long it was left alone.
        async with asyncio.timeout(WAIT_SECONDS):
            while (await buckets[0].take(key, limit, cost=0)).remaining < 2:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)
        assert (await buckets[0].take(key, limit, cost=0)).remaining == 2

    play(backend, scenario)


def test_one_bucket_is_shared_by_every_client_of_the_backend(backend: str) -> None:
    async def scenario(buckets: list[Buckets], key: str) -> None:
        first, second = buckets
        await take_all(first, key, Limit(3), 2)
        assert (await second.take(key, Limit(3))).remaining == 0
        assert not (await first.take(key, Limit(3))).allowed
        assert not (await second.take(key, Limit(3))).allowed

    play(backend, scenario)


def test_redis_forgets_a_bucket_once_it_would_be_full_again() -> None:
    url = require_redis()

    async def scenario() -> None:
        client = Redis.from_url(url)
        key = f"test:{uuid.uuid4().hex}"
        try:
            await RedisBuckets(client, prefix="").take(key, Limit(10, period_seconds=30))
            ttl = await client.ttl(key)
            assert 0 < ttl <= 31  # no key lingers in the shared Redis forever
        finally:
            await client.aclose()

    run(scenario())


def test_a_negative_cost_gives_tokens_back_but_never_beyond_capacity(backend: str) -> None:
    async def scenario(buckets: list[Buckets], key: str) -> None:
        await take_all(buckets[0], key, Limit(3), 3)
        assert (await buckets[0].take(key, Limit(3), cost=-1)).remaining == 1
        assert (await buckets[1].take(key, Limit(3), cost=-5)).remaining == 3
        assert [d.allowed for d in await take_all(buckets[0], key, Limit(3), 4)] == [
            True,
            True,
            True,
            False,
        ]

    play(backend, scenario)


def test_concurrent_takes_never_hand_out_more_than_the_capacity(backend: str) -> None:
    async def scenario(buckets: list[Buckets], key: str) -> None:
        limit = Limit(5, period_seconds=3600)
        decisions = await asyncio.gather(*(buckets[n % 2].take(key, limit) for n in range(40)))
        assert sum(d.allowed for d in decisions) == 5

    play(backend, scenario)


def test_memory_buckets_forget_the_least_recently_used_first() -> None:
    async def scenario() -> None:
        buckets = MemoryBuckets(max_keys=3)
        limit = Limit(1, period_seconds=3600)
        assert (await buckets.take("ip:busy", limit)).allowed
        for n in range(10):
            await buckets.take(f"ip:{n}", limit)
            await buckets.take("ip:busy", limit, cost=0)  # in use all along: kept
        # Still empty: a flood of other keys did not refill it.
        assert not (await buckets.take("ip:busy", limit)).allowed
        # The oldest of the flood was forgotten (bounded memory), so it starts full again.
        assert (await buckets.take("ip:0", limit)).allowed

    run(scenario())


def test_failed_sign_in_buckets_outlive_a_flood_of_other_keys() -> None:
    async def scenario() -> None:
        buckets = MemoryBuckets(max_keys=100, max_sign_in_keys=1000)
        limit = Limit(1, period_seconds=3600)
        assert (await buckets.take(f"{SIGN_IN_PREFIX}account:victim", limit)).allowed
        # An attacker cycles through made-up addresses and emails: far more keys than either
        # bound, yet the account's bucket is never cleared with the rest.
        for n in range(500):
            await buckets.take(f"ip:10.0.{n // 256}.{n % 256}", limit)
        for n in range(999):
            await buckets.take(f"{SIGN_IN_PREFIX}account:made-up-{n}", limit)
        assert not (await buckets.take(f"{SIGN_IN_PREFIX}account:victim", limit)).allowed

    run(scenario())


# --- the limiter when the backend is away ---------------------------------------------------


def test_the_limiter_allows_requests_when_redis_is_unreachable_by_default() -> None:
    async def scenario() -> None:
        client = Redis.from_url(closed_port_url(), socket_timeout=0.5)
        try:
            decision = await Limiter(RedisBuckets(client)).take("ip:1", Limit(3))
        finally:
            await client.aclose()
        assert (decision.allowed, decision.limit) == (True, 3)

    run(scenario())


def test_a_fail_closed_limiter_refuses_when_redis_is_unreachable() -> None:
    async def scenario() -> None:
        client = Redis.from_url(closed_port_url(), socket_timeout=0.5)
        try:
            with pytest.raises(ServiceUnavailableError, match="rate limiter cannot be reached"):
                await Limiter(RedisBuckets(client), fail_open=False).take("ip:1", Limit(3))
        finally:
            await client.aclose()

    run(scenario())
