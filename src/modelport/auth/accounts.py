"""Every change to accounts, sessions and API keys as one unit of work: write, commit, then
announce what ended (a session, a key, an account's access), so caches of who is calling forget
it here and on other replicas."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.auth import service
from modelport.auth.principal import Principal
from modelport.auth.tables import ApiKey, User
from modelport.auth.tokens import TokenCodec
from modelport.changes import Change, ChangeHub
from modelport.errors import ForbiddenError


class Accounts:
    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        tokens: TokenCodec,
        changes: ChangeHub,
        *,
        allow_registration: bool,
        default_key_rate_limit: int,
    ) -> None:
        self._sessions = sessions
        self.tokens = tokens
        self._changes = changes
        self._allow_registration = allow_registration
        self._default_key_rate_limit = default_key_rate_limit

    def _announce_ended_sessions(self, session: AsyncSession) -> None:
        for family_id in service.revoked_families(session):
            self._changes.publish(Change("session", str(family_id)))

    async def register(self, email: str, password: str) -> User:
        if not self._allow_registration:
            raise ForbiddenError("self-registration is turned off; ask an administrator")
        async with self._sessions() as session:
            user = await service.create_user(session, email, password)
            await session.commit()
        return user

    async def sign_in(self, email: str, password: str) -> tuple[str, str]:
        """An access and a refresh token for the right password."""
        async with self._sessions() as session:
            user = await service.authenticate(session, email, password)
            pair = await service.issue_tokens(session, self.tokens, user)
            await session.commit()
        return pair

    async def refresh(self, token: str) -> tuple[str, str]:
        async with self._sessions() as session:
            try:
                pair = await service.rotate_refresh_token(session, self.tokens, token)
                await session.commit()
            finally:  # a reused token ends its whole session, and that is committed too
                self._announce_ended_sessions(session)
        return pair

    async def sign_out(self, token: str) -> None:
        async with self._sessions() as session:
            await service.revoke_refresh_token(session, self.tokens, token)
            await session.commit()
        self._announce_ended_sessions(session)

    async def create_api_key(
        self,
        creator: Principal,
        *,
        name: str,
        scopes: list[str],
        expires_in_days: int | None,
        rate_limit_per_minute: int | None,
    ) -> tuple[ApiKey, str]:
        async with self._sessions() as session:
            key, plaintext = await service.create_api_key(
                session,
                creator,
                name=name,
                scopes=scopes,
                expires_in_days=expires_in_days,
                rate_limit_per_minute=rate_limit_per_minute,
                default_rate_limit=self._default_key_rate_limit,
            )
            await session.commit()
        return key, plaintext

    async def update_api_key(
        self, editor: Principal, key_id: uuid.UUID, changes: dict[str, Any]
    ) -> ApiKey:
        """``changes``: name, scopes, and rate_limit_per_minute only when it was sent."""
        async with self._sessions() as session:
            key = await service.update_api_key(
                session,
                editor,
                key_id,
                default_rate_limit=self._default_key_rate_limit,
                **changes,
            )
            await session.commit()
        self._changes.publish(Change("api_key", str(key_id)))
        return key

    async def revoke_api_key(self, owner: Principal, key_id: uuid.UUID) -> None:
        """Revoke the key: every replica refuses it from the next request on."""
        async with self._sessions() as session:
            key = await service.get_api_key(session, owner, key_id)
            if key.revoked_at is not None:
                return
            key.revoked_at = datetime.now(UTC)
            await session.commit()
        self._changes.publish(Change("api_key", str(key_id)))

    async def update_user(
        self, user_id: uuid.UUID, *, role: str | None, disabled: bool | None
    ) -> User:
        """Disable or enable an account, or change its role. Disabling ends the account's
        sessions for good: enabling it again does not revive them."""
        async with self._sessions() as session:
            user = await service.get_user(session, user_id)
            if role is not None:
                user.role = role
            if disabled is not None:
                service.set_disabled(user, disabled)
            await session.commit()
        self._changes.publish(Change("user", str(user_id)))
        return user
