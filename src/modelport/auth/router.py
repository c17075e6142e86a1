"""Accounts, tokens, API keys and user administration over HTTP."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response, status

from modelport.auth import service
from modelport.auth.accounts import Accounts
from modelport.auth.context import AuthContext
from modelport.auth.dependencies import (
    AccountsDep,
    AdminDep,
    AuthDep,
    Manager,
    SignedInReader,
    client_address,
    enforce_rate_limit,
)
from modelport.auth.principal import Principal
from modelport.auth.schemas import (
    ApiKeyCreatedOut,
    ApiKeyCreateIn,
    ApiKeyListOut,
    ApiKeyOut,
    ApiKeyUpdateIn,
    Credentials,
    RefreshIn,
    TokenPairOut,
    UserListOut,
    UserOut,
    UserUpdateIn,
)
from modelport.db.dependencies import SessionDep as Session
from modelport.errors import InvalidInputError, UnauthorizedError
from modelport.http.proxies import rate_key
from modelport.ratelimit.buckets import Limit
from modelport.ratelimit.sign_in import SignInLimits, SignInThrottle

router = APIRouter(tags=["accounts"])
NO_STORE = {"Cache-Control": "no-store"}


async def _anonymous_limit(request: Request, auth: AuthDep) -> None:
    await enforce_rate_limit(request, auth, Principal(client_address(request)))


AnonymousLimited = Depends(_anonymous_limit)


def _token_pair(accounts: Accounts, access: str, refresh: str) -> TokenPairOut:
    return TokenPairOut(
        access_token=access,
        refresh_token=refresh,
        expires_in=int(accounts.tokens.access_ttl.total_seconds()),
    )


@router.post(
    "/api/v1/auth/register",
    response_model=UserOut,
    status_code=status.HTTP_201_CREATED,
    dependencies=[AnonymousLimited],
    responses={
        409: {"description": "Email already registered"},
        429: {"description": "Too many requests from this address"},
    },
)
async def register(body: Credentials, accounts: AccountsDep) -> UserOut:
    return UserOut.model_validate(await accounts.register(body.email, body.password))


def _sign_in_throttle(auth: AuthContext) -> SignInThrottle:
    settings = auth.settings
    window = settings.login_window_seconds
    limits = SignInLimits(
        per_pair=Limit(settings.login_failures_allowed, window),
        per_address=Limit(settings.login_address_failures_allowed, window),
        per_account=Limit(
            settings.login_account_failures_allowed, settings.login_account_window_seconds
        ),
    )
    return SignInThrottle(auth.limiter, limits)


def _account_key(email: str) -> str:
    """The account an email names, so respelling it (case, width, Unicode form) buys no tries."""
    try:
        return service.normalize_email(email)
    except InvalidInputError:
        return email.strip().lower()


@router.post(
    "/api/v1/auth/login",
    response_model=TokenPairOut,
    responses={401: {"description": "Wrong email or password"}, 429: {"description": "Slowed"}},
)
async def login(
    body: Credentials,
    request: Request,
    response: Response,
    auth: AuthDep,
    accounts: AccountsDep,
) -> TokenPairOut:
    # Reserved before the password is checked, so concurrent guesses are counted one by one.
    attempt = await _sign_in_throttle(auth).reserve(
        _account_key(body.email), rate_key(client_address(request))
    )
    try:
        access, refresh = await accounts.sign_in(body.email, body.password)
    except UnauthorizedError:
        raise  # a wrong password: the attempt stays counted
    except BaseException:
        await attempt.release()
        raise
    await attempt.release()
    response.headers.update(NO_STORE)
    return _token_pair(accounts, access, refresh)


@router.post(
    "/api/v1/auth/refresh",
    response_model=TokenPairOut,
    dependencies=[AnonymousLimited],
    responses={
        401: {"description": "The refresh token is invalid, expired or already used"},
        429: {"description": "Too many requests from this address"},
    },
)
async def refresh(body: RefreshIn, response: Response, accounts: AccountsDep) -> TokenPairOut:
    access, new_refresh = await accounts.refresh(body.refresh_token)
    response.headers.update(NO_STORE)
    return _token_pair(accounts, access, new_refresh)


@router.post(
    "/api/v1/auth/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[AnonymousLimited],
    responses={
        401: {"description": "The refresh token is invalid or expired"},
        429: {"description": "Too many requests from this address"},
    },
)
async def logout(body: RefreshIn, accounts: AccountsDep) -> Response:
    await accounts.sign_out(body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/api/v1/auth/me", response_model=UserOut)
async def me(principal: SignedInReader, session: Session) -> UserOut:
    assert principal.user_id is not None
    return UserOut.model_validate(await service.active_user(session, principal.user_id))


# --- API keys -------------------------------------------------------------------------------


@router.post(
    "/api/v1/api-keys",
    response_model=ApiKeyCreatedOut,
    status_code=status.HTTP_201_CREATED,
    tags=["api keys"],
)
async def create_api_key(
    body: ApiKeyCreateIn,
    principal: Manager,
    response: Response,
    accounts: AccountsDep,
) -> ApiKeyCreatedOut:
    """A key can do no more than the credentials that create it; one made with another key
    expires no later than that key (a default lifetime is cut to fit, a longer one refused)."""
    asked = body.model_fields_set
    key, plaintext = await accounts.create_api_key(
        principal,
        name=body.name,
        scopes=list(body.scopes),
        expires_in_days=body.expires_in_days if "expires_in_days" in asked else None,
        rate_limit_per_minute=body.rate_limit_per_minute,
    )
    response.headers.update(NO_STORE)
    return ApiKeyCreatedOut(**ApiKeyOut.model_validate(key).model_dump(), key=plaintext)


@router.get("/api/v1/api-keys", response_model=ApiKeyListOut, tags=["api keys"])
async def list_api_keys(principal: Manager, session: Session) -> ApiKeyListOut:
    assert principal.user_id is not None
    keys = await service.list_api_keys(session, principal.user_id)
    return ApiKeyListOut(items=[ApiKeyOut.model_validate(k) for k in keys])


@router.get("/api/v1/api-keys/{key_id}", response_model=ApiKeyOut, tags=["api keys"])
async def get_api_key(key_id: uuid.UUID, principal: Manager, session: Session) -> ApiKeyOut:
    return ApiKeyOut.model_validate(await service.get_api_key(session, principal, key_id))


@router.patch("/api/v1/api-keys/{key_id}", response_model=ApiKeyOut, tags=["api keys"])
async def update_api_key(
    key_id: uuid.UUID,
    body: ApiKeyUpdateIn,
    principal: Manager,
    accounts: AccountsDep,
) -> ApiKeyOut:
    changes: dict[str, Any] = {"name": body.name, "scopes": body.scopes}
    if "rate_limit_per_minute" in body.model_fields_set:
        changes["rate_limit_per_minute"] = body.rate_limit_per_minute
    key = await accounts.update_api_key(principal, key_id, changes)
    return ApiKeyOut.model_validate(key)


@router.delete(
    "/api/v1/api-keys/{key_id}", status_code=status.HTTP_204_NO_CONTENT, tags=["api keys"]
)
async def revoke_api_key(key_id: uuid.UUID, principal: Manager, accounts: AccountsDep) -> Response:
    """Revoke the key: every replica refuses it from the next request on."""
    await accounts.revoke_api_key(principal, key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- users (administrators) -----------------------------------------------------------------


@router.get("/api/v1/users", response_model=UserListOut, tags=["users"])
async def list_users(
    _: AdminDep,
    session: Session,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> UserListOut:
    users = await service.list_users(session, offset, limit)
    return UserListOut(items=[UserOut.model_validate(u) for u in users])


@router.patch("/api/v1/users/{user_id}", response_model=UserOut, tags=["users"])
async def update_user(
    user_id: uuid.UUID, body: UserUpdateIn, _: AdminDep, accounts: AccountsDep
) -> UserOut:
    """Disable or enable an account, or change its role. Administrators only. Disabling ends
    the account's sessions for good: enabling it again does not revive them."""
    user = await accounts.update_user(user_id, role=body.role, disabled=body.disabled)
    return UserOut.model_validate(user)
