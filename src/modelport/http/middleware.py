"""Pure-ASGI middleware: request id, body size limit, timing and the access log."""

from __future__ import annotations

import logging
import re
import time
import uuid

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.http.headers import security_headers
from modelport.monitoring.logs import request_id_var

logger = logging.getLogger("modelport.access")
error_logger = logging.getLogger(__name__)
REQUEST_ID_HEADER = b"x-request-id"
_MODEL_UPLOAD_PATH = re.compile(r"^/api/v1/models/[^/]+/versions/?$")
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit. An HTTPException, so
    FastAPI's body parsing lets it through rather than turning it into "400 error parsing"."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")
        self.limit = limit


def too_large_detail(limit: int) -> list[dict[str, object]]:
    return [
        {"loc": ["body"], "msg": f"request body is larger than {limit} bytes", "type": "too_large"}
    ]


def internal_error_detail(request_id: str) -> str:
    return f"internal error; quote request id {request_id} when reporting it"


def _context_headers(request_id: str, started: float) -> list[tuple[bytes, bytes]]:
    elapsed = f"{(time.perf_counter() - started) * 1000:.2f}".encode()
    return [(REQUEST_ID_HEADER, request_id.encode()), (b"x-process-time-ms", elapsed)]


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        max_upload_bytes: int | None = None,
        max_model_upload_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_json_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes or max_body_bytes
        self.max_model_upload_bytes = max_model_upload_bytes or self.max_upload_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        # File uploads (multipart) may be larger than JSON bodies; each has its own limit.
        is_upload = headers.get(b"content-type", b"").startswith(b"multipart/form-data")
        limit = self.max_json_bytes
        if is_upload:
            is_model = _MODEL_UPLOAD_PATH.match(str(scope.get("path", ""))) is not None
            limit = self.max_model_upload_bytes if is_model else self.max_upload_bytes
        given = headers.get(REQUEST_ID_HEADER, b"")
        request_id = given.decode() if _SAFE_REQUEST_ID.match(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            status = 413
            detail = too_large_detail(limit)
            await self._send_json(send, 413, detail, request_id, started)
            self._log(scope, status, started, request_id)
            request_id_var.reset(token)
            return

        received = 0
        response_started = False
        too_large = False
        replaced = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise BodyTooLargeError(limit)
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started, replaced
            if replaced:
                return
            is_start = message["type"] == "http.response.start"
            if too_large and is_start and message["status"] != 413:
                # A body parser (FastAPI's form reading) turned our error into its own 400:
                # the caller gets the 413 the limit means instead, and the app's answer is dropped.
                status, response_started, replaced = 413, True, True
                await self._send_json(send, 413, too_large_detail(limit), request_id, started)
                return
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
                message["headers"] = [
                    *message.get("headers", []),
                    *_context_headers(request_id, started),
                ]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except BodyTooLargeError:
            if response_started:  # the app already answered; nothing more can be sent
                raise
            status = 413
            await self._send_json(send, 413, too_large_detail(limit), request_id, started)
        except Exception:
            # A bug: logged here once, with its traceback and the request id, and answered
            # with a body that quotes the id and nothing else. Not re-raised: Starlette's error
            # middleware and the server would each log it again, without the request id.
            error_logger.exception("unhandled error")
            if not response_started:
                status = 500
                await self._send_json(
                    send, 500, internal_error_detail(request_id), request_id, started
                )
        finally:
            self._log(scope, status, started, request_id)
            request_id_var.reset(token)

    @staticmethod
    async def _send_json(
        send: Send, status: int, detail: object, request_id: str, started: float
    ) -> None:
        body = orjson.dumps({"detail": detail, "request_id": request_id})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *_context_headers(request_id, started),
            *security_headers(),  # answered here, outside the middleware that adds them
        ]
        if status == 413:  # the unread body would otherwise be taken for the next request
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _log(scope: Scope, status: int, started: float, request_id: str) -> None:
        client = scope.get("client")
        logger.info(
            "request",
            extra={
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "client": client[0] if client else None,
            },
        )
