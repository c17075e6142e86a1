"""HTTP limits against a real ``modelport serve`` (one worker, short timeouts), attacked over raw
sockets: oversized and endless request heads, slow heads and bodies, more connections than a
worker keeps, and a row whose errors would fill megabytes. Each attack is answered with the
status its limit names, the connection is closed, and callers already connected go on being
answered; their latency during the attack is printed (run with -s), not asserted."""

from __future__ import annotations

import asyncio
import contextlib
import json
import selectors
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI, Request
from starlette.types import Message

from modelport.builtin.wine import TrainedWine
from modelport.http.errors import install_error_handlers
from modelport.http.middleware import RequestContextMiddleware
from modelport.http.uploads import read_upload
from tests.cli.support import make_wine_home, serve_processes
from tests.helpers import WINE_ROW
from tests.processes import Server, free_port

HEADER_TIMEOUT = 2.0
BODY_TIMEOUT = 2.0
MAX_CONNECTIONS = 64
HANG_GUARD = 60.0  # seconds a socket read may take before the test fails: not a latency target
PARTIAL_HEAD = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: appl"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, trained_wine: TrainedWine) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("limits")
    home = make_wine_home(root / "var", trained_wine)
    starter = serve_processes(root, home)
    start = next(starter)
    port = free_port()
    running = start(
        "--port",
        str(port),
        "--workers",
        "1",  # the connection cap is per worker: one worker makes it exact
        port=port,
        extra_env={
            "MODELPORT_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
            "MODELPORT_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
            "MODELPORT_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
            "MODELPORT_RATE_LIMIT_ANONYMOUS_PER_MINUTE": "1000000",
            "MODELPORT_LOG_LEVEL": "warning",
        },
    )
    running.wait_until_ready()
    yield running
    next(starter, None)  # kills it


def port_of(server: Server) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


def connect(server: Server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port_of(server)), timeout=HANG_GUARD)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as closed:
    it comes when the server drops a caller that is still sending)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received


def status_of(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


def body_of(response: bytes) -> Any:
    return orjson.loads(response.split(b"\r\n\r\n", 1)[1])


def read_all_until_closed(socks: list[socket.socket]) -> list[bytes]:
    """``read_until_closed`` for many sockets at once."""
    received = {sock: b"" for sock in socks}
    with selectors.DefaultSelector() as selector:
        for sock in socks:
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + HANG_GUARD
        while selector.get_map():
            assert time.monotonic() < deadline, "some connections were never closed"
            for key, _ in selector.select(timeout=1):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    chunk = sock.recv(65536)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    chunk = b""
                if chunk:
                    received[sock] += chunk
                else:
                    selector.unregister(sock)
    return [received[sock] for sock in socks]


class OtherCallers:
    """Callers already connected (one keep-alive connection) who predict and probe liveness in
    a loop while an attack runs; what they were answered and how fast."""

    def __init__(self, server: Server) -> None:
        self.client = httpx.Client(base_url=server.base_url, timeout=HANG_GUARD)
        self.statuses: list[int] = []
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for send in (
                lambda: self.client.post("/predict", json=WINE_ROW),
                lambda: self.client.get("/health/live"),
            ):
                started = time.perf_counter()
                response = send()
                self.latencies.append(time.perf_counter() - started)
                self.statuses.append(response.status_code)

    def __enter__(self) -> OtherCallers:
        self.client.get("/health/live")  # connected before the attack starts
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=HANG_GUARD)
        self.client.close()

    def report(self, attack: str) -> None:
        assert self.statuses, "the other callers sent nothing during the attack"
        ordered = sorted(self.latencies)
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
        print(
            f"\n{attack}: other callers sent {len(ordered)} requests, "
            f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {ordered[-1] * 1000:.1f} ms"
        )
        assert set(self.statuses) == {200}, sorted(set(self.statuses))


