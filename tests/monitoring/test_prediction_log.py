"""Every prediction, answered or refused, leaves one row in the prediction log."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

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
    wait_until_ready,
)
from tests.monitoring.support import count_rows


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
