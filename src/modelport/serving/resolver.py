"""Name/alias -> version lookups, remembered for a few seconds to keep the hot path off SQL."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.auth.principal import Principal
from modelport.caching import RecentCache
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


# Distinct answers kept per process (model x alias or version); the least recently used go.
MAX_ENTRIES = 4096


def _registry_unreachable(error: Exception) -> bool:
    """Only an unreachable registry is answered from what it last said; "not found" is final."""
    return not isinstance(error, NotFoundError)


class VersionResolver:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession], ttl: float) -> None:
        self._session_factory = session_factory
        self._cache: RecentCache[_Key, VersionRef] = RecentCache(ttl, MAX_ENTRIES)

    @property
    def loads(self) -> int:
        """Registry reads started so far (concurrent callers of one key share one)."""
        return self._cache.loads

    async def resolve(self, name: str, version: int | None, alias: str | None) -> VersionRef:
        """The version ``name`` at ``version`` or ``alias`` names. When the remembered answer
        is older than the cache lifetime, one caller per key reads the registry and the others
        wait for that read. If the registry cannot be reached, what it last said is served
        rather than failing predictions whose model is already in memory; changes apply once
        it is back."""

        async def load() -> VersionRef:
            async with self._session_factory() as session:
                return await registry.resolve(session, name, version, alias)

        return await self._cache.get(
            _key(name, version, alias), load, stale_on=_registry_unreachable
        )

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
        self._cache.put(_key(ref.model_name, None, alias), ref)

    def invalidate(self) -> None:
        self._cache.clear()

    def expire_all(self) -> None:
        """Read every answer again before trusting it, keeping it for a registry outage
        (changes may have gone unheard while the channel between replicas was away)."""
        self._cache.expire_all()

    def forget(self, change: Change) -> None:
        """A model, version or alias changed (here or on another replica): forget what was
        remembered of that model; the next request asks the registry again."""
        if change.topic in REGISTRY_TOPICS:
            self._cache.forget_where(lambda key, _ref: key[0] == change.subject)
