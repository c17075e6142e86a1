"""Who is calling, remembered for a few seconds per process so a request with an API key or a
token does not wait for the database.

What is remembered: an API key (by its SHA-256) as the principal it stands for, and an access
token's session (account, refresh family and token generation) as the account's role. Only
accepted credentials are remembered: a refusal is always read again, so a key made a moment ago
works at once. Each is trusted for ``MODELPORT_AUTH_CACHE_SECONDS`` at most and forgotten as
soon as the change hub announces its key revoked or changed, its account disabled or changed, or
its session ended, here or (carried by the change bridge) on another replica. A key's expiry is
checked on every request, cached or not; a token's is checked when it is decoded.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.auth import api_keys, service
from modelport.auth.principal import ALL_SCOPES, Principal
from modelport.auth.tokens import TokenClaims
from modelport.caching import RecentCache
from modelport.changes import Change
from modelport.errors import UnauthorizedError

# Keys and sessions kept per process; past this the least recently used are read again.
MAX_ENTRIES = 4096

_Session = tuple[uuid.UUID, uuid.UUID | None, int]  # account, refresh family, token generation


class Callers:
    def __init__(self, session_factory: async_sessionmaker[AsyncSession], ttl: float) -> None:
        self._session_factory = session_factory
        self._keys: RecentCache[str, Principal] = RecentCache(ttl, MAX_ENTRIES)
        self._sessions: RecentCache[_Session, str] = RecentCache(ttl, MAX_ENTRIES)

    @property
    def loads(self) -> int:
        """Database reads started so far (concurrent requests with one credential share one)."""
        return self._keys.loads + self._sessions.loads

    async def for_key(self, plaintext: str, client_address: str) -> Principal:
        if not api_keys.looks_like_key(plaintext):
            raise UnauthorizedError("API key rejected: not a modelport key")
        key_hash = api_keys.hash_key(plaintext)

        async def load() -> Principal:
            async with self._session_factory() as session:
                return await service.principal_for_key_hash(session, key_hash)

        principal = await self._keys.get(key_hash, load)
        expires_at = principal.api_key_expires_at
        if expires_at is not None and expires_at <= datetime.now(UTC):
            self._keys.forget(key_hash)
            raise UnauthorizedError(service.KEY_EXPIRED)
        return replace(principal, client_address=client_address)

    async def for_access(self, claims: TokenClaims, client_address: str) -> Principal:
        """The signed-in caller of a decoded (signature and expiry checked) access token."""

        async def load() -> str:
            async with self._session_factory() as session:
                # One query: the account, and whether this token's session has been ended.
                user = await service.user_for_access(session, claims)
            return user.role

        key = (claims.user_id, claims.family_id, claims.generation)
        role = await self._sessions.get(key, load)
        return Principal(client_address, user_id=claims.user_id, role=role, scopes=ALL_SCOPES)

    def forget(self, change: Change) -> None:
        """Forget what ``change`` ends or alters; the next request reads it again."""
        subject = change.subject
        if change.topic == "api_key":
            self._keys.forget_where(lambda _hash, key: str(key.api_key_id) == subject)
        elif change.topic == "user":
            self._keys.forget_where(lambda _hash, key: str(key.user_id) == subject)
            self._sessions.forget_where(lambda session, _role: str(session[0]) == subject)
        elif change.topic == "session":
            self._sessions.forget_where(lambda session, _role: str(session[1]) == subject)

    def expire_all(self) -> None:
        """Read everything again before trusting it (changes may have gone unheard)."""
        self._keys.expire_all()
        self._sessions.expire_all()
