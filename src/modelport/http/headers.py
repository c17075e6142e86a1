"""Headers every response gets: security hardening, and the caller's rate-limit state (added
by the request middleware, ``http.middleware``)."""

from __future__ import annotations

from starlette.types import Scope

# JSON endpoints load nothing and may not be framed. The docs pages load Swagger UI / ReDoc
# from the jsDelivr CDN (FastAPI's default), so they get a policy that allows exactly that.
_API_POLICY = b"default-src 'none'; frame-ancestors 'none'"
_DOCS_POLICY = (
    b"default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    b"style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    b"font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com "
    b"https://cdn.redoc.ly; connect-src 'self'; worker-src blob:; frame-ancestors 'none'"
)
_DOCS_PATHS = ("/docs", "/redoc")
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"permissions-policy", b"camera=(), microphone=(), geolocation=()"),
]


def security_headers(docs: bool = False) -> list[tuple[bytes, bytes]]:
    """The hardening headers for one response; ``docs`` for the Swagger UI / ReDoc pages."""
    policy = _DOCS_POLICY if docs else _API_POLICY
    return [*_SECURITY_HEADERS, (b"content-security-policy", policy)]


API_HEADERS = tuple(security_headers())
DOCS_HEADERS = tuple(security_headers(docs=True))


def hardening_for(path: str) -> tuple[tuple[bytes, bytes], ...]:
    return DOCS_HEADERS if path.startswith(_DOCS_PATHS) else API_HEADERS


def rate_limit_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The caller's rate-limit state, when the rate-limit dependency ran for this request."""
    decision = scope.get("state", {}).get("rate_limit")
    if decision is None:
        return []
    return [
        (b"x-ratelimit-limit", str(decision.limit).encode()),
        (b"x-ratelimit-remaining", str(decision.remaining).encode()),
        (b"x-ratelimit-reset", str(decision.reset_seconds).encode()),
    ]
