"""Accounts, token rotation and API keys. No HTTP here: routers translate the errors."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.auth import api_keys
from modelport.auth.passwords import hash_password, password_problem, verify_password
from modelport.auth.principal import ALL_SCOPES, Principal
from modelport.auth.tables import ApiKey, RefreshToken, User
from modelport.auth.tokens import InvalidTokenError, TokenClaims, TokenCodec
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
    # Argon2 is made to be slow (tens of ms): hashed in a worker thread, not on the loop.
    password_hash = await anyio.to_thread.run_sync(hash_password, password)
    user = User(email=email, password_hash=password_hash, role=role)
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
    stored_hash = user.password_hash if user else None
    if not await anyio.to_thread.run_sync(verify_password, stored_hash, password) or user is None:
        raise UnauthorizedError("email or password is wrong")
    if user.disabled:
        raise ForbiddenError("this account is disabled; ask an administrator")
    return user


async def issue_tokens(
    session: AsyncSession, codec: TokenCodec, user: User, family_id: uuid.UUID | None = None
) -> tuple[str, str]:
    """A new access token and a refresh token recorded in ``family_id`` (a new family if None).
    Both name the family (the session) and the account's token generation, so ending the
    session or disabling the account ends the access token too."""
    family_id = family_id or uuid.uuid4()
    generation = user.token_generation
    access, _ = codec.issue(user.id, "access", family_id=family_id, generation=generation)
    refresh, claims = codec.issue(user.id, "refresh", family_id=family_id, generation=generation)
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


async def _stored_refresh(
    session: AsyncSession, codec: TokenCodec, token: str
) -> tuple[RefreshToken, TokenClaims]:
    try:
        claims = codec.decode(token, "refresh")
    except InvalidTokenError as exc:
        raise UnauthorizedError(f"refresh token rejected: {exc}") from None
    stored = await session.get(RefreshToken, claims.token_id)
    if stored is None or stored.user_id != claims.user_id:
        raise UnauthorizedError("refresh token rejected: unknown token")
    return stored, claims


async def rotate_refresh_token(
    session: AsyncSession, codec: TokenCodec, token: str
) -> tuple[str, str]:
    """Spend ``token`` for a new pair. Spending it twice means it leaked: revoke the family."""
    stored, claims = await _stored_refresh(session, codec, token)
    now = datetime.now(UTC)
    if stored.used_at is not None or stored.revoked_at is not None:
        await _revoke_family(session, stored.family_id, now)
        await session.commit()
        raise UnauthorizedError(
            "refresh token was already used or revoked; every session from it is now signed out"
        )
    user = await active_user(session, stored.user_id)
    if claims.generation != user.token_generation:
        raise UnauthorizedError(SESSION_ENDED_BY_DISABLING)
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
    """Sign out: the family's refresh tokens and the access tokens issued with them end now."""
    stored, _ = await _stored_refresh(session, codec, token)
    await _revoke_family(session, stored.family_id, datetime.now(UTC))


def revoked_families(session: AsyncSession) -> list[uuid.UUID]:
    """The sessions (refresh families) ended in this unit of work, to announce after commit."""
    families: list[uuid.UUID] = session.info.setdefault(_REVOKED_FAMILIES, [])
    return families


_REVOKED_FAMILIES = "modelport.revoked_families"


async def _revoke_family(session: AsyncSession, family_id: uuid.UUID, now: datetime) -> None:
    revoked_families(session).append(family_id)
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


SESSION_ENDED_BY_DISABLING = "this session ended when the account was disabled; sign in again"


async def user_for_access(session: AsyncSession, claims: TokenClaims) -> User:
    """The account behind an access token, in one query that also asks whether the token's
    session was signed out (or its refresh token reused): such a token ends with its session."""
    signed_out = (
        select(RefreshToken.id)
        .where(RefreshToken.family_id == claims.family_id, RefreshToken.revoked_at.is_not(None))
        .exists()
    )
    row = (await session.execute(select(User, signed_out).where(User.id == claims.user_id))).first()
    if row is None:
        raise UnauthorizedError("the account behind this token no longer exists")
    user, ended = row
    if user.disabled:
        raise ForbiddenError("this account is disabled; ask an administrator")
    if claims.generation != user.token_generation:
        raise UnauthorizedError(f"access token rejected: {SESSION_ENDED_BY_DISABLING}")
    if ended:
        raise UnauthorizedError("access token rejected: its session was signed out; sign in again")
    return user


def set_disabled(user: User, disabled: bool) -> None:
    """Disabling ends every session the account had: its tokens carry the old generation, so
    enabling it again later does not bring them back (API keys are paused, not revoked)."""
    if disabled and not user.disabled:
        user.token_generation += 1
    user.disabled = disabled


async def active_user(session: AsyncSession, user_id: uuid.UUID) -> User:
    user = await session.get(User, user_id)
    if user is None:
        raise UnauthorizedError("the account behind this token no longer exists")
    if user.disabled:
        raise ForbiddenError("this account is disabled; ask an administrator")
    return user


# --- API keys -------------------------------------------------------------------------------


def _grant_scopes(creator: Principal, scopes: list[str]) -> list[str]:
    if not set(scopes) <= creator.scopes:
        raise ForbiddenError("a key cannot be given scopes its creator's credentials lack")
    return sorted(set(scopes))


