"""Redis for the rate-limit tests: database 15 of the local server (MODELPORT_TEST_REDIS_URL).

When Redis is unreachable the Redis tests are skipped locally and *fail* when CI=true."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline

from tests.helpers import OPERATOR
from tests.processes import free_port

REDIS_URL = os.environ.get("MODELPORT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
BACKEND_ERRORS = "modelport_ratelimit_backend_errors_total"


def require_redis(flush: bool = False) -> str:
    """The test Redis URL; ``flush`` empties that one database (never any other)."""
    client = Redis.from_url(REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
        if flush:
            client.flushdb()
    except Exception as exc:
        message = f"Redis is not reachable at {REDIS_URL}: {exc}"
        if IN_CI:
            pytest.fail(message + " (CI=true: the Redis tests must run)")
        pytest.skip(message)
    finally:
        client.close()
    return REDIS_URL


def closed_port_url() -> str:
    """A redis:// URL on a local port nothing listens on: a real, refused connection."""
    return f"redis://127.0.0.1:{free_port()}/15"


def backend_errors(client: TestClient, outcome: str) -> float:
    """The value GET /metrics shows for limiter checks that could not reach the backend."""
    text = client.get("/metrics", headers=OPERATOR).text
    found = re.search(rf'^{BACKEND_ERRORS}{{outcome="{outcome}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


class CountingRedis(AsyncRedis):
    """A real Redis client that counts its round trips: each command, and each pipeline sent."""

    round_trips = 0

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.round_trips += 1
        return await super().execute_command(*args, **options)

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        pipe = super().pipeline(transaction, shard_hint)
        send = pipe.execute

        async def execute(raise_on_error: bool = True) -> list[Any]:
            self.round_trips += 1
            return await send(raise_on_error)

        pipe.execute = execute  # type: ignore[method-assign]
        return pipe
