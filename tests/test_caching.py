"""The per-process cache behind the caller and alias caches: one load per key at a time, a
change during a load never leaves the old answer behind, bounded in entries."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from modelport.caching import RecentCache
from tests.helpers import run


class Source:
    """Answers what ``value`` was when a load started, once that load is released; counts the
    loads asked of it."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.loads = 0
        self.releases: list[asyncio.Event] = []

    async def started(self, loads: int) -> None:
        while self.loads < loads:
            await asyncio.sleep(0)

    def release(self, load: int) -> None:
        self.releases[load - 1].set()

    async def load(self) -> str:
        self.loads += 1
        value = self.value  # read when the load starts, as a database read would
        released = asyncio.Event()
        self.releases.append(released)
        await released.wait()
        return value


def test_a_change_during_a_load_is_not_overwritten_by_its_old_answer() -> None:
    async def scenario() -> tuple[str, str, str, int]:
        cache: RecentCache[str, str] = RecentCache(ttl=300, max_entries=10)
        source = Source("before")
        early = asyncio.create_task(cache.get("k", source.load))
        await source.started(1)  # the load has read "before" and waits
        source.value = "after"
        cache.forget_where(lambda key, _value: key == "k")  # the change is announced
        late = asyncio.create_task(cache.get("k", source.load))  # asks after the change
        await source.started(2)
        source.release(2)
        answered_late = await late
        source.release(1)  # the old read lands last
        answered_early = await early
        then = await cache.get("k", source.load)
        return answered_early, answered_late, then, source.loads

    early, late, then, loads = run(scenario())
    assert early == "before"  # asked before the change: answered as then
    assert (late, then) == ("after", "after")  # asked after it: never the old answer
    assert loads == 2


def test_a_caller_that_goes_away_does_not_cancel_the_load_others_wait_for() -> None:
    async def scenario() -> tuple[str, int]:
        cache: RecentCache[str, str] = RecentCache(ttl=300, max_entries=10)
        source = Source("v")
        leaver = asyncio.create_task(cache.get("k", source.load))
        stayer = asyncio.create_task(cache.get("k", source.load))
        await source.started(1)
        leaver.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaver
        source.release(1)
        return await stayer, source.loads

    assert run(scenario()) == ("v", 1)


def test_a_failed_load_is_shared_then_forgotten_unless_a_stale_answer_may_stand() -> None:
    class Down(Exception):
        pass

    async def scenario() -> None:
        cache: RecentCache[str, str] = RecentCache(ttl=0, max_entries=10)
        calls = 0

        async def failing() -> str:
            nonlocal calls
            calls += 1
            await asyncio.sleep(0)
            raise Down

        results = await asyncio.gather(
            *(cache.get("k", failing) for _ in range(5)), return_exceptions=True
        )
        assert calls == 1 and all(isinstance(r, Down) for r in results)
        with pytest.raises(Down):
            await cache.get("k", failing)
        assert calls == 2  # a failure is not remembered

        async def ok() -> str:
            return "last"

        assert await cache.get("k", ok) == "last"
        # ttl 0: never fresh, but kept for an outage when the error allows it
        assert await cache.get("k", failing, stale_on=lambda e: isinstance(e, Down)) == "last"
        with pytest.raises(Down):
            await cache.get("k", failing, stale_on=lambda e: False)
        with pytest.raises(Down):  # and that refusal dropped it
            await cache.get("k", failing, stale_on=lambda e: True)

    run(scenario())


def test_the_least_recently_used_entries_go_first() -> None:
    async def scenario() -> list[str]:
        cache: RecentCache[str, str] = RecentCache(ttl=300, max_entries=2)
        loaded: list[str] = []

        def loader(key: str) -> Callable[[], Awaitable[str]]:
            async def load() -> str:
                loaded.append(key)
                return key

            return load

        for key in ("a", "b", "a", "c", "a", "b"):
            await cache.get(key, loader(key))
        assert len(cache) == 2
        return loaded

    assert run(scenario()) == ["a", "b", "c", "b"]
