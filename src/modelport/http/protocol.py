"""The HTTP/1.1 protocol ``modelport serve`` runs: uvicorn's httptools protocol plus the limits
it lacks, applied before a request reaches the app. uvicorn reads a request head of any size
and any number of headers, waits forever for a head that never ends, and keeps every
connection it accepts; here a worker keeps at most ``max_connections``, refuses a head past its
size or header count with 431, and one that takes too long with 408.

A body that stops arriving while the server waits for it is answered 408 here too: one timer
per request whose body did not come with its head, instead of a timeout around each read in
the request middleware (which keeps that, slower, way for other servers). uvicorn's
h11 protocol has a head size limit (``h11_max_incomplete_event_size``) but answers it with a
bare 400, counts no headers and is slower than httptools; its ``limit_concurrency`` answers 503
only once a head is complete, so a connection that never completes one is never refused."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, cast

import httptools
import orjson
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

logger = logging.getLogger(__name__)

_HEAD_END = b"\r\n\r\n"
# After refusing a request whose rest is still arriving, read and drop it for a moment before
# closing: closing with unread bytes resets the connection, and the caller would never read
# why it was refused.
_LINGER_SECONDS = 1.0
_LINGER_BYTES = 1_048_576
# Set in the scope of every request this protocol serves: the request middleware then leaves
# the body's timeout to it.
BODY_TIMEOUT_KEY = "modelport.body_timeout"
# Set in a request's state when this protocol answered it (the app then sees only a hang-up).
ANSWERED_KEY = "modelport.answered_by_server"


def body_timeout_message(seconds: float) -> str:
    return f"the request body stopped arriving for {seconds:g} seconds; send it without pauses"


@dataclass(frozen=True)
class ConnectionLimits:
    max_connections: int
    max_header_count: int
    max_header_bytes: int
    header_timeout_seconds: float
    body_timeout_seconds: float | None = None  # None: no limit here (the middleware's applies)


# Refusals are logged at most once per interval and status, with how many were not: a flood of
# connections must not turn into a flood of log lines, each costing the event loop.
_LOG_INTERVAL_SECONDS = 10.0
_last_logged: dict[int, float] = {}
_not_logged: dict[int, int] = {}


def _log_refusal(status: int, message: str, client: tuple[str, int] | None) -> None:
    now = time.monotonic()
    if now - _last_logged.get(status, -_LOG_INTERVAL_SECONDS) < _LOG_INTERVAL_SECONDS:
        _not_logged[status] = _not_logged.get(status, 0) + 1
        return
    _last_logged[status] = now
    more = _not_logged.pop(status, 0)
    logger.warning(
        "refused before the app (%s): %d %s%s",
        f"{client[0]}:{client[1]}" if client else "unknown",
        status,
        message,
        f" (and {more} more {status}s not logged in the last {_LOG_INTERVAL_SECONDS:g} s)"
        if more
        else "",
    )


class _Refused(Exception):
    """Raised from a parser callback; httptools wraps it, ``data_received`` answers it."""


def refusal(
    status: int, message: str, extra: tuple[bytes, ...] = (), request_id: str | None = None
) -> bytes:
    """A whole response in our JSON error shape, closing the connection."""
    content = (
        {"detail": message} if request_id is None else {"detail": message, "request_id": request_id}
    )
    body = orjson.dumps(content)
    return b"".join(
        [
            STATUS_LINE[status],
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            *extra,
            b"connection: close\r\n\r\n",
            body,
        ]
    )


class _OneWriteResponses:
    """The transport as one response cycle sees it: the response's head is held until its first
    body write, and both leave in one write. uvicorn writes them apart, which costs every
    response a second system call and the client a second packet to wake up for. Writes before
    the head (``100 Continue``) and a HEAD request's head (no body follows) pass straight
    through; a held head leaves with the next write, or at ``close``."""

    __slots__ = ("_cycle", "_head", "_started", "_transport")

    def __init__(self, transport: asyncio.Transport, cycle: Any) -> None:
        self._transport = transport
        self._cycle = cycle
        self._head: bytes | None = None
        self._started = False

    def write(self, data: bytes) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.writelines([head, data])
        elif not self._started and self._cycle.response_started:
            self._started = True
            if self._cycle.scope["method"] == "HEAD":
                self._transport.write(data)
            else:
                self._head = data
        else:
            self._transport.write(data)

    def flush(self) -> None:
        if self._head is not None:
            head, self._head = self._head, None
            self._transport.write(head)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class LimitedHttpProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = limits
        self._in_head = True  # between requests, or reading a request line and headers
        self._head_bytes = 0
        self._head_tail = b""  # the last bytes of the head so far: its end may straddle reads
        self._header_count = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._closing_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None
        self._body_pending = False  # a request's head is in, its body is not all in yet
        self._body_last = 0.0  # loop time the last piece of it arrived
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._dropped = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            # Not counted from here on: it is closed within a second whatever it does.
            self.connections.discard(self)
            self._refuse(
                503,
                f"the server is at its limit of {self.limits.max_connections} open connections; "
                "retry shortly",
                (b"retry-after: 1\r\n",),
            )
            return
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._closing_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:  # lingering after a refusal: read and drop
            self._dropped += len(data)
            if self._dropped > _LINGER_BYTES:
                self.transport.close()
            return
        if self._body_pending:
            self._body_last = self.loop.time()
        if self._in_head and not self._head_fits(data):
            self._refuse(
                431,
                f"the request line and headers are larger than "
                f"{self.limits.max_header_bytes} bytes",
            )
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
                return
            message = "Invalid HTTP request received."
            self.logger.warning(message)
            self.send_400_response(message)
            return
        if self._refused:
            return
        # Timers only for what is still arriving: most requests come whole in one read, and
        # a timer set and cancelled for each costs more than the rest of this method.
        if self._in_head and self._head_bytes:  # a head begun, not finished
            self._start_head_timer()
        elif self._body_pending and self._body_timer is None:
            self._start_body_timer(self.limits.body_timeout_seconds)

    # Parser callbacks
    def on_message_begin(self) -> None:
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_header_count:
            self._refusal = (
                431,
                f"the request has more than {self.limits.max_header_count} headers",
            )
            raise _Refused
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.limits.body_timeout_seconds is not None:
            self.scope[BODY_TIMEOUT_KEY] = self.limits.body_timeout_seconds  # type: ignore[literal-required]
            self._body_pending = True  # until on_message_complete, in this read or a later one
            self._body_last = self.loop.time()
        self._in_head = False
        self._head_bytes, self._head_tail = 0, b""
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None and cycle.transport is self.transport:  # not an upgrade
            cycle.transport = _OneWriteResponses(self.transport, cycle)  # type: ignore[assignment]

    def on_message_complete(self) -> None:
        # The next request's head starts with the next byte; its clock with that byte too.
        self._in_head = True
        self._body_pending = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    # Limits
    def _head_fits(self, data: bytes) -> bool:
        """Whether the head read so far, with ``data``, stays within the size limit. Counted
        as it arrives, so an endless head is refused at the limit, not buffered."""
        before, limit = self._head_bytes, self.limits.max_header_bytes
        self._head_bytes += len(data)
        tail = self._head_tail
        if self._head_bytes <= limit:
            self._head_tail = (tail + data[-3:])[-3:]
            return True
        # Past the limit, unless the head ends in this read and the body follows it: its
        # end may straddle the previous read, so look there first.
        end = (tail + data[:3]).find(_HEAD_END)
        if end >= 0:
            return before - len(tail) + end + len(_HEAD_END) <= limit
        end = data.find(_HEAD_END)
        return end >= 0 and before + end + len(_HEAD_END) <= limit

    def _start_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                self.limits.header_timeout_seconds, self._head_timed_out
            )

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is being answered and the next one (pipelined) stalls: close after it.
            self.cycle.keep_alive = False
            return
        if not self._head_bytes:  # connected and never said anything: nobody to tell why
            self.transport.close()
            return
        self._refuse(
            408,
            f"the request line and headers did not arrive within "
            f"{self.limits.header_timeout_seconds:g} seconds",
        )

    def _start_body_timer(self, seconds: float | None) -> None:
        if seconds is not None:
            self._body_timer = self.loop.call_later(seconds, self._body_check)

    def _body_check(self) -> None:
        """The body is late when none of it came for the limit while the server was reading
        (a paused read is the server's doing: the app has not taken what came)."""
        self._body_timer = None
        limit = self.limits.body_timeout_seconds
        if not self._body_pending or limit is None or self.transport.is_closing():
            return
        idle = self.loop.time() - self._body_last
        if self.flow.read_paused or idle < limit:
            self._start_body_timer(limit if self.flow.read_paused else limit - idle)
            return
        cycle = self.cycle
        if cycle is not None and cycle.response_started:  # answered without reading it all
            self.transport.close()
            return
        state = self.scope.get("state", {})
        state[ANSWERED_KEY] = 408  # for the access log
        request_id = state.get("request_id")
        extra = (b"x-request-id: %s\r\n" % request_id.encode(),) if request_id else ()
        self._refuse(408, body_timeout_message(limit), extra, request_id)

    def _refuse(
        self,
        status: int,
        message: str,
        extra: tuple[bytes, ...] = (),
        request_id: str | None = None,
    ) -> None:
        """Answer ``status`` and close: at once if the caller is done sending, else after a
        short linger that drops whatever it still sends."""
        self._refused = True
        _log_refusal(status, message, self.client)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.transport.write(refusal(status, message, extra, request_id))
        if status == 408 or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self._closing_timer = self.loop.call_later(_LINGER_SECONDS, self.transport.close)


def limited_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol]:
    """What uvicorn's ``http`` option takes: it calls the protocol class with its own
    arguments, and pickles it for each worker process (a partial of a module-level class
    pickles; a class made here would not)."""
    return cast("type[asyncio.Protocol]", functools.partial(LimitedHttpProtocol, limits=limits))
