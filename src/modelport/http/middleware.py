"""The one pure-ASGI middleware every request passes: client address, request id, header count
and body size limits, body read timeout, timing, the headers every response carries (security
hardening, the caller's rate-limit state), access log. One layer instead of several: each
layer is another coroutine and another ``send`` wrapper on every request."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from typing import Literal

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modelport.http.headers import API_HEADERS, hardening_for, rate_limit_headers
from modelport.http.protocol import ANSWERED_KEY, BODY_TIMEOUT_KEY, body_timeout_message
from modelport.http.proxies import TrustedProxies
from modelport.monitoring.logs import access_log, request_id_var

error_logger = logging.getLogger(__name__)
REQUEST_ID_HEADER = b"x-request-id"
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit. An HTTPException, so
    FastAPI's body parsing lets it through rather than turning it into "400 error parsing"."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than {limit} bytes")
        self.limit = limit


class BodyTimeoutError(HTTPException):
    """Raised from ``receive`` when the next piece of the body is late: the caller is too slow
    (or stalls on purpose), and the connection is closed rather than held."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, body_timeout_message(seconds), headers={"Connection": "close"})


def too_many_headers_message(limit: int) -> str:
    return f"the request has more than {limit} headers"


def _new_request_id() -> str:
    return f"{random.getrandbits(128):032x}"


def too_large_detail(limit: int) -> list[dict[str, object]]:
    return [
        {"loc": ["body"], "msg": f"request body is larger than {limit} bytes", "type": "too_large"}
    ]


def internal_error_detail(request_id: str) -> str:
    return f"internal error; quote request id {request_id} when reporting it"


def _context_headers(request_id: str, started: float) -> list[tuple[bytes, bytes]]:
    elapsed = f"{(time.perf_counter() - started) * 1000:.2f}".encode()
    return [(REQUEST_ID_HEADER, request_id.encode()), (b"x-process-time-ms", elapsed)]


UploadKind = Literal["file", "model"]


class BodyLimit:
    """One request's body limit: the JSON limit whatever the ``Content-Type`` says, until an
    upload handler (after checking the caller) raises it to its upload limit."""

    def __init__(self, json_bytes: int, upload_bytes: int, model_upload_bytes: int) -> None:
        self.limit = json_bytes
        self._uploads = {"file": upload_bytes, "model": model_upload_bytes}

    def allow_upload(self, kind: UploadKind) -> int:
        self.limit = self._uploads[kind]
        return self.limit


def body_limit_of(scope: Scope) -> BodyLimit | None:
    limit = scope.get("state", {}).get("body_limit")
    return limit if isinstance(limit, BodyLimit) else None


