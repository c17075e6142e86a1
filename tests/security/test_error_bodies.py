"""What a caller sees when something fails: a message written for users and the request id.

Never a library's text (ONNX Runtime's, botocore's), a server file path, an S3 endpoint, a bucket
or an object key: those go to the log, under the same request id, for the operator. Bugs are
answered 500 with a generic body and logged once, with their traceback. Passwords in the
database and Redis URLs are shown nowhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from sqlalchemy import make_url

from modelport.builtin.wine import TrainedWine
from modelport.settings import Settings, SettingsError, load_settings
from tests.helpers import (
    WINE_ROW,
    admin_headers,
    bearer,
    create_account,
    flush_log,
    live_server,
    register_trained,
    services_of,
)
from tests.ratelimit.support import REDIS_URL, require_redis
from tests.ratelimit.support import closed_port_url as closed_redis_url
from tests.registry.support import artifact_file, linear_wine_onnx, register_onnx, serve
from tests.serving.v2_support import matrix_input
from tests.storage.s3_server import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    MotoS3,
    closed_port_url,
)

# Text that only ever belongs in the server log.
LIBRARY_TEXT = ["ONNXRuntimeError", "onnxruntime", "Traceback", "botocore", "Errno"]
BROKEN = "/api/v1/models/broken/predict"


# --- what to look at ---------------------------------------------------------------------------


def errors_logged(lines: list[dict[str, Any]], request_id: str) -> list[dict[str, Any]]:
    return [
        line
        for line in lines
        if line.get("request_id") == request_id and line["level"] in ("ERROR", "CRITICAL")
    ]


def assert_user_facing(response: httpx.Response, status: int, *internals: str) -> str:
    """An error body fit for the caller: the status, the request id the response header gives,
    and none of ``internals`` nor any library's text. Returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    for text in [*LIBRARY_TEXT, *internals]:
        assert text not in response.text, f"{text!r} reached the caller: {response.text}"
    message = body.get("detail", body.get("error"))  # V2 errors are {"error": ...}
    assert message, body
    return str(message)


# --- models that fail inside ONNX Runtime ------------------------------------------------------