def still_serving(server: Server) -> None:
    response = httpx.post(f"{server.base_url}/predict", json=WINE_ROW, timeout=HANG_GUARD)
    assert response.status_code == 200, response.text


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def refused_head(server: Server, head: bytes) -> bytes:
    """Send ``head`` (a request line, then headers that never end) from a thread while reading
    the answer; what the server said before it closed."""
    with connect(server) as sock:
        sender = threading.Thread(target=_send_ignoring_reset, args=(sock, head), daemon=True)
        sender.start()
        response = read_until_closed(sock)
        sender.join(timeout=HANG_GUARD)
    return response


def test_a_hundred_thousand_headers_are_refused_with_431(server: Server) -> None:
    head = b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(
        b"X-Header-%d: value\r\n" % i for i in range(100_000)
    )
    with OtherCallers(server) as others:
        responses = [refused_head(server, head) for _ in range(20)]
    others.report("100,000 headers, 20 times")
    assert {status_of(response) for response in responses} == {431}
    # Refused by whichever limit it passes first in what has arrived: size or count.
    assert {str(body_of(response)["detail"]) for response in responses} <= {
        "the request line and headers are larger than 65536 bytes",
        "the request has more than 100 headers",
    }
    still_serving(server)


def test_more_headers_than_allowed_are_refused_with_431_by_count(server: Server) -> None:
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(150))  # 1.3 KB: small, but many
    with connect(server) as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
        response = read_until_closed(sock)
    assert status_of(response) == 431
    assert body_of(response)["detail"] == "the request has more than 100 headers"
    # A request with an ordinary number of headers on a new connection is served.
    with connect(server) as sock:
        sock.sendall(
            b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
            + b"".join(b"X-%d: v\r\n" % i for i in range(50))
            + b"\r\n"
        )
        assert status_of(read_until_closed(sock)) == 200


