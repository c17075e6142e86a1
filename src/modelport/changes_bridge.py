"""Carries changes between replicas, so what one process announces (a key revoked, an account
disabled, a session ended, an alias moved) is forgotten by the caches of every other at once.

Through Redis pub/sub when MODELPORT_REDIS_URL is set, else through PostgreSQL LISTEN/NOTIFY
when the database is PostgreSQL; with neither (SQLite, no Redis) there is nothing to bridge.
Each message is JSON ``{"topic", "subject", "origin"}``; ``origin`` names the sending process,
which ignores its own messages (its listeners heard the change already). A received change is
announced on the local hub with ``remote=True`` and never sent on again. A message can only make
a cache forget, never grant anything, so a forged one costs at most a database read.

If the channel drops, the bridge reconnects with backoff; meanwhile each cache trusts what it
holds for its own lifetime at most (MODELPORT_AUTH_CACHE_SECONDS,
MODELPORT_REGISTRY_CACHE_SECONDS). On every (re)connection what the caches hold is read again
before it is trusted, since changes made while the channel was away were not heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, get_args

import asyncpg  # type: ignore[import-untyped]
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.ext.asyncio import AsyncEngine

from modelport.changes import Change, ChangeHub, Topic

logger = logging.getLogger(__name__)

REDIS_CHANNEL = "modelport:changes"
POSTGRES_CHANNEL = "modelport_changes"
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
# How often an idle channel is checked, so a dead connection is noticed and replaced.
KEEPALIVE_SECONDS = 5.0
OUTBOX_SIZE = 10_000
_TOPICS: frozenset[str] = frozenset(get_args(Topic))
_MAX_SUBJECT = 512


def encode(change: Change, origin: str) -> str:
    return json.dumps({"topic": change.topic, "subject": change.subject, "origin": origin})


def decode(payload: str | bytes, own_origin: str) -> Change | None:
    """The change another process sent, or None for our own message or a malformed one."""
    try:
        message = json.loads(payload)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        logger.warning("ignored a malformed change message")
        return None
    topic, subject, origin = message.get("topic"), message.get("subject"), message.get("origin")
    if origin == own_origin:
        return None
    if topic not in _TOPICS or not isinstance(subject, str) or len(subject) > _MAX_SUBJECT:
        logger.warning("ignored a malformed change message")
        return None
    return Change(topic, subject, remote=True)


class ChangeBridge(ABC):
    """Sends this process's changes to the channel and announces the others' on ``hub``."""

    kind: str

    def __init__(self, hub: ChangeHub, on_connect: Callable[[], None]) -> None:
        self._hub = hub
        self._on_connect = on_connect
        self.origin = uuid.uuid4().hex
        self.connected = False
        self._outbox: asyncio.Queue[Change] = asyncio.Queue(OUTBOX_SIZE)
        self._unsent: Change | None = None
        self._task: asyncio.Task[None] | None = None
        hub.subscribe(self._local_change)

    def _local_change(self, change: Change) -> None:
        if change.remote or self._task is None:
            return
        try:
            self._outbox.put_nowait(change)
        except asyncio.QueueFull:
            logger.warning(
                "change not sent to other replicas (outbox full); they apply it within their "
                "cache lifetime",
                extra={"topic": change.topic},
            )

    def _remote_change(self, payload: str | bytes) -> None:
        change = decode(payload, self.origin)
        if change is not None:
            self._hub.publish(change)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"change-bridge-{self.kind}")

    async def stop(self, drain_seconds: float = 1.0) -> None:
        """Send what is still queued (briefly, if connected), then close the channel."""
        if self._task is None:
            return
        if self.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outbox.join(), drain_seconds)
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def _run(self) -> None:
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                await self._connect()
                self._on_connect()  # changes made while we were away were not heard
                self.connected = True
                logger.info("carrying changes between replicas", extra={"channel": self.kind})
                delay = RETRY_FIRST_SECONDS
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._receive())
                    group.create_task(self._send())
            except Exception as exc:
                logger.warning(
                    "the channel between replicas is down; caches trust what they hold for "
                    "their lifetime at most; retrying",
                    extra={"channel": self.kind, "error": _reason(exc), "retry_in": delay},
                )
            finally:
                self.connected = False
                with contextlib.suppress(Exception):
                    await self._disconnect()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX_SECONDS)

    async def _send(self) -> None:
        while True:
            if self._unsent is None:
                self._unsent = await self._outbox.get()
            await self._publish(encode(self._unsent, self.origin))
            self._unsent = None
            self._outbox.task_done()

    @abstractmethod
    async def _connect(self) -> None: ...

    @abstractmethod
    async def _receive(self) -> None:
        """Deliver messages until the connection fails (raise) or the task is cancelled."""

    @abstractmethod
    async def _publish(self, payload: str) -> None: ...

    @abstractmethod
    async def _disconnect(self) -> None: ...


def _reason(exc: BaseException) -> str:
    """The first cause, without URLs or credentials (drivers' messages name host and port)."""
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _reason(exc.exceptions[0])
    return type(exc).__name__


class RedisChangeBridge(ChangeBridge):
    kind = "redis"

    def __init__(self, hub: ChangeHub, on_connect: Callable[[], None], url: str) -> None:
        super().__init__(hub, on_connect)
        # No silent reconnects inside the client: a subscription that was away may have missed
        # messages, and only a reconnection this bridge sees makes the caches read again.
        self._redis = Redis.from_url(
            url,
            socket_connect_timeout=2,
            socket_keepalive=True,
            health_check_interval=10,
            retry=Retry(NoBackoff(), 0),
        )
        # Pub/sub channels are shared by every database of a Redis server: the database
        # number keeps deployments on one server (each on its own database) apart.
        db = self._redis.connection_pool.connection_kwargs.get("db", 0)
        self.channel = f"{REDIS_CHANNEL}:{db}"
        self._pubsub: PubSub | None = None

    async def _connect(self) -> None:
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self.channel)

    async def _receive(self) -> None:
        assert self._pubsub is not None
        while True:
            message = await self._pubsub.get_message(timeout=KEEPALIVE_SECONDS)
            if message is not None and message.get("type") == "message":
                self._remote_change(message["data"])

    async def _publish(self, payload: str) -> None:
        await self._redis.publish(self.channel, payload)

    async def _disconnect(self) -> None:
        if self._pubsub is not None:
            pubsub, self._pubsub = self._pubsub, None
            await pubsub.aclose()

    async def stop(self, drain_seconds: float = 1.0) -> None:
        await super().stop(drain_seconds)
        await self._redis.aclose()


