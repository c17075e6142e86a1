"""Every error leaves as JSON ``{"detail": ...}`` with a message a user can act on."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from modelport.errors import ModelportError
from modelport.http.middleware import (
    BodyTooLargeError,
    internal_error_detail,
    too_large_detail,
)

logger = logging.getLogger(__name__)


# Validation errors echo the offending value; never for fields that hold secrets.
_SECRET_FIELDS = {"password", "refresh_token", "access_token", "key", "token", "jwt_secret"}


def _without_secrets(errors: Sequence[Any]) -> list[dict[str, Any]]:
    cleaned = []
    for error in errors:
        error = {k: v for k, v in dict(error).items() if k not in ("url", "ctx")}
        if _SECRET_FIELDS & {str(part) for part in error.get("loc", ())}:
            error.pop("input", None)
        cleaned.append(error)
    return cleaned


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": jsonable_encoder(_without_secrets(exc.errors()))}, 422)

    @app.exception_handler(ModelportError)
    async def _modelport_error(request: Request, exc: ModelportError) -> JSONResponse:
        if exc.status_code >= 500:
            logger.error("request failed", extra={"kind": exc.kind, "error": exc.message})
        return JSONResponse(
            {"detail": exc.detail()}, status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(BodyTooLargeError)
    async def _too_large(request: Request, exc: BodyTooLargeError) -> JSONResponse:
        # The rest of the body is unread: close rather than take it for the next request.
        return JSONResponse(
            {"detail": too_large_detail(exc.limit)},
            status_code=413,
            headers={"Connection": "close"},
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error")
        request_id = getattr(request.state, "request_id", "")
        return JSONResponse({"detail": internal_error_detail(request_id)}, status_code=500)
