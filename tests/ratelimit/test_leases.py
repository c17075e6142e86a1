"""Leased Redis buckets: most takes are served from a small per-process lease, and replicas
sharing one Redis still honour each limit within the documented tolerance (tokens are taken
from Redis before they are spent; a replica may refuse while another holds up to
``lease_fraction`` x capacity unused, until it is spent or returned)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from modelport.errors import ServiceUnavailableError
from modelport.ratelimit.buckets import Decision, LeasedBuckets, Limit, Limiter, RedisBuckets
from modelport.ratelimit.sign_in import SignInLimits, SignInThrottle
from tests.helpers import run
from tests.ratelimit.support import CountingRedis, closed_port_url, require_redis

HOUR = 3600.0
WAIT_SECONDS = 10.0  # a hang guard: only a lease that is never returned would reach it


@asynccontextmanager
async def replicas(
    count: int, lease_fraction: float, lease_seconds: float = 60.0, sweep: bool = False
) -> AsyncIterator[list[tuple[LeasedBuckets, CountingRedis]]]:
    """``count`` processes' worth of leased buckets, each with its own client on one Redis."""
    url = require_redis()
    async with AsyncExitStack() as stack:
        made = []
        for _ in range(count):
            client = CountingRedis.from_url(url)
            stack.push_async_callback(client.aclose)
            buckets = LeasedBuckets(RedisBuckets(client), lease_fraction, lease_seconds)
            if sweep:
                buckets.start()
                stack.push_async_callback(buckets.close)
            made.append((buckets, client))
        yield made


def play(scenario: Callable[[str], Awaitable[None]]) -> None:
    run(scenario(f"test:{uuid.uuid4().hex}"))


def allowed(decisions: list[Decision]) -> int:
    return sum(decision.allowed for decision in decisions)


def test_two_replicas_together_admit_exactly_the_bucket() -> None:
    limit = Limit(200, HOUR)  # refills one token every 18 s: none during the test

    async def scenario(key: str) -> None:
        async with replicas(2, lease_fraction=0.1) as made:
            (one, _), (two, _) = made
            decisions: list[Decision] = []
            for _ in range(12):  # 600 takes in bursts, interleaved across both replicas
                burst = [(one if n % 2 else two).take(key, limit) for n in range(50)]
                decisions += await asyncio.gather(*burst)
            # Every token was taken from Redis before it was spent, so nothing beyond the
            # bucket; both replicas kept asking, so no lease was left unspent either.
            assert allowed(decisions) == limit.capacity
            assert {d.limit for d in decisions} == {200}
            assert all(d.retry_after >= 1 for d in decisions if not d.allowed)

    play(scenario)


def test_one_replica_asks_redis_far_less_often_than_it_answers() -> None:
    limit = Limit(6000)  # per minute: a lease of 5% is 300 tokens

    async def scenario(key: str) -> None:
        async with replicas(1, lease_fraction=0.05) as [(buckets, client)]:
            decisions = [await buckets.take(key, limit) for _ in range(500)]
            decisions += await asyncio.gather(*(buckets.take(key, limit) for _ in range(500)))
            assert allowed(decisions) == 1000
            assert client.round_trips <= 1000 / 50  # at least 50 answers per round trip
            # The headers stay meaningful: the count goes down as requests are answered.
            remaining = [d.remaining for d in decisions[:300]]
            assert remaining == sorted(remaining, reverse=True)
            assert 5000 <= remaining[-1] < 6000

        # The exact backend, for comparison: one round trip per take.
        async with replicas(1, lease_fraction=0.05) as [(_, client)]:
            exact = RedisBuckets(client)
            for _ in range(20):
                await exact.take(key + ":exact", limit)
            assert client.round_trips >= 20

    play(scenario)


def test_small_buckets_are_exact_across_replicas() -> None:
    limit = Limit(3, HOUR)  # 5% of 3 is less than a token: no lease

    async def scenario(key: str) -> None:
        async with replicas(2, lease_fraction=0.05) as made:
            (one, _), (two, _) = made
            assert [(await one.take(key, limit)).remaining for _ in range(2)] == [2, 1]
            assert (await two.take(key, limit)).remaining == 0
            assert not (await one.take(key, limit)).allowed
            assert not (await two.take(key, limit)).allowed

    play(scenario)


