"""Every error leaves as JSON ``{"detail": ..., "request_id": ...}`` with a message a user can
act on; what only an operator needs (library text, paths, endpoints) goes to the log instead."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from starlette.exceptions import HTTPException

from modelport.errors import InvalidInputError, ModelportError, ServiceUnavailableError
from modelport.http.middleware import (
    BodyTooLargeError,
    internal_error_detail,
    too_large_detail,
)
from modelport.http.openapi import allowed_methods
from modelport.monitoring.logs import request_id_var

logger = logging.getLogger(__name__)


# Validation errors echo the offending value; never for fields that hold secrets.
_SECRET_FIELDS = {"password", "refresh_token", "access_token", "key", "token", "jwt_secret"}
# What a 422 echoes of the request is kept short: a long string is cut, a large object or
# list is left out (one 60,000-key row would otherwise come back whole in every error).
_ECHO_CHARS = 100
_ECHO_ITEMS = 8
_ECHO_DEPTH = 2
_MESSAGE_CHARS = 500
_LEFT_OUT = object()


def _cut(text: str, limit: int = _ECHO_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _echo(value: Any, depth: int = 0) -> Any:
    """``value`` short enough to send back, or ``_LEFT_OUT``."""
    if value is None or isinstance(value, (bool, float)):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else _cut(str(value))
    if isinstance(value, str):
        return _cut(value)
    if isinstance(value, (bytes, bytearray)):
        return _cut(bytes(value).decode("utf-8", "replace"))
    if depth >= _ECHO_DEPTH or not isinstance(value, (list, tuple, dict)):
        return _LEFT_OUT
    if len(value) > _ECHO_ITEMS:
        return _LEFT_OUT
    if isinstance(value, dict):
        items = {_cut(str(k)): _echo(v, depth + 1) for k, v in value.items()}
        return _LEFT_OUT if _LEFT_OUT in items.values() else items
    shown = [_echo(v, depth + 1) for v in value]
    return _LEFT_OUT if any(v is _LEFT_OUT for v in shown) else shown


def omitted_errors(count: int) -> dict[str, Any]:
    """The last entry of a list of errors cut short: says how many more there were."""
    return {
        "loc": ["body"],
        "msg": f"{count} more errors not shown; fix these and send again to see them",
        "type": "too_many_errors",
        "omitted": count,
    }


def shown_errors(errors: Sequence[Any], limit: int) -> list[dict[str, Any]]:
    """At most ``limit`` errors, each with a short echo of its input (none for secrets or large
    values), then one entry counting the rest."""
    shown: list[dict[str, Any]] = []
    omitted = 0
    for raw in errors:
        error = dict(raw)
        if error.get("type") == "too_many_errors":  # already cut short where it was made
            omitted += int(error.get("omitted") or 0)
            continue
        if len(shown) >= limit:
            omitted += 1
            continue
        loc = [part if isinstance(part, int) else _cut(str(part)) for part in error.get("loc", ())]
        cleaned: dict[str, Any] = {
            "loc": loc,
            "msg": _cut(str(error.get("msg", "")), _MESSAGE_CHARS),
            "type": error.get("type", "value_error"),
        }
        if "input" in error and not _SECRET_FIELDS & {str(part) for part in loc}:
            echoed = _echo(error["input"])
            if echoed is not _LEFT_OUT:
                cleaned["input"] = echoed
        shown.append(cleaned)
    if omitted:
        shown.append(omitted_errors(omitted))
    return shown


def request_id_of(request: Request) -> str:
    return str(getattr(request.state, "request_id", None) or request_id_var.get() or "")


def error_response(
    request: Request, detail: Any, status_code: int, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    body = {"detail": jsonable_encoder(detail), "request_id": request_id_of(request)}
    return JSONResponse(body, status_code=status_code, headers=headers)


def log_failure(exc: ModelportError) -> None:
    """Log a failure the caller is answered for, once: server-side ones (5xx) always, others
    only when they carry detail kept from the caller. The log filter adds the request id."""
    internal = exc.internal
    cause = exc.__cause__
    if internal is None and cause is not None and not isinstance(cause, ModelportError):
        internal = f"{type(cause).__name__}: {cause}"  # e.g. the driver error behind a 503
    if exc.status_code < 500 and internal is None:
        return
    level = logging.ERROR if exc.status_code >= 500 else logging.WARNING
    logger.log(
        level,
        "request failed",
        extra={
            "kind": exc.kind,
            "status": exc.status_code,
            "error": exc.message,
            "internal": internal,
        },
    )


DATABASE_UNREACHABLE = "the database cannot be reached right now; retry shortly"
# What the driver raises when the database server is away: refused or cut connections and
# timeouts come as the socket's own errors, a connection lost mid-query as a DBAPI error.
_CONNECTION_ERRORS = (ConnectionError, TimeoutError, socket.gaierror)


def _database_unreachable(exc: Exception) -> bool:
    if isinstance(exc, DBAPIError):
        return exc.connection_invalidated or isinstance(exc, OperationalError | InterfaceError)
    return isinstance(exc, _CONNECTION_ERRORS)


def install_error_handlers(app: FastAPI, max_validation_errors: int = 20) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response(request, shown_errors(exc.errors(), max_validation_errors), 422)

    @app.exception_handler(ModelportError)
    async def _modelport_error(request: Request, exc: ModelportError) -> JSONResponse:
        log_failure(exc)
        detail = exc.detail()
        if isinstance(exc, InvalidInputError):
            detail = shown_errors(detail, max_validation_errors)
        return error_response(request, detail, exc.status_code, exc.headers)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(ConnectionError)
    @app.exception_handler(TimeoutError)
    @app.exception_handler(socket.gaierror)
    async def _database_error(request: Request, exc: Exception) -> JSONResponse:
        # A request that needs the database while it is away (any route, any caller, signed
        # in or not) is told to retry: 503 with Retry-After, never a 500.
        if not _database_unreachable(exc):
            logger.error("unhandled error", exc_info=exc)
            return error_response(request, internal_error_detail(request_id_of(request)), 500)
        unavailable = ServiceUnavailableError(
            DATABASE_UNREACHABLE, internal=f"{type(exc).__name__}: {exc}"
        )
        log_failure(unavailable)
        return error_response(request, unavailable.message, 503, unavailable.headers)

    @app.exception_handler(BodyTooLargeError)
    async def _too_large(request: Request, exc: BodyTooLargeError) -> JSONResponse:
        # The rest of the body is unread: close rather than take it for the next request.
        return error_response(
            request, too_large_detail(exc.limit), 413, headers={"Connection": "close"}
        )

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> Response:
        # Unknown paths (404), wrong methods (405): Starlette's own errors, in our shape.
        if exc.status_code in (204, 304):  # no body allowed
            return Response(status_code=exc.status_code, headers=exc.headers)
        headers = exc.headers
        if exc.status_code == 405:
            allowed = allowed_methods(request.app, request.url.path)
            if allowed:
                headers = {**(headers or {}), "Allow": ", ".join(allowed)}
        return error_response(request, exc.detail, exc.status_code, headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Reached only for errors outside the request middleware, which answers (and logs,
        # once) every error raised inside it.
        logger.error("unhandled error", exc_info=exc)
        request_id = request_id_of(request)
        return error_response(request, internal_error_detail(request_id), 500)
