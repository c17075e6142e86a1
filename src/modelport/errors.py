"""Errors a user can act on. Each carries the HTTP status it maps to and a plain message."""

from __future__ import annotations

from typing import Any


class ModelportError(Exception):
    status_code = 500
    kind = "internal_error"
    headers: dict[str, str] | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

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
