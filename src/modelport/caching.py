"""A small per-process cache for answers read on every request that rarely change (who is
calling, which version an alias names): bounded (the least recently used go first), trusted
for ``ttl`` seconds, and loaded once per key however many callers ask at the same moment.

Only answers are stored, never failures: a load that raises is shared by the callers waiting
for it at that moment and then forgotten, so what was refused is asked again next time.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class RecentCache(Generic[K, V]):
    def __init__(self, ttl: float, max_entries: int) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._flights: dict[K, asyncio.Task[V]] = {}
        # Bumped by every forget: a load that began before it may have read what the change
        # replaced, so its answer goes to the callers already waiting and is not stored.
        self._epoch = 0
        self.loads = 0  # loads started, for tests and operators

    def __len__(self) -> int:
        return len(self._entries)

    async def get(
        self,
        key: K,
        load: Callable[[], Awaitable[V]],
        *,
        stale_on: Callable[[Exception], bool] | None = None,
    ) -> V:
        """The remembered answer while fresh; else the one load in flight for ``key`` (started
        now if none is). ``stale_on(error)``: a failed load answers with the last value kept
        for ``key``, however old, when this says the error allows it (an unreachable store)."""
        entry = self._entries.get(key)
        if entry is not None and time.monotonic() - entry[0] < self._ttl:
            self._entries.move_to_end(key)
            return entry[1]
        flight = self._flights.get(key)
        if flight is None:
            flight = asyncio.get_running_loop().create_task(self._load(key, load, stale_on))
            self._flights[key] = flight
            flight.add_done_callback(partial(self._landed, key))
        # Shielded: a caller that goes away (a client hanging up) does not cancel the load the
        # others wait for.
        return await asyncio.shield(flight)

    async def _load(
        self,
        key: K,
        load: Callable[[], Awaitable[V]],
        stale_on: Callable[[Exception], bool] | None,
    ) -> V:
        epoch = self._epoch
        self.loads += 1
        try:
            value = await load()
        except Exception as exc:
            kept = self._entries.get(key)
            if kept is not None and stale_on is not None and stale_on(exc):
                return kept[1]
            if self._epoch == epoch:
                self._entries.pop(key, None)  # what was kept is no longer the answer
            raise
        if self._epoch == epoch:
            self.put(key, value)
        return value

    def _landed(self, key: K, flight: asyncio.Task[V]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.cancelled():
            flight.exception()  # seen here, so a failure nobody awaited any more is not logged

    def put(self, key: K, value: V) -> None:
        self._entries[key] = (time.monotonic(), value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def forget(self, key: K) -> None:
        self._entries.pop(key, None)

    def forget_where(self, matches: Callable[[K, V], bool]) -> None:
        """Drop every entry ``matches``; loads in flight are left to their callers, and those
        asking from now on start a new one (which sees the change)."""
        self._epoch += 1
        self._flights.clear()
        for key in [key for key, (_, value) in self._entries.items() if matches(key, value)]:
            del self._entries[key]

    def clear(self) -> None:
        self.forget_where(lambda _key, _value: True)

    def expire_all(self) -> None:
        """Trust nothing held without reading it again, but keep it for ``stale_on``."""
        self._epoch += 1
        self._flights.clear()
        for key, (_, value) in list(self._entries.items()):
            self._entries[key] = (float("-inf"), value)
