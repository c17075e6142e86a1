"""Name/alias -> version lookups, remembered for a few seconds to keep the hot path off SQL."""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.registry import service as registry
from modelport.registry.service import VersionRef

_Key = tuple[str, int | None, str | None]


class VersionResolver:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession], ttl: float) -> None:
        self._session_factory = session_factory
        self._ttl = ttl
        self._cache: dict[_Key, tuple[float, VersionRef]] = {}

    async def resolve(self, name: str, version: int | None, alias: str | None) -> VersionRef:
        key = (name, version, alias)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        async with self._session_factory() as session:
            ref = await registry.resolve(session, name, version, alias)
        self._cache[key] = (now, ref)
        return ref

    def invalidate(self) -> None:
        self._cache.clear()
