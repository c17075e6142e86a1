"""Who is calling, what they may do, and their rate limit: FastAPI dependencies."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, TypeVar

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from modelport.auth.accounts import Accounts
from modelport.auth.context import AuthContext
from modelport.auth.principal import Principal
from modelport.auth.tokens import InvalidTokenError
from modelport.errors import ForbiddenError, TooManyRequestsError, UnauthorizedError
from modelport.http.proxies import rate_key
from modelport.http.uploads import is_multipart
from modelport.ratelimit.buckets import Limit
from modelport.settings import Settings

bearer_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="BearerJWT",
    description="Access token from POST /api/v1/auth/login (valid 15 minutes by default).",
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key (mp_...) from POST /api/v1/api-keys.",
)


async def get_auth_context(request: Request) -> AuthContext:
    auth: AuthContext = request.app.state.auth
    return auth


async def get_accounts(request: Request) -> Accounts:
    accounts: Accounts = request.app.state.accounts
    return accounts


AuthDep = Annotated[AuthContext, Depends(get_auth_context)]
AccountsDep = Annotated[Accounts, Depends(get_accounts)]


def client_address(request: Request) -> str:
    """The socket's address, or the client a trusted proxy named (the request middleware
    resolved it from MODELPORT_TRUSTED_PROXIES before any route ran)."""
    return request.client.host if request.client else "unknown"


async def _identify(
    request: Request,
    auth: AuthContext,
    credentials: HTTPAuthorizationCredentials | None,
    api_key: str | None,
) -> Principal:
    address = client_address(request)
    if api_key:
        # Read from the database at most every MODELPORT_AUTH_CACHE_SECONDS (auth.callers).
        principal = await auth.callers.for_key(api_key, address)
        assert principal.api_key_id is not None
        auth.key_usage.touch(principal.api_key_id)
        return principal
    if credentials is not None:
        try:
            claims = auth.tokens.decode(credentials.credentials, "access")
        except InvalidTokenError as exc:
            raise UnauthorizedError(f"access token rejected: {exc}") from None
        return await auth.callers.for_access(claims, address)
    scopes = {"read", "predict"} if auth.settings.anonymous_predictions else {"read"}
    return Principal(address, scopes=frozenset(scopes))


def _limit_for(principal: Principal, auth: AuthContext) -> tuple[str, Limit]:
    settings = auth.settings
    if principal.api_key_id is not None:
        per_minute = principal.api_key_rate_limit or settings.rate_limit_api_key_per_minute
        return f"key:{principal.api_key_id}", Limit(per_minute)
    if principal.user_id is not None:
        return f"user:{principal.user_id}", Limit(settings.rate_limit_user_per_minute)
    address = rate_key(principal.client_address)
    return f"ip:{address}", Limit(settings.rate_limit_anonymous_per_minute)


Work = Literal["upload", "model_upload", "training"]


def priced(work: Work) -> Any:
    """A route dependency naming the work the route does, so the caller's rate-limit take costs
    what that work costs. FastAPI solves a route's own ``dependencies`` before its parameters,
    so this runs before the caller is identified and charged."""

    async def set_price(request: Request) -> None:
        request.state.rate_limit_work = work

    return Depends(set_price)


def request_cost(request: Request, settings: Settings) -> int:
    """Tokens this request takes: 1 for a prediction or a read, more for heavier work; any
    multipart body is at least an upload, whichever route it is sent to."""
    # The request's state as a dict: a missing name costs no AttributeError (this runs on
    # every request).
    work = request.scope.get("state", {}).get("rate_limit_work")
    cost = 1
    if work == "upload":
        cost = settings.rate_limit_upload_cost
    elif work == "model_upload":
        cost = settings.rate_limit_model_upload_cost
    elif work == "training":
        cost = settings.rate_limit_training_cost
    if is_multipart(request):
        cost = max(cost, settings.rate_limit_upload_cost)
    return cost


async def enforce_rate_limit(
    request: Request, auth: AuthContext, principal: Principal, cost: int = 1
) -> None:
    """Take ``cost`` tokens; the middleware copies the decision into X-RateLimit-* headers."""
    key, limit = _limit_for(principal, auth)
    cost = min(cost, limit.capacity)  # the dearest request needs a full bucket, no more
    decision = await auth.limiter.take(key, limit, cost)
    request.state.rate_limit = decision
    if not decision.allowed:
        price = f" (this request costs {cost})" if cost > 1 else ""
        raise TooManyRequestsError(
            f"rate limit of {limit.capacity} requests per minute reached{price}; "
            f"retry in {decision.retry_after} s",
            decision.retry_after,
        )


Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)]
ApiKey = Annotated[str | None, Security(api_key_scheme)]


async def get_principal(
    request: Request, auth: AuthDep, credentials: Credentials, api_key: ApiKey
) -> Principal:
    """Identify the caller once per request, then apply their rate limit."""
    principal: Principal | None = request.scope.get("state", {}).get("principal")
    if principal is not None:  # another of this route's dependencies already did
        return principal
    try:
        principal = await _identify(request, auth, credentials, api_key)
    except UnauthorizedError:
        # A refused credential costs its address an anonymous token, so guessing keys or
        # tokens (each one a database lookup) is throttled like any anonymous call.
        await enforce_rate_limit(request, auth, Principal(client_address(request)))
        raise
    request.state.principal = principal
    await enforce_rate_limit(request, auth, principal, request_cost(request, auth.settings))
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
_SIGN_IN = "sign in (Bearer token) or send an API key (X-API-Key)"


def _caller(check: Callable[[Principal], None]) -> Callable[..., Awaitable[Principal]]:
    """One dependency that identifies the caller, applies their rate limit and runs ``check``:
    FastAPI solves every dependency of a route on every request, so a route needs one node
    here (plus the two credential schemes, which also document it), not a chain of them."""

    async def dependency(request: Request, credentials: Credentials, api_key: ApiKey) -> Principal:
        auth: AuthContext = request.app.state.auth
        principal = await get_principal(request, auth, credentials, api_key)
        check(principal)
        return principal

    return dependency


def require_scope(scope: str, *, anonymous: bool = True) -> Callable[..., Awaitable[Principal]]:
    """The caller must hold ``scope``; with ``anonymous=False`` they must also be signed in."""

    def check(principal: Principal) -> None:
        if principal.is_anonymous and not anonymous:
            raise UnauthorizedError(_SIGN_IN)
        if scope not in principal.scopes:
            if principal.is_anonymous:
                raise UnauthorizedError(
                    f"sign in or send an API key: anonymous callers may not {scope}"
                )
            raise ForbiddenError(f"this API key lacks the {scope!r} scope")

    return _caller(check)


def _signed_in(principal: Principal) -> None:
    if principal.is_anonymous:
        raise UnauthorizedError(_SIGN_IN)


def _administrator(principal: Principal) -> None:
    _signed_in(principal)
    if not principal.is_admin:
        raise ForbiddenError("administrators only")
    # An administrator's key acts for them only as far as its scopes go.
    if "manage" not in principal.scopes:
        raise ForbiddenError("this API key lacks the 'manage' scope")


require_user = _caller(_signed_in)
require_admin = _caller(_administrator)
UserDep = Annotated[Principal, Depends(require_user)]
AdminDep = Annotated[Principal, Depends(require_admin)]
Reader = Annotated[Principal, Depends(require_scope("read"))]
SignedInReader = Annotated[Principal, Depends(require_scope("read", anonymous=False))]
_predict_caller = require_scope("predict")
Predictor = Annotated[Principal, Depends(_predict_caller)]
# What the prediction routes' docs say they accept, as FastAPI writes it for ``Predictor``.
PREDICTOR_SECURITY: dict[str, Any] = {"security": [{"BearerJWT": []}, {"ApiKey": []}]}
# The caller checks a route makes itself rather than as a dependency (``calls_predictor``), for
# the OpenAPI description (``http.openapi``) to document as it does dependencies.
CALLER_CHECKS = "modelport_caller_checks"

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


def calls_predictor(endpoint: Endpoint) -> Endpoint:
    """Marks a route that calls ``predictor`` itself: its docs then list the 401, 403 and 429
    answers and whether anonymous callers may use it, as for a ``Predictor`` dependency."""
    setattr(endpoint, CALLER_CHECKS, (_predict_caller,))
    return endpoint


async def predictor(request: Request) -> Principal:
    """``Predictor``, called by the prediction routes themselves: FastAPI solving a route's
    dependencies costs a prediction more than finding its cached caller does. Same credentials,
    checks and rate limit; the routes add ``PREDICTOR_SECURITY`` to their docs."""
    credentials = await bearer_scheme(request)
    api_key = await api_key_scheme(request)
    return await _predict_caller(request, credentials, api_key)


Manager = Annotated[Principal, Depends(require_scope("manage"))]


# --- operators: health details and metrics ----------------------------------------------------

OPERATORS_ONLY = (
    "health details and metrics are for operators: send MODELPORT_METRICS_TOKEN as a Bearer "
    "token, or an administrator's credentials"
)


def _is_metrics_token(auth: AuthContext, credentials: HTTPAuthorizationCredentials | None) -> bool:
    expected = auth.settings.metrics_token
    if expected is None or credentials is None:
        return False
    return hmac.compare_digest(
        credentials.credentials.encode(), expected.get_secret_value().encode()
    )


async def _operator(
    request: Request,
    auth: AuthContext,
    credentials: HTTPAuthorizationCredentials | None,
    api_key: str | None,
) -> bool | None:
    """True for the metrics token or an administrator allowed to read; False for anyone else
    who sent credentials; None when none were sent (answered without a database lookup or a
    rate-limit token, so probes stay cheap)."""
    if _is_metrics_token(auth, credentials):
        return True
    if credentials is None and not api_key:
        return None
    # Anything else is an ordinary credential: checked, and rate limited, as everywhere.
    try:
        principal = await get_principal(request, auth, credentials, api_key)
    except UnauthorizedError as exc:
        raise UnauthorizedError(f"{OPERATORS_ONLY} ({exc.message})") from None
    return principal.is_admin and "read" in principal.scopes


async def optional_operator(
    request: Request,
    auth: AuthDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> bool:
    """Whether the caller may see operator details; everyone else gets the summary."""
    return bool(await _operator(request, auth, credentials, api_key))


async def require_operator(
    request: Request,
    auth: AuthDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)],
    api_key: Annotated[str | None, Security(api_key_scheme)],
) -> None:
    allowed = await _operator(request, auth, credentials, api_key)
    if allowed is None:
        raise UnauthorizedError(OPERATORS_ONLY)
    if not allowed:
        raise ForbiddenError(OPERATORS_ONLY)


IsOperator = Annotated[bool, Depends(optional_operator)]
