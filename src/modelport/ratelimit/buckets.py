"""Token-bucket backends: memory for one process; Redis for many replicas, exact (one atomic
script per take) or leased (most takes served from a small per-process lease)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Counter
from redis.asyncio import Redis

from modelport.errors import ServiceUnavailableError

logger = logging.getLogger(__name__)

BACKEND_ERRORS = Counter(
    "modelport_ratelimit_backend_errors_total",
    "Rate-limit checks that could not reach the shared backend",
    ["outcome"],
)


@dataclass(frozen=True)
class Limit:
    """``capacity`` requests per ``period_seconds``, refilled continuously."""

    capacity: int
    period_seconds: float = 60.0

    @property
    def rate(self) -> float:
        return self.capacity / self.period_seconds


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_seconds: int  # until the bucket is full again
    retry_after: int  # until the next request would be allowed (0 when allowed)


def decision_for(limit: Limit, tokens: float, allowed: bool, cost: float) -> Decision:
    return Decision(
        allowed=allowed,
        limit=limit.capacity,
        remaining=max(0, math.floor(tokens)),
        reset_seconds=math.ceil((limit.capacity - tokens) / limit.rate),
        retry_after=0 if allowed else max(1, math.ceil((cost - tokens) / limit.rate)),
    )


class Buckets(Protocol):
    async def take(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        """Refill, then take ``cost`` tokens if there are that many, in one atomic step.
        ``cost=0`` only looks; a negative cost gives tokens back (never beyond capacity)."""
        ...

    async def take_all(
        self, buckets: Sequence[tuple[str, Limit]], cost: float = 1.0
    ) -> list[Decision]:
        """``take`` on several buckets as one atomic step: ``cost`` from every one if each has
        that many, else from none. Each decision says whether its own bucket had enough."""
        ...


# Keys of failed-sign-in buckets: the memory backend keeps these longest.
SIGN_IN_PREFIX = "login-fail:"
_State = tuple[float, float]  # (tokens, monotonic time of the last refill)


class MemoryBuckets:
    """Buckets of one process, bounded by forgetting the least recently used. Forgetting a
    bucket refills it, so failed-sign-in buckets live in a pool of their own with a larger
    bound: a flood of other keys (or of made-up emails) never evicts them wholesale."""

    def __init__(self, max_keys: int = 100_000, max_sign_in_keys: int = 200_000) -> None:
        self._pools: dict[bool, OrderedDict[str, _State]] = {
            False: OrderedDict(),
            True: OrderedDict(),
        }
        self._bounds = {False: max_keys, True: max_sign_in_keys}

    async def take(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        return (await self.take_all([(key, limit)], cost))[0]

    async def take_all(
        self, buckets: Sequence[tuple[str, Limit]], cost: float = 1.0
    ) -> list[Decision]:
        # No await from read to write: concurrent takes on one event loop cannot interleave.
        now = time.monotonic()
        counted = []
        for key, limit in buckets:
            tokens, stamp = self._pool(key).pop(key, (float(limit.capacity), now))
            counted.append(min(float(limit.capacity), tokens + (now - stamp) * limit.rate))
        every = all(tokens >= cost for tokens in counted)
        decisions = []
        for (key, limit), tokens in zip(buckets, counted, strict=True):
            enough = tokens >= cost
            if every:
                tokens = min(float(limit.capacity), tokens - cost)
            signing_in = key.startswith(SIGN_IN_PREFIX)
            pool = self._pools[signing_in]
            pool[key] = (tokens, now)  # re-inserted: now the most recently used
            while len(pool) > self._bounds[signing_in]:
                pool.popitem(last=False)
            decisions.append(decision_for(limit, tokens, enough, cost))
        return decisions

    def _pool(self, key: str) -> OrderedDict[str, _State]:
        return self._pools[key.startswith(SIGN_IN_PREFIX)]


# Refill, take and store in one step on the Redis server, with the server's clock. ``give_back``
# returns tokens a process leased and did not use; ``want`` (at least ``cost``) leases more than
# this request needs, but never more than half of what the bucket holds, so a bucket running
# low is shared out in ever smaller leases and no process sits on its last tokens.
_TAKE_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local give_back = tonumber(ARGV[5])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or capacity
local stamp = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - stamp) * rate + give_back)
local allowed = 0
local granted = 0
if tokens >= cost then
  granted = cost
  if want > cost then
    granted = math.max(cost, math.min(want, math.floor(tokens / 2)))
  end
  tokens = math.min(capacity, tokens - granted)
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return {allowed, tostring(tokens), tostring(granted)}
"""