def test_a_large_body_arriving_with_its_head_is_not_taken_for_a_large_head(
    server: Server,
) -> None:
    body = orjson.dumps({"inputs": [WINE_ROW] * 1000})  # about 300 KB, past the head limit
    head = (
        b"POST /api/v1/models/wine-quality/predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with connect(server) as sock:
        sock.sendall(head + body)  # one write: the server reads the head and body together
        response = read_until_closed(sock)
    assert status_of(response) == 200, response[:300]
    assert len(body_of(response)["predictions"]) == 1000


def _send_ignoring_reset(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(data)


def test_a_64_mib_header_block_is_refused_without_being_read_whole(server: Server) -> None:
    pid = server.process.pid  # one worker: uvicorn serves in the process it was started as
    rss_before = rss_bytes(pid)
    chunk = b"a" * 65536
    sent_per_attack: list[int] = []
    responses: list[bytes] = []
    with OtherCallers(server) as others:
        for _ in range(5):
            sent = 0
            with connect(server) as sock:
                sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
                try:
                    while sent < 64 * 1_048_576:
                        sock.sendall(chunk)
                        sent += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                responses.append(read_until_closed(sock))
            sent_per_attack.append(sent)
    others.report("64 MiB header block, 5 times")
    grown = rss_bytes(pid) - rss_before
    print(
        f"64 MiB header block: at most {max(sent_per_attack) / 1_048_576:.1f} MiB sent before "
        f"the server closed; server memory grew {grown / 1_048_576:.1f} MiB"
    )
    # What the kernel's socket buffers took plus the second the server drops the rest.
    assert max(sent_per_attack) < 32 * 1_048_576
    for response in responses:
        if response:  # read before the reset: it says why
            assert status_of(response) == 431
    still_serving(server)


def test_a_slow_head_is_answered_408_and_closed(server: Server) -> None:
    with OtherCallers(server) as others:
        socks = [connect(server) for _ in range(40)]
        for sock in socks:
            sock.sendall(PARTIAL_HEAD)  # and nothing more
        started = time.monotonic()
        responses = read_all_until_closed(socks)
        waited = time.monotonic() - started
        for sock in socks:
            sock.close()
    others.report("40 slow heads")
    print(f"slow heads: all 40 closed after {waited:.1f} s (header timeout {HEADER_TIMEOUT} s)")
    assert {status_of(response) for response in responses} == {408}
    assert body_of(responses[0])["detail"] == (
        "the request line and headers did not arrive within 2 seconds"
    )
    still_serving(server)


def test_a_connection_that_never_sends_is_closed(server: Server) -> None:
    with connect(server) as sock:
        assert read_until_closed(sock) == b""  # closed, nothing to answer


def test_a_slow_body_is_answered_408_and_the_worker_is_free_again(server: Server) -> None:
    head = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n"
    )
    with OtherCallers(server) as others:
        socks = [connect(server) for _ in range(40)]
        for sock in socks:
            sock.sendall(head + b'{"fixed_acidity": ')  # 18 of 1000 bytes, then silence
        started = time.monotonic()
        responses = read_all_until_closed(socks)
        waited = time.monotonic() - started
        for sock in socks:
            sock.close()
    others.report("40 slow bodies")
    print(f"slow bodies: all 40 closed after {waited:.1f} s (body timeout {BODY_TIMEOUT} s)")
    assert {status_of(response) for response in responses} == {408}
    body = body_of(responses[0])
    assert body["detail"] == (
        "the request body stopped arriving for 2 seconds; send it without pauses"
    )
    assert body["request_id"]
    assert b"connection: close" in responses[0].lower()
    still_serving(server)


def test_connections_past_the_cap_are_answered_503_and_established_ones_still_work(
    server: Server,
) -> None:
    with OtherCallers(server) as others:
        socks = [connect(server) for _ in range(1000)]
        for sock in socks:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(PARTIAL_HEAD)  # unless already refused and closed
        started = time.monotonic()
        responses = read_all_until_closed(socks)
        waited = time.monotonic() - started
        for sock in socks:
            sock.close()
    others.report("1,000 slow connections")
    statuses = [status_of(response) for response in responses if response]
    refused, timed_out = statuses.count(503), statuses.count(408)
    print(
        f"1,000 slow connections: {refused} answered 503 at once, {timed_out} kept until their "
        f"head timed out (408); all closed after {waited:.1f} s"
    )
    # The other callers hold one of the worker's connections.
    assert refused >= 1000 - MAX_CONNECTIONS
    assert timed_out <= MAX_CONNECTIONS
    assert set(statuses) <= {503, 408}
    assert body_of(responses[-1]) == {
        "detail": f"the server is at its limit of {MAX_CONNECTIONS} open connections; retry shortly"
    }
    still_serving(server)


def test_a_row_with_60000_keys_answers_a_small_422(server: Server) -> None:
    row = {**WINE_ROW, **{f"f{i:05}": 1.5 for i in range(60_000)}}
    payload = orjson.dumps(row)
    with OtherCallers(server) as others:
        response = httpx.post(
            f"{server.base_url}/predict",
            content=payload,
            headers={"Content-Type": "application/json"},
            timeout=HANG_GUARD,
        )
    others.report("60,000-key row")
    print(f"60,000-key row: {len(payload)} bytes sent, {len(response.content)} bytes answered")
    assert response.status_code == 422
    assert len(response.content) < 16 * 1024
    detail = response.json()["detail"]
    assert len(detail) == 21
    assert detail[0]["type"] == "extra_forbidden"
    assert detail[-1]["type"] == "too_many_errors"
    assert detail[-1]["omitted"] == 60_000 - 20
    assert "59980 more errors not shown" in detail[-1]["msg"]


def test_request_validation_errors_are_capped_and_never_echo_a_large_input(
    server: Server,
) -> None:
    credentials = {
        "email": "x" * 5000 + "@example.com",  # too long: echoed cut short
        "password": "a secret that is never echoed",
        "large": {"nested": list(range(1000))},
        **{f"f{i:05}": 1 for i in range(60_000)},
    }
    response = httpx.post(
        f"{server.base_url}/api/v1/auth/login", json=credentials, timeout=HANG_GUARD
    )
    assert response.status_code == 422
    assert len(response.content) < 16 * 1024
    detail = response.json()["detail"]
    assert len(detail) == 21
    assert detail[-1]["omitted"] == 60_002 - 20
    too_long = next(error for error in detail if error["loc"] == ["body", "email"])
    assert too_long["input"].startswith("xxxx")
    assert len(too_long["input"]) < 150
    large = next(error for error in detail if error["loc"] == ["body", "large"])
    assert large["type"] == "extra_forbidden"
    assert "input" not in large  # a large object is not sent back
    small = next(error for error in detail if error["loc"] == ["body", "f00000"])
    assert small["input"] == 1
    assert b"a secret" not in response.content


# The same limits in the app itself, for servers other than `modelport serve`.


def limited_app() -> FastAPI:
    app = FastAPI()

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"bytes": len(await request.body())}

    @app.post("/upload")
    async def upload(request: Request) -> dict[str, int]:
        return {"bytes": len((await read_upload(request, "file")).data)}

    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=1_048_576,
        max_header_count=10,
        body_timeout_seconds=0.2,
    )
    install_error_handlers(app, max_validation_errors=20)
    return app