class PostgresChangeBridge(ChangeBridge):
    """LISTEN on one dedicated connection (not from the pool; a transaction-pooling proxy in
    between would lose it), NOTIFY through the same connection."""

    kind = "postgresql"

    def __init__(self, hub: ChangeHub, on_connect: Callable[[], None], engine: AsyncEngine) -> None:
        super().__init__(hub, on_connect)
        _args, params = engine.dialect.create_connect_args(engine.url)
        accepted = inspect.signature(asyncpg.connect).parameters
        self._connect_params: dict[str, Any] = {
            name: value for name, value in params.items() if name in accepted
        }
        self._connect_params.update(timeout=5, command_timeout=10)
        self._connection: asyncpg.Connection | None = None
        self._busy = asyncio.Lock()  # one statement at a time on a connection

    async def _connect(self) -> None:
        self._connection = await asyncpg.connect(**self._connect_params)
        await self._connection.add_listener(POSTGRES_CHANNEL, self._notified)

    def _notified(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self._remote_change(payload)

    async def _receive(self) -> None:
        # Notifications arrive through the listener; this only notices a dead connection.
        while True:
            await asyncio.sleep(KEEPALIVE_SECONDS)
            assert self._connection is not None
            async with self._busy:
                await self._connection.execute("SELECT 1")

    async def _publish(self, payload: str) -> None:
        assert self._connection is not None
        async with self._busy:
            await self._connection.execute("SELECT pg_notify($1, $2)", POSTGRES_CHANNEL, payload)

    async def _disconnect(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close(timeout=2)


def open_change_bridge(
    hub: ChangeHub,
    on_connect: Callable[[], None],
    *,
    redis_url: str | None,
    engine: AsyncEngine,
) -> ChangeBridge | None:
    """Redis when configured, else PostgreSQL's own channel, else none (one process)."""
    if redis_url:
        return RedisChangeBridge(hub, on_connect, redis_url)
    if engine.dialect.name == "postgresql":
        return PostgresChangeBridge(hub, on_connect, engine)
    return None