# The same refill for several buckets, taking ``cost`` from all of them or from none.
# ARGV: cost, then capacity and rate of each key in turn.
_TAKE_ALL_SCRIPT = """
local cost = tonumber(ARGV[1])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local counted = {}
local every = 1
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
  local state = redis.call('HMGET', key, 'tokens', 'stamp')
  local tokens = tonumber(state[1]) or capacity
  local stamp = tonumber(state[2]) or now
  tokens = math.min(capacity, tokens + math.max(0, now - stamp) * rate)
  counted[i] = tokens
  if tokens < cost then
    every = 0
  end
end
local answer = {}
for i, key in ipairs(KEYS) do
  local capacity = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
  local tokens = counted[i]
  if every == 1 then
    tokens = math.min(capacity, tokens - cost)
  end
  redis.call('HSET', key, 'tokens', tostring(tokens), 'stamp', tostring(now))
  redis.call('EXPIRE', key, math.ceil(capacity / rate) + 1)
  answer[i] = tostring(counted[i]) .. ' ' .. tostring(tokens)
end
return answer
"""


@dataclass(frozen=True)
class Grant:
    """What the shared bucket answered: whether ``cost`` was taken, how many tokens it handed
    out in all (``cost`` or more, when leasing), and what it holds now."""

    allowed: bool
    granted: float
    tokens: float