async def call(
    app: FastAPI, path: str, headers: list[tuple[bytes, bytes]], first_piece: bytes
) -> tuple[int, list[tuple[bytes, bytes]], dict[str, object]]:
    """One request whose body stops after ``first_piece``; the status, headers and JSON body."""
    pieces = [{"type": "http.request", "body": first_piece, "more_body": True}]
    sent: list[Message] = []

    async def receive() -> Message:
        if pieces:
            return pieces.pop()
        await asyncio.sleep(3600)  # the rest never comes
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "scheme": "http",
        "http_version": "1.1",
        "root_path": "",
    }
    await asyncio.wait_for(app(scope, receive, send), HANG_GUARD)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], start["headers"], orjson.loads(body)


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/echo", b"application/json"), ("/upload", b"multipart/form-data; boundary=x")],
)
def test_a_body_that_stops_arriving_is_answered_408_by_the_middleware(
    path: str, content_type: bytes
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", b"1000")]
    status, response_headers, body = asyncio.run(
        call(limited_app(), path, headers, b"--x\r\nContent-Disposition: form-data; name=")
    )
    assert status == 408
    assert body["detail"] == (
        "the request body stopped arriving for 0.2 seconds; send it without pauses"
    )
    assert (b"connection", b"close") in [(k.lower(), v) for k, v in response_headers]


def test_too_many_headers_are_answered_431_by_the_middleware() -> None:
    headers = [(b"x-%d" % i, b"v") for i in range(11)]
    status, _, body = asyncio.run(call(limited_app(), "/echo", headers, b""))
    assert status == 431
    assert body["detail"] == "the request has more than 10 headers"


def test_heads_and_bodies_arrive_whole_for_pipelined_head_and_expect_continue_requests(
    server: Server,
) -> None:
    """The protocol sends a response's head and body in one write: every kind of response
    still arrives whole (HEAD has no body, 100 Continue comes before the head)."""
    body = json.dumps(WINE_ROW).encode()
    post = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    with connect(server) as sock:
        sock.sendall(
            post * 3 + b"HEAD /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        answers = read_until_closed(sock)
    assert answers.count(b"HTTP/1.1 200 OK") == 3
    assert answers.count(b'"predicted_quality"') == 3
    assert b"HTTP/1.1 405" in answers.split(b"HTTP/1.1 200 OK")[-1]  # HEAD answered, no body
    assert b"server: uvicorn" not in answers.lower()

    with connect(server) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Expect: 100-continue\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 100 Continue")  # before any body is sent
        sock.sendall(body)
        answer = read_until_closed(sock)
    assert status_of(answer) == 200 and b'"predicted_quality"' in answer
