"""Whether the artifact store and Redis answer, checked cheaply and remembered for a few seconds.

A probe is asked on every /health and /health/ready call, which orchestrators send every few
seconds from every replica, so each check is one cheap request (a HEAD on the bucket, a look at
the folder, a PING), at most one is in flight, its answer is reused for ``ttl`` seconds, and a
caller waits at most ``wait`` seconds for a fresh one: past that it gets the last known state,
so an unreachable store never makes a probe time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from redis.exceptions import RedisError

from modelport.settings import Settings, split_s3_store_url

logger = logging.getLogger(__name__)

CHECK_TIMEOUT_SECONDS = 2.0  # one check gives up after this
WAIT_SECONDS = 1.0  # a caller waits this long for a fresh answer, then takes the last one


@dataclass(frozen=True)
class ProbeResult:
    up: bool
    problem: str | None  # for operators, written for them: no endpoint, bucket or password
    checked_at: float  # time.monotonic()

    def age(self) -> float:
        return max(0.0, time.monotonic() - self.checked_at)


class Probe:
    """One dependency's reachability, checked by ``check`` (raises, or returns None when up)."""

    def __init__(
        self,
        name: str,
        check: Callable[[], Awaitable[None]],
        *,
        ttl: float,
        timeout: float = CHECK_TIMEOUT_SECONDS,
        wait: float = WAIT_SECONDS,
    ) -> None:
        self.name = name
        self._check = check
        self._ttl, self._timeout, self._wait = ttl, timeout, wait
        self._last: ProbeResult | None = None
        self._running: asyncio.Task[ProbeResult] | None = None

    async def state(self) -> ProbeResult:
        last = self._last
        if last is not None and last.age() < self._ttl:
            return last
        if self._running is None or self._running.done():
            self._running = asyncio.create_task(self._run(), name=f"probe {self.name}")
        try:
            # shield: a caller that stops waiting leaves the check running for the next one.
            return await asyncio.wait_for(asyncio.shield(self._running), self._wait)
        except TimeoutError:
            if last is not None:
                return last
            return ProbeResult(False, f"no answer within {self._wait:g} s", time.monotonic())

    async def _run(self) -> ProbeResult:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self._timeout):
                await self._check()
        except TimeoutError:
            result = ProbeResult(False, f"no answer within {self._timeout:g} s", started)
        except Exception as exc:
            result = ProbeResult(False, _problem(exc), started)
        else:
            result = ProbeResult(True, None, started)
        if (self._last is None or self._last.up) and not result.up:
            # Once per outage, with the library's text (which may name hosts: log only).
            logger.warning(
                "health check failed", extra={"component": self.name, "error": result.problem}
            )
        self._last = result
        return result

    async def close(self) -> None:
        if self._running is not None and not self._running.done():
            self._running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._running


class StoreProblem(Exception):
    """What an S3 check found, already worded for operators (see ``_s3_problem``)."""


def _problem(exc: BaseException) -> str:
    if isinstance(exc, StoreProblem):
        return str(exc)
    if isinstance(exc, RedisError):
        return "Redis cannot be reached"
    if isinstance(exc, OSError) and not exc.errno:
        return str(exc)  # one of ours, from _check_writable
    return f"the check failed ({type(exc).__name__})"


# --- the artifact store ------------------------------------------------------------------------


def store_probe(settings: Settings) -> Probe:
    """A HEAD on the bucket for an s3:// store (its own client: one attempt, short timeouts,
    so a probe never waits through the store's retries); for a file:// store, whether its
    folder can be written."""
    store_url = settings.artifact_store
    if urlsplit(store_url).scheme == "s3":
        bucket, _ = split_s3_store_url(store_url)
        # Imported here, like the S3 store itself, so file:// deployments never load boto3.
        from botocore.exceptions import BotoCoreError, ClientError

        client = _s3_probe_client(settings)

        async def check_bucket() -> None:
            try:
                await asyncio.to_thread(client.head_bucket, Bucket=bucket)
            except (BotoCoreError, ClientError) as exc:
                raise StoreProblem(_s3_problem(exc)) from exc

        return Probe("artifact_store", check_bucket, ttl=settings.health_check_seconds)
    root = Path(unquote(urlsplit(store_url).path))

    async def check_folder() -> None:
        _check_writable(root)

    return Probe("artifact_store", check_folder, ttl=settings.health_check_seconds)


def _s3_problem(exc: Exception) -> str:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in {"404", "NoSuchBucket", "NotFound"}:
            return "the bucket does not exist"
        if code in {"403", "AccessDenied", "Forbidden"}:
            return "access to the bucket is denied (check the credentials)"
        return f"the store answered with an error ({code or 'unknown'})"
    return "the store cannot be reached"  # a BotoCoreError: no answer from the endpoint


def _s3_probe_client(settings: Settings) -> Any:
    import boto3
    from botocore.config import Config

    secret = settings.s3_secret_access_key
    session = boto3.session.Session(
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret is not None else None,
        region_name=settings.s3_region,
    )
    timeout = min(settings.s3_connect_timeout, CHECK_TIMEOUT_SECONDS)
    config = Config(
        connect_timeout=timeout,
        read_timeout=CHECK_TIMEOUT_SECONDS,
        retries={"total_max_attempts": 1},
    )
    return session.client("s3", endpoint_url=settings.s3_endpoint_url, config=config)


def _check_writable(root: Path) -> None:
    """The store's folder, or (before the first upload made it) the nearest folder above it,
    is a folder this process may write to."""
    folder = root
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise OSError("the store's folder is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OSError("the store's folder cannot be written")


# --- Redis -------------------------------------------------------------------------------------


def redis_probe(redis: Redis, ttl: float) -> Probe:
    async def ping() -> None:
        await redis.ping()

    return Probe("redis", ping, ttl=ttl)