class RedisBuckets:
    """Exact buckets in Redis: one script (one round trip) per take."""

    def __init__(self, client: Redis, prefix: str = "modelport:rl:") -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_TAKE_SCRIPT)
        self._all_script = client.register_script(_TAKE_ALL_SCRIPT)

    async def take(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        grant = await self.lease(key, limit, cost)
        return decision_for(limit, grant.tokens, grant.allowed, cost)

    async def take_all(
        self, buckets: Sequence[tuple[str, Limit]], cost: float = 1.0
    ) -> list[Decision]:
        args: list[float] = [cost]
        for _key, limit in buckets:
            args += [limit.capacity, limit.rate]
        answer = await self._all_script(
            keys=[self._prefix + key for key, _limit in buckets], args=args
        )
        decisions = []
        for (_key, limit), pair in zip(buckets, answer, strict=True):
            counted, tokens = (float(value) for value in pair.split())
            decisions.append(decision_for(limit, tokens, counted >= cost, cost))
        return decisions

    async def lease(
        self, key: str, limit: Limit, cost: float, want: float | None = None, give_back: float = 0.0
    ) -> Grant:
        """Give ``give_back`` tokens back, then take ``cost`` (and up to ``want`` in all)."""
        want = cost if want is None else max(want, cost)
        allowed, tokens, granted = await self._script(
            keys=[self._prefix + key], args=[limit.capacity, limit.rate, cost, want, give_back]
        )
        return Grant(bool(int(allowed)), float(granted), float(tokens))

    async def give_back(self, returns: list[tuple[str, Limit, float]]) -> None:
        """Return unused leased tokens of many buckets in one round trip."""
        async with self._client.pipeline(transaction=False) as pipe:
            for key, limit, tokens in returns:
                await self._script(
                    keys=[self._prefix + key],
                    args=[limit.capacity, limit.rate, 0, 0, tokens],
                    client=pipe,
                )
            await pipe.execute()


@dataclass
class _Lease:
    """One process's share of one shared bucket."""

    limit: Limit
    tokens: float = 0.0  # taken from the shared bucket, not spent here yet
    shared: float = 0.0  # what the shared bucket held after our last call
    synced: float = 0.0  # monotonic time of that call
    expires: float = 0.0  # unspent tokens go back after this; the next take asks again
    refused: bool = False  # the last call was refused: refuse locally until a refill could help
    call: asyncio.Future[None] | None = field(default=None, repr=False)  # the call in flight

    def visible(self, now: float) -> float:
        """The tokens this process can count on: the shared bucket as last seen, refilled
        since, plus its own lease."""
        refilled = self.shared + max(0.0, now - self.synced) * self.limit.rate
        return min(float(self.limit.capacity), refilled + self.tokens)


class LeasedBuckets:
    """Redis buckets with a small lease per process, so most takes need no round trip.

    A take is served from this process's lease while it lasts; when it runs out, one script
    gives back what is left and leases up to ``lease_fraction`` of the bucket's capacity (never
    more than half of what the bucket holds). Unused tokens go back after ``lease_seconds``.
    Tokens are taken from Redis before they are spent, so across all processes no window ever
    admits more than the bucket allows plus what the processes held in leases when it began
    (at most ``lease_fraction`` x capacity each); and a caller may be refused by one process
    while others still hold up to that many unused tokens, until they are returned. Buckets
    too small for a lease of two tokens are exact: one script per take, as ``RedisBuckets``.
    After a refusal, this process refuses locally until a refill could have made room, instead
    of asking Redis for every request of a caller who is over the limit.
    """

    def __init__(
        self,
        shared: RedisBuckets,
        lease_fraction: float = 0.05,
        lease_seconds: float = 1.0,
        max_keys: int = 100_000,
    ) -> None:
        self._shared = shared
        self._fraction = lease_fraction
        self._hold = lease_seconds
        self._max_keys = max_keys
        self._leases: OrderedDict[str, _Lease] = OrderedDict()
        self._returns: list[tuple[str, Limit, float]] = []
        self._sweeper: asyncio.Task[None] | None = None

    async def take_all(
        self, buckets: Sequence[tuple[str, Limit]], cost: float = 1.0
    ) -> list[Decision]:
        return await self._shared.take_all(buckets, cost)  # never leased: all or none, exactly

    def batch(self, limit: Limit) -> int:
        """Tokens one call leases for a bucket of ``limit`` (1: the bucket is exact)."""
        return max(1, math.floor(limit.capacity * self._fraction))

    async def take(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        if cost <= 0:  # looking or giving back: always the shared bucket itself
            return await self._shared.take(key, limit, cost)
        batch = self.batch(limit)
        while True:
            lease = self._lease_of(key, limit)
            if lease.call is not None and batch > 1:
                await asyncio.shield(lease.call)  # one call per bucket at a time; its error too
                continue
            now = time.monotonic()
            if lease.limit == limit and now < lease.expires:
                if lease.tokens >= cost:
                    lease.tokens -= cost
                    return decision_for(limit, lease.visible(now), True, cost)
                if lease.refused and lease.visible(now) < cost:
                    return decision_for(limit, lease.visible(now), False, cost)
            return await self._call(key, lease, limit, cost, batch)

    def _lease_of(self, key: str, limit: Limit) -> _Lease:
        lease = self._leases.get(key)
        if lease is not None:
            self._leases.move_to_end(key)
            return lease
        lease = self._leases[key] = _Lease(limit)
        while len(self._leases) > self._max_keys:
            old_key, old = next(iter(self._leases.items()))
            if old.call is not None:  # in use right now: keep it
                self._leases.move_to_end(old_key)
                continue
            del self._leases[old_key]
            if old.tokens > 0:
                self._returns.append((old_key, old.limit, old.tokens))
        return lease

    async def _call(
        self, key: str, lease: _Lease, limit: Limit, cost: float, batch: int
    ) -> Decision:
        # Leftovers go back in the same script: too few for this cost, expired, or leased
        # under another limit (a key whose limit was changed).
        give_back, lease.tokens = lease.tokens, 0.0
        call: asyncio.Future[None] | None = None
        if batch > 1:
            call = lease.call = asyncio.get_running_loop().create_future()
        try:
            grant = await self._shared.lease(key, limit, cost, batch, give_back)
        except BaseException as exc:
            # The leftovers may or may not have reached Redis: counting them lost never
            # admits too much.
            if call is not None:
                lease.call = None
                if isinstance(exc, Exception):
                    call.set_exception(exc)
                    call.exception()  # waiters raise it; unobserved, it is not logged again
                else:
                    call.set_result(None)  # cancelled: a waiter makes its own call
            raise
        now = time.monotonic()
        lease.limit = limit
        if grant.allowed:
            lease.tokens += grant.granted - cost
        lease.shared, lease.synced = grant.tokens, now
        lease.expires = now + self._hold
        lease.refused = not grant.allowed
        if call is not None:
            lease.call = None
            call.set_result(None)
        return decision_for(limit, lease.visible(now), grant.allowed, cost)

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="ratelimit-leases")

    async def close(self) -> None:
        """Stop sweeping and give every unspent token back (shutdown)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        await self.sweep(everything=True)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._hold)
            await self.sweep()

    async def sweep(self, everything: bool = False) -> None:
        """Give back the tokens of expired leases (of all, with ``everything``) and forget
        idle buckets, in one round trip."""
        now = time.monotonic()
        returns, self._returns = self._returns, []
        for key, lease in list(self._leases.items()):
            if lease.call is not None or (now < lease.expires and not everything):
                continue
            if lease.tokens > 0:
                returns.append((key, lease.limit, lease.tokens))
            del self._leases[key]
        if not returns:
            return
        try:
            await self._shared.give_back(returns)
        except Exception as exc:  # those tokens are lost: fewer admitted, never more
            logger.warning(
                "could not return leased rate-limit tokens",
                extra={"error": str(exc), "buckets": len(returns)},
            )


class Limiter:
    """A backend plus the policy for when that backend cannot be reached. ``exact`` is the
    backend for takes that must never be served from a lease (failed sign-ins); it defaults
    to ``buckets``."""

    def __init__(
        self, buckets: Buckets, fail_open: bool = True, exact: Buckets | None = None
    ) -> None:
        self._buckets = buckets
        self._exact = exact if exact is not None else buckets
        self._fail_open = fail_open

    async def take(
        self, key: str, limit: Limit, cost: float = 1.0, *, exact: bool = False
    ) -> Decision:
        try:
            return await (self._exact if exact else self._buckets).take(key, limit, cost)
        except Exception as exc:
            self._unreachable(exc)
            return self._allowed(limit)

    def _unreachable(self, exc: Exception) -> None:
        """Count and log an unreachable backend; refuse (503) unless failing open."""
        outcome = "allowed" if self._fail_open else "refused"
        BACKEND_ERRORS.labels(outcome=outcome).inc()
        logger.warning(
            "rate limiter backend unreachable", extra={"error": str(exc), "outcome": outcome}
        )
        if not self._fail_open:
            raise ServiceUnavailableError(
                "the rate limiter cannot be reached, so requests are refused for now "
                "(MODELPORT_RATE_LIMIT_FAIL_OPEN=false); try again shortly"
            ) from None

    @staticmethod
    def _allowed(limit: Limit) -> Decision:
        return Decision(
            allowed=True,
            limit=limit.capacity,
            remaining=limit.capacity,
            reset_seconds=0,
            retry_after=0,
        )

    async def take_all(
        self, buckets: Sequence[tuple[str, Limit]], cost: float = 1.0
    ) -> list[Decision]:
        """``cost`` from every bucket or from none, in one atomic step of the exact backend."""
        try:
            return await self._exact.take_all(buckets, cost)
        except Exception as exc:
            self._unreachable(exc)
            return [self._allowed(limit) for _key, limit in buckets]

    def start(self) -> None:
        if isinstance(self._buckets, LeasedBuckets):
            self._buckets.start()

    async def close(self) -> None:
        if isinstance(self._buckets, LeasedBuckets):
            await self._buckets.close()