def test_tokens_a_replica_leaves_unused_are_returned() -> None:
    limit = Limit(40, HOUR)  # refills one token every 90 s: only a return can help

    async def scenario(key: str) -> None:
        async with replicas(2, lease_fraction=0.25, lease_seconds=0.2, sweep=True) as made:
            (idle, _), (busy, _) = made
            assert (await idle.take(key, limit)).allowed  # leases 10, spends 1, then idles
            taken = 1
            while (await busy.take(key, limit)).allowed:
                taken += 1
            assert taken < limit.capacity  # refused while the idle replica holds tokens
            async with asyncio.timeout(WAIT_SECONDS):
                while not (await busy.take(key, limit)).allowed:
                    await asyncio.sleep(0.05)
            taken += 1
            while (await busy.take(key, limit)).allowed:
                taken += 1
            assert taken == limit.capacity  # every token was spent once, none twice

    play(scenario)


def test_a_caller_over_the_limit_does_not_cost_a_round_trip_per_request() -> None:
    limit = Limit(10, HOUR)

    async def scenario(key: str) -> None:
        async with replicas(1, lease_fraction=0.2) as [(buckets, client)]:
            while (await buckets.take(key, limit)).allowed:
                pass
            before = client.round_trips
            refused = [await buckets.take(key, limit) for _ in range(100)]
            assert not any(d.allowed for d in refused)
            assert client.round_trips == before
            assert all(1 <= d.retry_after <= 360 for d in refused)  # one token: 6 min at most
            assert {d.remaining for d in refused} == {0}

    play(scenario)


def test_shutdown_gives_unspent_tokens_back() -> None:
    limit = Limit(100, HOUR)

    async def scenario(key: str) -> None:
        async with replicas(1, lease_fraction=0.1) as [(buckets, client)]:
            assert (await buckets.take(key, limit)).allowed  # leases 10
            exact = RedisBuckets(client)
            assert (await exact.take(key, limit, cost=0)).remaining == 90
            await buckets.close()
            assert (await exact.take(key, limit, cost=0)).remaining == 99

    play(scenario)


@pytest.mark.parametrize("fail_open", [True, False], ids=["fail-open", "fail-closed"])
def test_leased_buckets_keep_the_outage_policy(fail_open: bool) -> None:
    async def scenario() -> None:
        client = CountingRedis.from_url(closed_port_url(), socket_timeout=0.5)
        limiter = Limiter(LeasedBuckets(RedisBuckets(client)), fail_open=fail_open)
        try:
            takes = [limiter.take(f"ip:{n % 2}", Limit(1000)) for n in range(20)]
            answers = await asyncio.gather(*takes, return_exceptions=True)
        finally:
            await client.aclose()
        if fail_open:
            assert all(isinstance(a, Decision) and a.allowed for a in answers)
        else:
            assert all(isinstance(a, ServiceUnavailableError) for a in answers)

    run(scenario())


def test_each_sign_in_attempt_is_one_script_even_where_requests_are_leased() -> None:
    limits = SignInLimits(Limit(3, HOUR), Limit(50, HOUR), Limit(60, HOUR))

    async def scenario(account: str) -> None:
        async with replicas(2, lease_fraction=0.5) as made:
            throttles = []
            for buckets, client in made:
                exact = RedisBuckets(client)
                throttles.append(SignInThrottle(Limiter(buckets, exact=exact), limits))
            # Warm up: the first call of each client also loads the script.
            await (await throttles[0].reserve(account, "192.0.2.200")).release()
            await (await throttles[1].reserve(account, "192.0.2.200")).release()
            before = [client.round_trips for _, client in made]
            for n in range(3):
                await throttles[n % 2].reserve(account, "192.0.2.1")
            after = [client.round_trips for _, client in made]
            assert sum(after) - sum(before) == 3  # one atomic script per attempt, no lease
            # The pair's bucket is empty on every replica at once.
            for throttle in throttles:
                with pytest.raises(Exception, match="too many failed sign-ins"):
                    await throttle.reserve(account, "192.0.2.1")

    play(scenario)
