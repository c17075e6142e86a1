"""Accounts, token rotation and API keys. No HTTP here: routers translate the errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.auth import api_keys
from modelport.auth.passwords import hash_password, password_problem, verify_password
from modelport.auth.principal import ALL_SCOPES, Principal
from modelport.auth.tables import ApiKey, RefreshToken, User
from modelport.auth.tokens import InvalidTokenError, TokenCodec
from modelport.errors import (
    ConflictError,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    UnauthorizedError,
)


def normalize_email(email: str) -> str:
    try:
        result = validate_email(email.strip(), check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidInputError(
            f"email: {exc}", [{"loc": ["body", "email"], "msg": str(exc), "type": "value_error"}]
        ) from None
    return result.normalized.lower()


def _check_password(password: str, email: str) -> None:
    problem = password_problem(password, email)
    if problem:
        raise InvalidInputError(
            f"password: {problem}",
            [{"loc": ["body", "password"], "msg": problem, "type": "password_policy"}],
        )


async def create_user(session: AsyncSession, email: str, password: str, role: str = "user") -> User:
    email = normalize_email(email)
    _check_password(password, email)
    if await session.scalar(select(User.id).where(User.email == email)) is not None:
        raise ConflictError(f"an account for {email} already exists")
    user = User(email=email, password_hash=hash_password(password), role=role)
    session.add(user)
    try:
        await session.flush()
    except IntegrityError:  # a concurrent registration won the race
        await session.rollback()
        raise ConflictError(f"an account for {email} already exists") from None
    return user


async def authenticate(session: AsyncSession, email: str, password: str) -> User:
    try:
        email = normalize_email(email)
    except InvalidInputError:
        email = ""
    user = await session.scalar(select(User).where(User.email == email)) if email else None
    if not verify_password(user.password_hash if user else None, password) or user is None:
        raise UnauthorizedError("email or password is wrong")
    if user.disabled:
        raise ForbiddenError("this account is disabled; ask an administrator")
    return user


async def issue_tokens(
    session: AsyncSession, codec: TokenCodec, user: User, family_id: uuid.UUID | None = None
) -> tuple[str, str]:
    """A new access token and a refresh token recorded in ``family_id`` (a new family if None)."""
    access, _ = codec.issue(user.id, "access")
    refresh, claims = codec.issue(user.id, "refresh", family_id=family_id or uuid.uuid4())
    assert claims.family_id is not None
    session.add(
        RefreshToken(
            id=claims.token_id,
            user_id=user.id,
            family_id=claims.family_id,
            expires_at=claims.expires_at,
        )
    )
    await session.flush()
    return access, refresh


async def _stored_refresh(session: AsyncSession, codec: TokenCodec, token: str) -> RefreshToken:
    try:
        claims = codec.decode(token, "refresh")
    except InvalidTokenError as exc:
        raise UnauthorizedError(f"refresh token rejected: {exc}") from None
    stored = await session.get(RefreshToken, claims.token_id)
    if stored is None or stored.user_id != claims.user_id:
        raise UnauthorizedError("refresh token rejected: unknown token")
    return stored


async def rotate_refresh_token(
    session: AsyncSession, codec: TokenCodec, token: str
) -> tuple[str, str]:
    """Spend ``token`` for a new pair. Spending it twice means it leaked: revoke the family."""
    stored = await _stored_refresh(session, codec, token)
    now = datetime.now(UTC)
    if stored.used_at is not None or stored.revoked_at is not None:
        await _revoke_family(session, stored.family_id, now)
        await session.commit()
        raise UnauthorizedError(
            "refresh token was already used or revoked; every session from it is now signed out"
        )
    user = await active_user(session, stored.user_id)
    # Conditional update: of two concurrent refreshes with one token, only one may win.
    claimed = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == stored.id, RefreshToken.used_at.is_(None))
        .values(used_at=now)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        await _revoke_family(session, stored.family_id, now)
        await session.commit()
        raise UnauthorizedError("refresh token was already used; the session is signed out")
    return await issue_tokens(session, codec, user, stored.family_id)


async def revoke_refresh_token(session: AsyncSession, codec: TokenCodec, token: str) -> None:
    stored = await _stored_refresh(session, codec, token)
    await _revoke_family(session, stored.family_id, datetime.now(UTC))


async def _revoke_family(session: AsyncSession, family_id: uuid.UUID, now: datetime) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def active_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise UnauthorizedError("the account behind this token no longer exists")
    if user.disabled:
        raise ForbiddenError("this account is disabled; ask an administrator")
    return user


# --- API keys -------------------------------------------------------------------------------


async def create_api_key(
    session: AsyncSession,
    user: User,
    *,
    name: str,
    scopes: list[str],
    expires_in_days: int,
    rate_limit_per_minute: int | None = None,
) -> tuple[ApiKey, str]:
    plaintext = api_keys.generate_key()
    key = ApiKey(
        user_id=user.id,
        name=name,
        prefix=api_keys.visible_prefix(plaintext),
        key_hash=api_keys.hash_key(plaintext),
        scopes=sorted(set(scopes)),
        rate_limit_per_minute=rate_limit_per_minute,
        expires_at=datetime.now(UTC) + timedelta(days=expires_in_days),
    )
    session.add(key)
    await session.flush()
    return key, plaintext


async def principal_for_key(
    session: AsyncSession, plaintext: str, client_address: str
) -> Principal:
    """Look the key up by its hash on every call, so a revocation anywhere applies at once."""
    if not api_keys.looks_like_key(plaintext):
        raise UnauthorizedError("API key rejected: not a modelport key")
    row = (
        await session.execute(
            select(ApiKey, User)
            .join(User, User.id == ApiKey.user_id)
            .where(ApiKey.key_hash == api_keys.hash_key(plaintext))
        )
    ).first()
    if row is None:
        raise UnauthorizedError("API key rejected: unknown key")
    key, user = row
    if key.revoked_at is not None:
        raise UnauthorizedError("API key rejected: it was revoked")
    if key.expires_at <= datetime.now(UTC):
        raise UnauthorizedError("API key rejected: it has expired")
    if user.disabled:
        raise ForbiddenError("this account is disabled; ask an administrator")
    return Principal(
        client_address=client_address,
        user_id=user.id,
        role=user.role,
        api_key_id=key.id,
        api_key_rate_limit=key.rate_limit_per_minute,
        scopes=frozenset(key.scopes) & ALL_SCOPES,
    )


async def list_api_keys(session: AsyncSession, user_id: uuid.UUID) -> list[ApiKey]:
    result = await session.scalars(
        select(ApiKey).where(ApiKey.user_id == user_id).order_by(ApiKey.created_at.desc())
    )
    return list(result)


async def get_api_key(session: AsyncSession, principal: Principal, key_id: uuid.UUID) -> ApiKey:
    key = await session.get(ApiKey, key_id)
    if key is None or not principal.can_change(key.user_id):
        raise NotFoundError(f"API key {key_id} not found")
    return key


async def record_key_use(session: AsyncSession, last_used: dict[uuid.UUID, datetime]) -> None:
    """Write remembered last-use times in one statement per key (called off the hot path)."""
    for key_id, when in last_used.items():
        await session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=when))


# --- administration -------------------------------------------------------------------------


async def list_users(session: AsyncSession, offset: int, limit: int) -> list[User]:
    result = await session.scalars(
        select(User).order_by(User.created_at).offset(offset).limit(limit)
    )
    return list(result)


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise NotFoundError(f"user {user_id} not found")
    return user