def _grant_expiry(creator: Principal, expires_in_days: int | None, now: datetime) -> datetime:
    """A key made with a key never outlives it: the default lifetime is cut to the creating
    key's expiry; asking explicitly for longer is refused."""
    wanted = now + timedelta(days=expires_in_days or api_keys.DEFAULT_LIFETIME_DAYS)
    ceiling = creator.api_key_expires_at
    if ceiling is None or wanted <= ceiling:
        return wanted
    if expires_in_days is None:
        return ceiling
    days_left = max(int((ceiling - now).total_seconds() // 86400), 0)
    raise ForbiddenError(
        f"this API key expires at {ceiling:%Y-%m-%d %H:%M} UTC and a key it creates cannot "
        f"outlive it: ask for at most {days_left} days, or leave expires_in_days out"
    )


def _grant_rate_limit(creator: Principal, requested: int | None, default: int) -> None:
    """Only administrators set a key's rate limit; through a key, never above that key's own."""
    if not creator.is_admin:
        raise ForbiddenError("only administrators may set a key's rate limit")
    if creator.api_key_id is None:
        return
    own = creator.api_key_rate_limit or default
    if (requested or default) > own:
        raise ForbiddenError(
            f"this API key may make {own} requests per minute; a key it creates or changes "
            "cannot be given more"
        )


def _inherited_rate_limit(creator: Principal, default: int) -> int | None:
    """A key made with a key slower than the default passes its own limit on."""
    own = creator.api_key_rate_limit
    return own if creator.api_key_id is not None and own is not None and own < default else None


async def create_api_key(
    session: AsyncSession,
    creator: Principal,
    *,
    name: str,
    scopes: list[str],
    expires_in_days: int | None = None,
    rate_limit_per_minute: int | None = None,
    default_rate_limit: int,
) -> tuple[ApiKey, str]:
    """A key for ``creator``'s account that can do no more, and last no longer, than the
    credentials creating it. ``None`` for expiry or rate limit means "not asked for"."""
    assert creator.user_id is not None
    granted = _grant_scopes(creator, scopes)
    if rate_limit_per_minute is not None:
        _grant_rate_limit(creator, rate_limit_per_minute, default_rate_limit)
    else:
        rate_limit_per_minute = _inherited_rate_limit(creator, default_rate_limit)
    expires_at = _grant_expiry(creator, expires_in_days, datetime.now(UTC))
    user = await active_user(session, creator.user_id)
    plaintext = api_keys.generate_key()
    key = ApiKey(
        user_id=user.id,
        name=name,
        prefix=api_keys.visible_prefix(plaintext),
        key_hash=api_keys.hash_key(plaintext),
        scopes=granted,
        rate_limit_per_minute=rate_limit_per_minute,
        expires_at=expires_at,
    )
    session.add(key)
    await session.flush()
    return key, plaintext


_UNCHANGED: Any = object()


async def update_api_key(
    session: AsyncSession,
    editor: Principal,
    key_id: uuid.UUID,
    *,
    name: str | None = None,
    scopes: list[str] | None = None,
    rate_limit_per_minute: int | None = _UNCHANGED,
    default_rate_limit: int,
) -> ApiKey:
    """Rename a key, or change its scopes or (administrators) rate limit. Through an API key,
    a key can be widened only up to the editing key and only if it does not outlive it."""
    key = await get_api_key(session, editor, key_id)
    granted = _grant_scopes(editor, scopes) if scopes is not None else None
    widened = granted is not None and not set(granted) <= set(key.scopes)
    if rate_limit_per_minute is not _UNCHANGED:
        _grant_rate_limit(editor, rate_limit_per_minute, default_rate_limit)
        before = key.rate_limit_per_minute or default_rate_limit
        widened = widened or (rate_limit_per_minute or default_rate_limit) > before
    ceiling = editor.api_key_expires_at
    if widened and ceiling is not None and key.expires_at > ceiling:
        raise ForbiddenError(
            f"API key {key.id} expires after this one ({ceiling:%Y-%m-%d %H:%M} UTC): this key "
            "may narrow it but not widen it; use a longer-lived key or sign in"
        )
    if name is not None:
        key.name = name
    if granted is not None:
        key.scopes = granted
    if rate_limit_per_minute is not _UNCHANGED:
        key.rate_limit_per_minute = rate_limit_per_minute
    await session.flush()
    return key


async def principal_for_key_hash(session: AsyncSession, key_hash: str) -> Principal:
    """The key with this SHA-256 and its account, checked (revoked, expired, disabled), as a
    principal with no client address yet (``auth.callers`` remembers it for a few seconds)."""
    row = (
        await session.execute(
            select(ApiKey, User)
            .join(User, User.id == ApiKey.user_id)
            .where(ApiKey.key_hash == key_hash)
        )
    ).first()
    if row is None:
        raise UnauthorizedError("API key rejected: unknown key")
    key, user = row
    if key.revoked_at is not None:
        raise UnauthorizedError("API key rejected: it was revoked")
    if key.expires_at <= datetime.now(UTC):
        raise UnauthorizedError(KEY_EXPIRED)
    if user.disabled:
        raise ForbiddenError("this account is disabled; ask an administrator")
    return Principal(
        client_address="",
        user_id=user.id,
        role=user.role,
        api_key_id=key.id,
        api_key_rate_limit=key.rate_limit_per_minute,
        api_key_expires_at=key.expires_at,
        scopes=frozenset(key.scopes) & ALL_SCOPES,
    )


KEY_EXPIRED = "API key rejected: it has expired"


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