def _declared_length(headers: dict[bytes, bytes]) -> int:
    declared = headers.get(b"content-length", b"")
    return int(declared) if declared.isdigit() else 0


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        max_upload_bytes: int | None = None,
        max_model_upload_bytes: int | None = None,
        trusted_proxies: TrustedProxies | None = None,
        max_header_count: int | None = None,
        body_timeout_seconds: float | None = None,
    ) -> None:
        self.app = app
        # `modelport serve` refuses too many headers before the app runs; this check is for
        # any other server the app is run under.
        self.max_header_count = max_header_count
        self.body_timeout_seconds = body_timeout_seconds
        self.max_json_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes or max_body_bytes
        self.max_model_upload_bytes = max_model_upload_bytes or self.max_upload_bytes
        self.proxies = trusted_proxies

    def _with_client(self, scope: Scope) -> Scope:
        """The scope with the client a trusted proxy named, or as the server gave it."""
        if not self.proxies:
            return scope
        client = scope.get("client")
        peer = client[0] if client else None
        address, scheme = self.proxies.resolve(peer, scope["headers"])
        if address == peer and scheme is None:
            return scope
        scope = {**scope, "client": (address, client[1] if client else 0)}
        if scheme is not None:
            scope["scheme"] = scheme
        return scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = self._with_client(scope)
        headers = dict(scope["headers"])
        body = BodyLimit(self.max_json_bytes, self.max_upload_bytes, self.max_model_upload_bytes)
        # Only multipart bodies can ever be allowed past the JSON limit; anything declared
        # larger than the largest limit that could apply is refused before the app runs.
        is_multipart = headers.get(b"content-type", b"").startswith(b"multipart/form-data")
        ceiling = (
            max(self.max_upload_bytes, self.max_model_upload_bytes, self.max_json_bytes)
            if is_multipart
            else self.max_json_bytes
        )
        given = headers.get(REQUEST_ID_HEADER, b"")
        # 32 random hex digits (as a UUID4's hex): an identifier, not a secret, so from the
        # process's seeded generator, without a system call on every request.
        request_id = given.decode() if _SAFE_REQUEST_ID.match(given) else _new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["body_limit"] = body
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500

        if self.max_header_count is not None and len(scope["headers"]) > self.max_header_count:
            status = 431
            detail = too_many_headers_message(self.max_header_count)
            await self._send_json(send, 431, detail, request_id, started)
            self._log(scope, status, started)
            request_id_var.reset(token)
            return

        declared = _declared_length(headers)
        if declared > ceiling:
            status = 413
            await self._send_json(send, 413, too_large_detail(ceiling), request_id, started)
            self._log(scope, status, started)
            request_id_var.reset(token)
            return

        has_body = declared > 0 or b"transfer-encoding" in headers
        received = 0
        body_done = not has_body
        response_started = False
        refused: HTTPException | None = None  # ours to answer, whatever a body parser makes of it
        replaced = False
        hardening = hardening_for(scope["path"])
        # `modelport serve`'s protocol times the body itself, with one timer per request
        # rather than one per read here.
        read_timeout = None if BODY_TIMEOUT_KEY in scope else self.body_timeout_seconds

        async def limited_receive() -> Message:
            nonlocal received, refused, body_done
            if declared > body.limit:  # refused on the first read, before any byte of it
                refused = BodyTooLargeError(body.limit)
                raise refused
            if body_done or read_timeout is None:
                # Once the body is read, receive() waits for the caller to hang up: no limit.
                message = await receive()
            else:
                try:
                    async with asyncio.timeout(read_timeout):  # no extra task
                        message = await receive()
                except TimeoutError:
                    refused = BodyTimeoutError(read_timeout)
                    raise refused from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > body.limit:
                    refused = BodyTooLargeError(body.limit)
                    raise refused
            return message

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started, replaced
            if replaced:
                return
            if message["type"] != "http.response.start":
                await send(message)
                return
            if refused is not None and message["status"] != refused.status_code:
                # A body parser (FastAPI's form reading) turned our error into its own 400:
                # the caller gets the 413 or 408 the limit means instead, and the app's answer
                # is dropped.
                status, response_started, replaced = refused.status_code, True, True
                await self._send_refusal(send, refused, request_id, started)
                return
            status = message["status"]
            response_started = True
            given_headers = message.get("headers", [])
            extra = [
                *_context_headers(request_id, started),
                *hardening,
                *rate_limit_headers(scope),  # set by the rate-limit dependency when it ran
            ]
            if not body_done and not any(k.lower() == b"connection" for k, _ in given_headers):
                # Answered without reading the body (e.g. 401 before an upload): close, so
                # the server does not go on receiving it to find the next request.
                extra.append((b"connection", b"close"))
            message["headers"] = [*given_headers, *extra]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except (BodyTooLargeError, BodyTimeoutError) as exc:
            if response_started:  # the app already answered; nothing more can be sent
                raise
            status = exc.status_code
            await self._send_refusal(send, exc, request_id, started)
        except ClientDisconnect:
            # The caller went away before sending its whole body: nobody to answer, no bug to
            # log (499 in the access log, as nginx names it), unless the server answered it.
            status = state.get(ANSWERED_KEY, 499)
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
            self._log(scope, status, started)
            request_id_var.reset(token)

    @classmethod
    async def _send_refusal(
        cls, send: Send, refused: HTTPException, request_id: str, started: float
    ) -> None:
        detail: object = refused.detail
        if isinstance(refused, BodyTooLargeError):
            detail = too_large_detail(refused.limit)
        await cls._send_json(send, refused.status_code, detail, request_id, started)

    @staticmethod
    async def _send_json(
        send: Send, status: int, detail: object, request_id: str, started: float
    ) -> None:
        body = orjson.dumps({"detail": detail, "request_id": request_id})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            *_context_headers(request_id, started),
            *API_HEADERS,
        ]
        if status in (408, 413, 431):  # an unread body would be taken for the next request
            headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _log(scope: Scope, status: int, started: float) -> None:
        if not access_log.enabled():  # no line built when access logs are off
            return
        client = scope.get("client")
        access_log.write(
            scope["state"].get("request_id") or "",
            {
                "method": scope.get("method"),
                "path": scope.get("path"),
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                "client": client[0] if client else None,
            },
        )
