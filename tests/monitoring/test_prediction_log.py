"""Every prediction, answered or refused, leaves one row in the prediction log."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from modelport.settings import Settings
from tests.helpers import (
    OPERATOR,
    WINE_ROW,
    admin_headers,
    flush_log,
    register_trained,
    services_of,
    wait_until,
    wait_until_ready,
)
from tests.monitoring.support import count_rows, log_entries, metric, write_entries

NOT_STORED = "modelport_prediction_log_not_stored_total"
SPOOLED = "modelport_prediction_log_spooled_rows_total"
WRITTEN = "modelport_prediction_log_written_rows_total"
BUFFERED_ROWS = "modelport_prediction_log_buffered_rows"
BUFFERED_BYTES = "modelport_prediction_log_buffered_bytes"
JSON_TYPE = {"content-type": "application/json"}


def scraped(client: TestClient, name: str, **labels: str) -> float:
    """One sample as a Prometheus server reads it from ``/metrics``."""
    response = client.get("/metrics", headers=OPERATOR)
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"{name}{labels} is not in /metrics")


def only_row(client: TestClient, request_id: str) -> dict[str, Any]:
    """The single logged prediction carrying ``request_id``, read through the API."""
    flush_log(client)
    response = client.get(
        "/api/v1/predictions", params={"limit": 500}, headers=admin_headers(client)
    )
    items = response.json()["items"]
    matching = [item for item in items if item["request_id"] == request_id]
    assert len(matching) == 1, f"expected one row for {request_id}, found {len(matching)}"
    return matching[0]


@pytest.fixture
def start_client(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> Callable[..., TestClient]:
    """Build an app with the wine model and some settings changed; the caller enters it."""

    def start(**overrides: Any) -> TestClient:
        settings = make_settings(**overrides)
        register_trained(settings, trained_wine)
        return TestClient(create_app(settings))

    return start


def test_a_successful_prediction_is_logged_with_everything_needed_to_audit_it(
    client: TestClient,
) -> None:
    before = datetime.now(UTC)
    response = client.post("/predict", json=WINE_ROW)
    after = datetime.now(UTC)
    assert response.status_code == 200
    answer = response.json()

    row = only_row(client, response.headers["x-request-id"])
    assert row["model_name"] == "wine-quality"
    assert row["model_version"] == answer["model_version"] == "1"
    assert row["inputs"] == WINE_ROW
    assert row["outputs"] == [{"predicted_quality": answer["predicted_quality"]}]
    assert row["status"] == "success"
    assert row["error"] is None
    assert row["latency_ms"] > 0
    assert before <= datetime.fromisoformat(row["created_at"]) <= after


def test_the_logged_request_id_is_the_one_the_caller_saw(client: TestClient) -> None:
    response = client.post(
        "/api/v1/models/wine-quality/predict",
        json={"inputs": [WINE_ROW, WINE_ROW]},
        headers={"X-Request-ID": "order-4711.retry:2"},
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "order-4711.retry:2"
    assert response.json()["request_id"] == "order-4711.retry:2"

    row = only_row(client, "order-4711.retry:2")
    assert row["inputs"] == {"inputs": [WINE_ROW, WINE_ROW]}
    assert len(row["outputs"]) == 2


def test_invalid_input_is_logged_with_the_reason(client: TestClient) -> None:
    sent = {**WINE_ROW, "alcohol": "strong"}
    response = client.post("/predict", json=sent)
    assert response.status_code == 422

    row = only_row(client, response.headers["x-request-id"])
    assert row["status"] == "invalid_input"
    assert row["model_name"] == "wine-quality"
    assert row["model_version"] == "1"
    assert row["inputs"] == sent
    assert row["outputs"] is None
    assert "alcohol" in row["error"]


def test_an_unknown_model_is_logged_as_an_error(client: TestClient) -> None:
    response = client.post("/api/v1/models/no-such-model/predict", json=WINE_ROW)
    assert response.status_code == 404

    row = only_row(client, response.headers["x-request-id"])
    assert row["status"] == "error"
    assert row["model_name"] == "no-such-model"
    assert row["model_version"] is None
    assert "not found" in row["error"]


def test_too_many_rows_is_logged_as_invalid_input(start_client: Callable[..., TestClient]) -> None:
    with start_client(max_batch_rows=2) as client:
        wait_until_ready(client)
        response = client.post(
            "/api/v1/models/wine-quality/predict", json={"inputs": [WINE_ROW] * 3}
        )
        assert response.status_code == 413

        row = only_row(client, response.headers["x-request-id"])
        assert row["status"] == "invalid_input"
        assert "3 rows" in row["error"]
        assert row["outputs"] is None


def test_graceful_shutdown_writes_rows_still_in_memory(
    start_client: Callable[..., TestClient], database_url: str
) -> None:
    # The writer would wait an hour: only the shutdown can have written these rows.
    with start_client(prediction_log_flush_seconds=3600) as client:
        wait_until_ready(client)
        sent = [client.post("/predict", json=WINE_ROW).headers["x-request-id"] for _ in range(3)]
        assert count_rows(database_url, sent) == dict.fromkeys(sent, 0)
    assert count_rows(database_url, sent) == dict.fromkeys(sent, 1)


def test_rows_beyond_the_memory_buffer_go_to_the_spool_and_reach_the_database(
    start_client: Callable[..., TestClient], database_url: str
) -> None:
    with start_client(prediction_log_buffer=2, prediction_log_flush_seconds=3600) as client:
        wait_until_ready(client)
        sent = [client.post("/predict", json=WINE_ROW) for _ in range(5)]
        assert all(response.status_code == 200 for response in sent)
        request_ids = [response.headers["x-request-id"] for response in sent]

        # The third row found the buffer full: it went by way of the spool file (written by
        # the background task, never on the request path), which also woke the writer.
        health = client.get("/health", headers=OPERATOR)
        log = health.json()["components"]["prediction_log"]["detail"]
        assert log["spooled"] >= 1
        spool = services_of(client).settings.prediction_log_spool

        flush_log(client)
        assert count_rows(database_url, request_ids) == dict.fromkeys(request_ids, 1)
        assert not spool.exists()


def test_inputs_over_the_size_limit_are_stored_as_their_size_and_sha256(
    start_client: Callable[..., TestClient],
) -> None:
    with start_client(prediction_log_max_field_bytes=1024) as client:
        wait_until_ready(client)
        small = client.post("/predict", json=WINE_ROW)
        sent = {"inputs": [WINE_ROW] * 10}
        large = client.post("/api/v1/models/wine-quality/predict", json=sent)
        assert small.status_code == large.status_code == 200

        assert only_row(client, small.headers["x-request-id"])["inputs"] == WINE_ROW
        row = only_row(client, large.headers["x-request-id"])
        # The hash of the body's compact JSON: whoever kept the request can prove it was this one.
        compact = orjson.dumps(sent)
        assert row["inputs"] == {
            "not_stored": "too_large",
            "bytes": len(compact),
            "sha256": hashlib.sha256(compact).hexdigest(),
        }
        assert len(row["outputs"]) == 10  # the answer is small enough to keep whole
        assert row["status"] == "success"


def test_outputs_over_the_size_limit_are_stored_as_their_size_and_sha256(
    start_client: Callable[..., TestClient],
) -> None:
    with start_client(prediction_log_max_field_bytes=1024) as client:
        wait_until_ready(client)
        response = client.post(
            "/api/v1/models/wine-quality/predict", json={"inputs": [WINE_ROW] * 40}
        )
        assert response.status_code == 200
        outputs = [
            {"predicted_quality": p["predicted_quality"]} for p in response.json()["predictions"]
        ]

        row = only_row(client, response.headers["x-request-id"])
        assert row["outputs"]["not_stored"] == "too_large"
        assert row["outputs"]["bytes"] == len(orjson.dumps(outputs))
        assert row["outputs"]["sha256"] == hashlib.sha256(orjson.dumps(outputs)).hexdigest()


def test_a_body_sent_to_an_unknown_model_is_counted_not_stored(client: TestClient) -> None:
    before = metric(NOT_STORED, field="inputs", reason="model_not_resolved")
    body = {"inputs": [{"padding": "z" * 1000}] * 200}  # about 200 KB
    response = client.post("/api/v1/models/no-such-model/predict", json=body)
    assert response.status_code == 404

    row = only_row(client, response.headers["x-request-id"])
    assert row["model_name"] == "no-such-model"
    assert row["status"] == "error"
    assert row["inputs"] == {
        "not_stored": "model_not_resolved",
        "bytes": len(orjson.dumps(body)),
        "sha256": hashlib.sha256(orjson.dumps(body)).hexdigest(),
    }
    assert metric(NOT_STORED, field="inputs", reason="model_not_resolved") == before + 1
    assert scraped(client, NOT_STORED, field="inputs", reason="model_not_resolved") >= 1


def test_an_unparseable_body_is_counted_and_logged_with_a_marker(client: TestClient) -> None:
    before = metric(NOT_STORED, field="inputs", reason="unparseable")
    response = client.post(
        "/predict", content=b'{"alcohol": 9.4, ' + b"x" * 5000, headers=JSON_TYPE
    )
    assert response.status_code == 422

    row = only_row(client, response.headers["x-request-id"])
    assert row["status"] == "invalid_input"
    assert row["inputs"] == {"not_stored": "unparseable"}
    assert "not valid JSON" in row["error"]
    assert metric(NOT_STORED, field="inputs", reason="unparseable") == before + 1


def test_the_log_buffer_and_spool_are_exposed_as_metrics(
    start_client: Callable[..., TestClient],
) -> None:
    with start_client(prediction_log_buffer=2, prediction_log_flush_seconds=3600) as client:
        wait_until_ready(client)
        spooled_before = scraped(client, SPOOLED, reason="buffer_full")
        written_before = scraped(client, WRITTEN)
        rows_before = scraped(client, BUFFERED_ROWS)
        bytes_before = scraped(client, BUFFERED_BYTES)
        for _ in range(5):
            assert client.post("/predict", json=WINE_ROW).status_code == 200

        # The third row found the buffer full (two rows) and went on to the spool file.
        assert scraped(client, SPOOLED, reason="buffer_full") - spooled_before >= 1
        flush_log(client)
        assert scraped(client, BUFFERED_ROWS) == rows_before
        assert scraped(client, BUFFERED_BYTES) == bytes_before
        assert scraped(client, WRITTEN) - written_before >= 5


def test_retention_deletes_only_rows_older_than_the_retention_period(
    start_client: Callable[..., TestClient], database_url: str, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    # More old rows than one delete removes: they go in several batches.
    ancient = log_entries(2500, created_at=now - timedelta(days=400))
    expired = log_entries(3, created_at=now - timedelta(days=31))
    kept = log_entries(3, created_at=now - timedelta(days=29))
    write_entries(database_url, tmp_path / "seed.jsonl", [*ancient, *expired, *kept])
    old_ids = [entry.request_id for entry in [*ancient, *expired]]
    kept_ids = [entry.request_id for entry in kept]

    with start_client(prediction_log_retention_days=30) as client:
        wait_until_ready(client)
        wait_until(
            lambda: sum(count_rows(database_url, old_ids).values()) == 0,
            "the background task to delete the expired rows",
            interval=0.05,  # each look opens a connection of its own
        )
        answered = client.post("/predict", json=WINE_ROW).headers["x-request-id"]
        flush_log(client)

    assert count_rows(database_url, kept_ids) == dict.fromkeys(kept_ids, 1)
    assert count_rows(database_url, [answered]) == {answered: 1}
