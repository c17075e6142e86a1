"""Name/alias -> version lookups, remembered for a few seconds to keep the hot path off SQL."""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.auth.principal import Principal
from modelport.changes import REGISTRY_TOPICS, Change
from modelport.errors import ModelportError, NotFoundError, ServiceUnavailableError
from modelport.registry import service as registry
from modelport.registry.service import VersionRef

_Key = tuple[str, int | None, str | None]


def _key(name: str, version: int | None, alias: str | None) -> _Key:
    """One key per answer: no alias means production, and a version makes the alias moot."""
    if version is not None:
        return (name, version, None)
    return (name, None, alias or registry.DEFAULT_ALIAS)


class VersionResolver:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession], ttl: float) -> None:
        self._session_factory = session_factory
        self._ttl = ttl
        self._cache: dict[_Key, tuple[float, VersionRef]] = {}

    async def resolve(self, name: str, version: int | None, alias: str | None) -> VersionRef:
        key = _key(name, version, alias)
        hit = self._cache.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < self._ttl:
            return hit[1]
        try:
            async with self._session_factory() as session:
                ref = await registry.resolve(session, name, version, alias)
        except NotFoundError:
            self._cache.pop(key, None)
            raise
        except Exception:
            # The registry is unreachable: keep serving what it last said rather than fail
            # predictions whose model is already in memory. Changes apply once it is back.
            if hit is not None:
                return hit[1]
            raise
        self._cache[key] = (now, ref)
        return ref

    async def resolve_for(
        self, caller: Principal, name: str, version: int | None, alias: str | None
    ) -> VersionRef:
        """Resolve for ``caller``: a model they may not see is "not found", whatever was asked
        of it ("no version 9" would reveal that it exists); a registry that cannot be reached
        is a 503 that shows no SQL or driver text."""
        try:
            ref = await self.resolve(name, version, alias)
        except registry.MissingVersionError as exc:
            if not caller.can_see(exc.owner_id, exc.public):
                raise NotFoundError(f"model {name!r} not found") from None
            raise
        except ModelportError:
            raise
        except Exception as exc:
            raise ServiceUnavailableError(
                "the model registry cannot be reached right now; try again shortly"
            ) from exc
        if not caller.can_see(ref.owner_id, ref.public):
            raise NotFoundError(f"model {name!r} not found")
        return ref

    def remember(self, ref: VersionRef, alias: str) -> None:
        """Seed the answer for ``name`` via ``alias`` (start-up preload knows it already)."""
        self._cache[_key(ref.model_name, None, alias)] = (time.monotonic(), ref)

    def invalidate(self) -> None:
        self._cache.clear()

    def forget(self, change: Change) -> None:
        """A model, version or alias changed (here or on another replica): forget what was
        remembered of that model; the next request asks the registry again."""
        if change.topic in REGISTRY_TOPICS:
            for key in [key for key in self._cache if key[0] == change.subject]:
                self._cache.pop(key, None)
