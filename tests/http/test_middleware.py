"""What every response carries, how oversized bodies are refused, and the JSON access log."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from modelport.settings import Settings
from tests.helpers import WINE_ROW, register_trained, wait_until_ready

# The middleware never touches the database: one backend is enough here.
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

LIMIT = 2048
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")
PREDICT_PATHS = ["/predict", "/api/v1/models/wine-quality/predict"]


def add_failing_route(app: FastAPI) -> None:
    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug in a route")


@pytest.fixture
def app_client(
    make_settings: Callable[..., Settings],
    trained_wine: TrainedWine,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[TestClient]:
    """The app with a small body limit set the way an operator would, plus a broken route."""
    monkeypatch.setenv("MODELPORT_MAX_REQUEST_BYTES", str(LIMIT))
    settings = make_settings()
    assert settings.max_request_bytes == LIMIT
    register_trained(settings, trained_wine)
    app = create_app(settings)
    add_failing_route(app)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        wait_until_ready(test_client)
        yield test_client


def chunks(total: int, size: int = 512) -> Iterator[bytes]:
    """A streamed body with no Content-Length (sent chunked)."""
    for start in range(0, total, size):
        yield b" " * min(size, total - start)


def too_large(response: Any) -> None:
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"][0]["type"] == "too_large"
    assert str(LIMIT) in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/ping", lambda: {}, 200),
        ("POST", "/predict", lambda: {"json": WINE_ROW}, 200),
        ("POST", "/predict", lambda: {"json": {"alcohol": 1}}, 422),
        ("GET", "/no/such/page", lambda: {}, 404),
        ("POST", "/predict", lambda: {"content": b"x" * (LIMIT + 1)}, 413),
        ("POST", "/predict", lambda: {"content": chunks(LIMIT + 1)}, 413),
        ("GET", "/boom", lambda: {}, 500),
    ],
    ids=["ok", "predicted", "invalid", "not-found", "too-large", "too-large-chunked", "bug"],
)
def test_every_response_carries_a_request_id_and_its_processing_time(
    app_client: TestClient,
    method: str,
    path: str,
    body: Callable[[], dict[str, Any]],
    status: int,
) -> None:
    response = app_client.request(method, path, **body())
    assert response.status_code == status
    assert GENERATED_ID.match(response.headers["x-request-id"])
    assert float(response.headers["x-process-time-ms"]) >= 0


def test_an_unexpected_error_is_json_quoting_the_request_id(app_client: TestClient) -> None:
    response = app_client.get("/boom", headers={"X-Request-ID": "ticket-99"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "ticket-99"
    assert "ticket-99" in response.json()["detail"]
    assert "a bug in a route" not in response.text  # internals stay in the log


def test_a_safe_incoming_request_id_is_echoed(app_client: TestClient) -> None:
    given = "Upstream_ID-1.2:3" + "x" * 111  # 128 characters, the longest accepted
    response = app_client.post("/predict", json=WINE_ROW, headers={"X-Request-ID": given})
    assert response.headers["x-request-id"] == given


@pytest.mark.parametrize(
    "given",
    [
        b"has spaces in it",
        b"<script>alert(1)</script>",
        b"x" * 129,
        "caf\u00e9".encode(),
        b"a;b",
        b"",
    ],
)
def test_an_unsafe_or_oversized_request_id_is_replaced(
    app_client: TestClient, given: bytes
) -> None:
    response = app_client.get("/ping", headers={"X-Request-ID": given})
    assert response.status_code == 200
    assert GENERATED_ID.match(response.headers["x-request-id"])


@pytest.mark.parametrize("path", PREDICT_PATHS)
def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(
    app_client: TestClient, path: str
) -> None:
    # The body itself is a valid, small row: only the declared length can cause the 413.
    body = orjson.dumps(WINE_ROW)
    response = app_client.post(
        path,
        content=body,
        headers={"Content-Type": "application/json", "Content-Length": str(LIMIT + 1)},
    )
    too_large(response)
    assert GENERATED_ID.match(response.headers["x-request-id"])


@pytest.mark.parametrize("path", PREDICT_PATHS)
def test_a_chunked_body_over_the_limit_is_refused(app_client: TestClient, path: str) -> None:
    response = app_client.post(
        path, content=chunks(4 * LIMIT), headers={"Content-Type": "application/json"}
    )
    too_large(response)


def test_a_chunked_body_within_the_limit_is_served(app_client: TestClient) -> None:
    body = orjson.dumps(WINE_ROW)

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(body), 64):
            yield body[start : start + 64]

    response = app_client.post(
        "/predict", content=pieces(), headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200
    assert "predicted_quality" in response.json()


def test_a_body_exactly_at_the_limit_is_accepted(app_client: TestClient) -> None:
    body = orjson.dumps(WINE_ROW)
    padded = body + b" " * (LIMIT - len(body))  # whitespace keeps it valid JSON
    response = app_client.post(
        "/predict", content=padded, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200


MULTIPART = "multipart/form-data; boundary=x"


@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "streamed"])
def test_a_multipart_type_on_a_json_route_keeps_the_json_limit(
    app_client: TestClient, streamed: bool
) -> None:
    body = b"x" * (4 * LIMIT)
    content = chunks(4 * LIMIT) if streamed else body
    response = app_client.post("/predict", content=content, headers={"Content-Type": MULTIPART})
    too_large(response)


def test_an_upload_route_takes_more_than_the_json_limit(app_client: TestClient) -> None:
    # The same size the JSON routes refuse is fine as an upload (the image is simply not one).
    response = app_client.post(
        "/api/v1/images/predictions", files={"file": ("big.png", b"x" * (4 * LIMIT), "")}
    )
    assert response.status_code == 400, response.text
    assert "not an image" in response.json()["detail"]


def test_an_answer_given_before_the_body_was_read_closes_the_connection(
    app_client: TestClient,
) -> None:
    unread = app_client.post("/api/v1/datasets", files={"file": ("d.csv", b"a,b\n1,2\n")})
    assert unread.status_code == 401
    assert unread.headers["connection"] == "close"
    # A request whose body was read keeps its connection.
    read = app_client.post("/predict", json=WINE_ROW)
    assert read.status_code == 200
    assert "connection" not in read.headers


def access_lines(lines: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [
        line
        for line in lines
        if line.get("logger") == "modelport.access" and line.get("request_id") == request_id
    ]


def test_each_request_writes_one_json_access_line_with_its_request_id(
    app_client: TestClient, json_logs: Callable[[], list[dict[str, Any]]]
) -> None:
    json_logs()  # start from here
    answered = app_client.post("/predict", json=WINE_ROW, headers={"X-Request-ID": "trace-1"})
    refused = app_client.post("/predict", content=b"x" * (LIMIT + 1))
    lines = json_logs()  # every line parsed as JSON

    [line] = access_lines(lines, "trace-1")
    assert answered.status_code == 200
    assert (line["method"], line["path"], line["status"]) == ("POST", "/predict", 200)
    assert line["level"] == "INFO"
    assert line["duration_ms"] >= 0
    # Written apart from logging's formatter, yet shaped like every other line.
    other = next(entry for entry in lines if entry["logger"] != "modelport.access")
    assert list(line)[:5] == list(other)[:5] == ["time", "level", "logger", "message", "request_id"]
    assert len(line["time"]) == len(other["time"])

    [line] = access_lines(lines, refused.headers["x-request-id"])
    assert line["status"] == 413


def test_an_unexpected_error_is_logged_with_the_request_id(
    app_client: TestClient, json_logs: Callable[[], list[dict[str, Any]]]
) -> None:
    json_logs()
    app_client.get("/boom", headers={"X-Request-ID": "trace-500"})
    lines = [line for line in json_logs() if line.get("request_id") == "trace-500"]

    errors = [line for line in lines if line["level"] == "ERROR"]
    assert errors, "the traceback must be findable by the request id"
    assert "a bug in a route" in errors[0]["exc_info"]
    [access] = access_lines(lines, "trace-500")
    assert access["status"] == 500
