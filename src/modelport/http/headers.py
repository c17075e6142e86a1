"""Headers every response gets: security hardening, and the caller's rate-limit state."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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


class ResponseHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        docs = str(scope.get("path", "")).startswith(_DOCS_PATHS)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.extend(security_headers(docs))
                # Set by the rate-limit dependency; present on every response it ran for.
                decision = scope.get("state", {}).get("rate_limit")
                if decision is not None:
                    headers.extend(
                        [
                            (b"x-ratelimit-limit", str(decision.limit).encode()),
                            (b"x-ratelimit-remaining", str(decision.remaining).encode()),
                            (b"x-ratelimit-reset", str(decision.reset_seconds).encode()),
                        ]
                    )
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
