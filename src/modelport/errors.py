"""Errors a user can act on. Each carries the HTTP status it maps to and a plain message.

``message`` is for the caller: written for users, never a library's text, a file path, an S3
endpoint or an object key. What an operator needs to find the cause goes in ``internal``, which
is logged (with the request id) and never sent.
"""

from __future__ import annotations

import re
from typing import Any


class ModelportError(Exception):
    status_code = 500
    kind = "internal_error"
    headers: dict[str, str] | None = None

    def __init__(self, message: str, *, internal: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.internal = internal

    def detail(self) -> Any:
        return self.message


class BadRequestError(ModelportError):
    """The request cannot be used at all (e.g. an upload that is not an image)."""

    status_code = 400
    kind = "bad_request"


class UnsupportedMediaTypeError(ModelportError):
    status_code = 415
    kind = "unsupported_media_type"


class NotFoundError(ModelportError):
    status_code = 404
    kind = "not_found"


class UnauthorizedError(ModelportError):
    """No usable credentials; the client should authenticate (Bearer JWT or X-API-Key)."""

    status_code = 401
    kind = "unauthorized"
    headers = {"WWW-Authenticate": "Bearer"}


class ForbiddenError(ModelportError):
    status_code = 403
    kind = "forbidden"


class ConflictError(ModelportError):
    status_code = 409
    kind = "conflict"


class TooManyRequestsError(ModelportError):
    status_code = 429
    kind = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(retry_after)}


class InvalidInputError(ModelportError):
    """The request is understood but its content breaks a rule; ``errors`` name field and rule."""

    status_code = 422
    kind = "invalid_input"

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [{"loc": ["body"], "msg": message, "type": "value_error"}]

    def detail(self) -> Any:
        return self.errors


class PayloadTooLargeError(ModelportError):
    status_code = 413
    kind = "payload_too_large"

    def detail(self) -> Any:
        return [{"loc": ["body"], "msg": self.message, "type": "too_large"}]


class ServiceUnavailableError(ModelportError):
    """A part the request needs is down for now; retrying later may work."""

    status_code = 503
    kind = "unavailable"
    headers: dict[str, str] | None = {"Retry-After": "1"}


class OverloadedError(ServiceUnavailableError):
    """Too many requests are already waiting for this model: refused at once, not queued."""

    kind = "overloaded"


class DeadlineExceededError(ModelportError):
    """The request's deadline (X-Request-Timeout, or the default) passed before its answer."""

    status_code = 504
    kind = "deadline_exceeded"


class ModelUnavailableError(ServiceUnavailableError):
    """The model exists but cannot be served right now (artifact missing, corrupt or unloadable)."""

    kind = "model_unavailable"
    headers = None


class ArtifactIntegrityError(ModelUnavailableError):
    kind = "artifact_integrity"


class ModelRunError(ModelUnavailableError):
    """The inference engine (ONNX Runtime, or the native library) failed inside the model: the
    model's fault, not the caller's, so the library's text goes to the log only."""

    kind = "model_failed"

    def __init__(self, internal: str) -> None:
        super().__init__(
            "the model failed while computing an answer for this input; this is a fault in the "
            "model, not in the request: its owner can find the cause in the server log under "
            "this request id",
            internal=internal,
        )


# Library messages about a user's own upload may be shown to them, minus what belongs to the
# server: URLs (endpoints), absolute file paths (POSIX and Windows).
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"()<>]+")
_POSIX_PATH = re.compile(r"(?<![\w.~/-])/(?:[^\s/'\"()<>:,;]+/)*[^\s/'\"()<>:,;]+")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\[^\s'\"()<>]*")


def public_text(text: str, limit: int = 300) -> str:
    """``text`` (a library's message about the caller's own input) fit to show them: URLs and
    absolute paths replaced, cut to ``limit`` characters."""
    text = _URL.sub("<url>", text)
    text = _WINDOWS_PATH.sub("<path>", text)
    text = _POSIX_PATH.sub("<path>", text)
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def library_text(exc: BaseException, limit: int = 300) -> str:
    """What a library said about the caller's own upload, fit to show them (see public_text):
    for a ModelRunError, the engine's own message it keeps for the log."""
    if isinstance(exc, ModelportError):
        return public_text(exc.internal or exc.message, limit)
    text = str(exc).strip()
    return public_text(f"{type(exc).__name__}: {text}" if text else type(exc).__name__, limit)