def reshape_fails_onnx() -> bytes:
    """Loads fine, fails on every run: a Reshape inside the graph to rows of 3 values, which 11
    features never divide into (ONNX Runtime then names its own source file in the error)."""
    graph = helper.make_graph(
        [
            helper.make_node("Reshape", ["features", "shape"], ["grouped"]),
            helper.make_node("MatMul", ["grouped", "W"], ["variable"]),
        ],
        "reshape-fails",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 11])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        [
            numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "shape"),
            numpy_helper.from_array(np.ones((3, 1), dtype=np.float32), "W"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


BROKEN_MODELS: dict[str, tuple[Callable[[], bytes], str]] = {
    # what the registered file holds -> what the log says about it (never the caller)
    "fails-inside-its-graph": (reshape_fails_onnx, "cannot be reshaped to the requested shape"),
    "cannot-be-loaded": (lambda: b"\x08\x07 not a protobuf \xff" * 4, "not a valid ONNX model"),
}


@pytest.mark.parametrize("broken", BROKEN_MODELS)
def test_a_model_onnx_runtime_fails_on_answers_a_user_message_and_logs_the_cause(
    client: TestClient,
    settings: Settings,
    json_logs: Callable[[], list[dict[str, Any]]],
    broken: str,
) -> None:
    build, runtime_says = BROKEN_MODELS[broken]
    register_onnx(settings, build(), name="broken")
    json_logs()

    rest = client.post(BROKEN, json=WINE_ROW, headers={"X-Request-ID": f"{broken}-rest"})
    v2 = client.post(
        "/v2/models/broken/infer",
        json={"inputs": [matrix_input([WINE_ROW])]},
        headers={"X-Request-ID": f"{broken}-v2"},
    )
    lines = json_logs()

    for response in (rest, v2):
        message = assert_user_facing(response, 503, runtime_says, "Reshape", "/onnxruntime_src")
        assert "model" in message
        [logged] = errors_logged(lines, response.headers["x-request-id"])
        assert runtime_says in logged["internal"]  # the operator learns what ONNX Runtime said

    # The prediction log, which the model's owner and administrators read, says no more.
    flush_log(client)
    admin = admin_headers(client)
    rows = client.get("/api/v1/predictions", params={"model": "broken"}, headers=admin).json()
    assert {row["request_id"] for row in rows["items"]} >= {f"{broken}-rest", f"{broken}-v2"}
    for row in rows["items"]:
        assert row["status"] == "error"
        assert runtime_says not in row["error"]
        assert "ONNXRuntimeError" not in row["error"]


# --- model files on the server's disk ----------------------------------------------------------


LOSSES: dict[str, Callable[[Path], None]] = {
    "deleted": lambda path: path.unlink(),
    "changed": lambda path: path.write_bytes(linear_wine_onnx({}, bias=3.0)),
}


@pytest.mark.parametrize("loss", LOSSES)
def test_a_lost_or_changed_model_file_is_reported_without_its_path(
    client: TestClient,
    settings: Settings,
    json_logs: Callable[[], list[dict[str, Any]]],
    loss: str,
) -> None:
    register_onnx(settings, linear_wine_onnx({"alcohol": 0.5}, bias=1.0), name="fragile")
    path = artifact_file(settings, "fragile", 1)
    LOSSES[loss](path)
    json_logs()

    response = client.post("/api/v1/models/fragile/predict", json=WINE_ROW)

    message = assert_user_facing(
        response, 503, str(settings.var_dir), "file://", path.name, path.stem
    )
    assert "stored file" in message
    [logged] = errors_logged(json_logs(), response.headers["x-request-id"])
    assert path.name in logged["internal"]  # the operator learns which file


# --- S3: endpoints, buckets and keys -----------------------------------------------------------


@pytest.fixture(scope="module")
def moto_s3() -> Iterator[MotoS3]:
    server = MotoS3.start()
    yield server
    server.stop()


@pytest.fixture
def s3_settings(
    make_settings: Callable[..., Settings],
    moto_s3: MotoS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., Settings]:
    """Settings whose artifact store is a bucket of its own on the local S3, reached at
    ``endpoint`` (the live server unless told otherwise); each call a cache folder of its own,
    so the app has to fetch from S3. The S3 settings are in the environment too, for helpers
    that open the store from its URI alone (as the `modelport` command does)."""
    bucket = moto_s3.new_bucket()
    caches = iter(range(1000))

    def values(endpoint: str) -> dict[str, Any]:
        return {
            "artifact_store": f"s3://{bucket}/modelport",
            "s3_endpoint_url": endpoint,
            "s3_region": REGION,
            "s3_access_key_id": ACCESS_KEY_ID,
            "s3_secret_access_key": SECRET_ACCESS_KEY,
            "s3_connect_timeout": 1.0,
            "artifact_cache_dir": tmp_path / f"cache-{next(caches)}",
        }

    for name, value in values(moto_s3.endpoint_url).items():
        monkeypatch.setenv(f"MODELPORT_{name.upper()}", str(value))

    def factory(endpoint: str | None = None) -> Settings:
        return make_settings(**values(endpoint or moto_s3.endpoint_url))

    return factory


def s3_internals(settings: Settings) -> list[str]:
    """What an S3 error names that no caller may see: endpoint, host and port, bucket, keys."""
    endpoint = settings.s3_endpoint_url or ""
    bucket = urlsplit(settings.artifact_store).netloc
    return [endpoint, urlsplit(endpoint).netloc, bucket, "s3://", "sha256/", "modelport/"]


def test_an_unreachable_s3_is_answered_without_its_endpoint_bucket_or_keys(
    s3_settings: Callable[..., Settings],
    trained_wine: TrainedWine,
    json_logs: Callable[[], list[dict[str, Any]]],
) -> None:
    register_trained(s3_settings(), trained_wine)  # stored in S3 while it was up
    offline = s3_settings(endpoint=closed_port_url())  # then S3 went away
    create_account(offline, "uploader@example.com")

    with serve(offline, wait=False) as client:
        json_logs()
        predicted = client.post("/predict", json=WINE_ROW)
        user = bearer(client, "uploader@example.com")
        created = client.post(
            "/api/v1/models", json={"name": "mine", "task": "regression"}, headers=user
        )
        uploaded = client.post(
            "/api/v1/models/mine/versions",
            files={"file": ("model.onnx", linear_wine_onnx({}, 2.0), "application/octet-stream")},
            headers=user,
        )
        lines = json_logs()

    assert created.status_code == 201, created.text
    for response in (predicted, uploaded):
        message = assert_user_facing(response, 503, *s3_internals(offline))
        assert "artifact store cannot be reached" in message
        [logged] = errors_logged(lines, response.headers["x-request-id"])
        assert str(offline.s3_endpoint_url) in logged["internal"]  # for the operator


def test_an_object_missing_from_s3_is_answered_without_its_key(
    s3_settings: Callable[..., Settings],
    trained_wine: TrainedWine,
    moto_s3: MotoS3,
) -> None:
    settings = s3_settings()
    register_trained(settings, trained_wine)
    bucket = urlsplit(settings.artifact_store).netloc
    for item in moto_s3.client().list_objects_v2(Bucket=bucket)["Contents"]:
        moto_s3.client().delete_object(Bucket=bucket, Key=item["Key"])

    with serve(s3_settings(), wait=False) as client:
        response = client.post("/predict", json=WINE_ROW)

    message = assert_user_facing(response, 503, *s3_internals(settings))
    assert "missing" in message


# --- bugs: a 500, a generic body, one log line with the traceback -----------------------------


SECRET_DETAIL = "bug-detail-/srv/internal/state.json"
# Where a bug is made to happen (our code raising, as a bug would) and the request that hits it.
BUGS: dict[str, tuple[str, Callable[[str, dict[str, str]], httpx.Response]]] = {
    "inside a model run": (
        "modelport.serving.service.postprocess",  # after the model ran: not the model's fault
        lambda address, headers: httpx.post(
            f"http://{address}/predict", json=WINE_ROW, headers=headers
        ),
    ),
    "in a health report": (
        "modelport.monitoring.health._health",
        lambda address, headers: httpx.get(f"http://{address}/health", headers=headers),
    ),
}


@pytest.mark.parametrize("bug", BUGS)
def test_a_bug_is_a_500_quoting_the_request_id_and_logged_once_with_its_traceback(
    wine_registered: Settings,
    json_logs: Callable[[], list[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
    bug: str,
) -> None:
    """Through a real server: the server, Starlette and our middleware could each log it."""
    where, request = BUGS[bug]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError(SECRET_DETAIL)

    with live_server(wine_registered, "/v2/health/ready") as port:
        monkeypatch.setattr(where, broken)
        json_logs()
        response = request(f"127.0.0.1:{port}", {"X-Request-ID": "bug-1"})
    lines = json_logs()  # once the server stopped: what it logs after answering is in too

    message = assert_user_facing(response, 500, SECRET_DETAIL, "KeyError", "/srv/")
    assert "bug-1" in message
    errors = [line for line in lines if line["level"] in ("ERROR", "CRITICAL")]
    assert len(errors) == 1, [(line["logger"], line["message"]) for line in errors]
    [logged] = errors
    assert logged["request_id"] == "bug-1"
    assert "Traceback" in logged["exc_info"]
    assert SECRET_DETAIL in logged["exc_info"]


# --- every error body carries the request id ---------------------------------------------------


ERRORS: dict[str, tuple[Callable[[TestClient], httpx.Response], int]] = {
    "unknown path": (lambda c: c.get("/no/such/page"), 404),
    "wrong method": (lambda c: c.delete("/predict"), 405),
    "unknown model": (lambda c: c.post("/api/v1/models/nope/predict", json=WINE_ROW), 404),
    "invalid input": (lambda c: c.post("/predict", json={"alcohol": "a lot"}), 422),
    "invalid query": (lambda c: c.get("/api/v1/models", params={"limit": "x"}), 422),
    "not signed in": (lambda c: c.get("/api/v1/auth/me"), 401),
    "too large": (lambda c: c.post("/predict", content=b" " * (2 * 1024 * 1024)), 413),
    "v2 bad request": (lambda c: c.post("/v2/models/wine-quality/infer", json={}), 400),
}


@pytest.mark.parametrize("error", ERRORS)
def test_every_error_body_carries_the_request_id(client: TestClient, error: str) -> None:
    call, status = ERRORS[error]
    assert_user_facing(call(client), status)


# --- passwords in the database and Redis URLs --------------------------------------------------


PASSWORD = "Pw-in-url-7d1e"  # what the operator put in both URLs


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_passwords_in_the_database_and_redis_urls_are_never_shown(
    database_url: str,
    tmp_path: Path,
    trained_wine: TrainedWine,
    json_logs: Callable[[], list[dict[str, Any]]],
) -> None:
    require_redis()
    # The test server trusts local connections, so the password is carried, not checked.
    with_password = make_url(database_url).set(password=PASSWORD)
    redis = urlsplit(REDIS_URL)
    values: dict[str, Any] = {
        "var_dir": tmp_path / "up",
        "database_url": with_password.render_as_string(hide_password=False),
        "redis_url": redis._replace(netloc=f":{PASSWORD}@{redis.netloc}").geturl(),
        "log_format": "json",
        "prediction_log_flush_seconds": 0.05,
        "shutdown_flush_seconds": 1,
    }
    up = load_settings(**values)
    register_trained(up, trained_wine)
    # Then both servers go away: the connection errors are logged and answered.
    down = load_settings(
        **{
            **values,
            "var_dir": tmp_path / "down",
            "database_url": with_password.set(port=1).render_as_string(hide_password=False),
            "redis_url": closed_redis_url().replace("redis://", f"redis://:{PASSWORD}@"),
        }
    )
    shown = [repr(up), str(up), up.model_dump_json(), repr(down), down.model_dump_json()]

    for settings, expected in ((up, 200), (down, 503)):
        with serve(settings, wait=expected == 200) as client:
            predicted = client.post("/predict", json=WINE_ROW)
            assert predicted.status_code == expected, predicted.text
            invalid = client.post("/predict", json={"alcohol": 1})
            wait_for_a_log_write(client, failed=expected != 200)
            responses = [predicted, invalid] + [
                client.get(path) for path in ("/health", "/health/ready", "/", "/v2/health/ready")
            ]
            shown += [response.text for response in responses]
    shown += [json.dumps(line) for line in json_logs()]

    assert any("rate limiter backend unreachable" in text for text in shown)  # Redis was down
    assert any(PASSWORD in url for url in (values["database_url"], values["redis_url"]))
    for text in shown:
        assert PASSWORD not in text


def wait_for_a_log_write(client: TestClient, *, failed: bool) -> None:
    """Until the prediction log has written its rows (or, with the database down, has tried)."""
    log = services_of(client).prediction_log

    async def attempted() -> None:
        async with asyncio.timeout(30):  # a hang guard
            while (log.last_error is None) if failed else (log.buffered > 0):
                await asyncio.sleep(0.02)

    client.portal.call(attempted)  # type: ignore[union-attr]


# An unencoded @ ends a PostgreSQL password early (the rest becomes the host); a # ? or / ends
# a Redis URL's host part early (part of the password becomes the port, which redis-py quotes).
UNPARSABLE = {
    "database @": ("MODELPORT_DATABASE_URL", "postgresql://app:{}@ss@db.internal/modelport"),
    "redis #": ("MODELPORT_REDIS_URL", "redis://:{}#x@cache.internal:6379/0"),
    "redis ?": ("MODELPORT_REDIS_URL", "redis://:{}?x@cache.internal:6379/0"),
    "redis /": ("MODELPORT_REDIS_URL", "redis://:{}/x@cache.internal:6379/0"),
}


@pytest.mark.parametrize("case", UNPARSABLE)
def test_a_url_that_cannot_be_parsed_is_refused_without_showing_its_password(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable, template = UNPARSABLE[case]
    monkeypatch.setenv(variable, template.format(PASSWORD))

    with pytest.raises(SettingsError) as refused:  # at start-up, before anything connects
        load_settings(var_dir=tmp_path)

    assert variable in str(refused.value)
    assert "percent-encode" in str(refused.value)
    assert PASSWORD not in str(refused.value)
    assert PASSWORD[:6] not in str(refused.value)
