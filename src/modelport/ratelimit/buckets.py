"""Token-bucket backends. Memory for one process; Redis (one atomic script) for many replicas."""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
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


def _decide(limit: Limit, tokens: float, allowed: bool, cost: float) -> Decision:
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
        # No await from read to write: concurrent takes on one event loop cannot interleave.
        signing_in = key.startswith(SIGN_IN_PREFIX)
        pool = self._pools[signing_in]
        now = time.monotonic()
        tokens, stamp = pool.pop(key, (float(limit.capacity), now))
        tokens = min(float(limit.capacity), tokens + (now - stamp) * limit.rate)
        allowed = tokens >= cost
        if allowed:
            tokens = min(float(limit.capacity), tokens - cost)
        pool[key] = (tokens, now)  # re-inserted: now the most recently used
        while len(pool) > self._bounds[signing_in]:
            pool.popitem(last=False)
        return _decide(limit, tokens, allowed, cost)


# Refill, take and store in one step on the Redis server, with the server's clock.
_TAKE_SCRIPT = """
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens = tonumber(state[1]) or capacity
local stamp = tonumber(state[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - stamp) * rate)
local allowed = 0
if tokens >= cost then
  tokens = math.min(capacity, tokens - cost)
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(capacity / rate) + 1)
return {allowed, tostring(tokens)}
"""


class RedisBuckets:
    def __init__(self, client: Redis, prefix: str = "modelport:rl:") -> None:
        self._client = client
        self._prefix = prefix
        self._script = client.register_script(_TAKE_SCRIPT)

    async def take(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        allowed, tokens = await self._script(
            keys=[self._prefix + key], args=[limit.capacity, limit.rate, cost]
        )
        return _decide(limit, float(tokens), bool(int(allowed)), cost)


class Limiter:
    """A backend plus the policy for when that backend cannot be reached."""

    def __init__(self, buckets: Buckets, fail_open: bool = True) -> None:
        self._buckets = buckets
        self._fail_open = fail_open

    async def take(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        try:
            return await self._buckets.take(key, limit, cost)
        except Exception as exc:
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
            return Decision(
                allowed=True,
                limit=limit.capacity,
                remaining=limit.capacity,
                reset_seconds=0,
                retry_after=0,
            )
