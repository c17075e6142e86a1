"""Probes: what a load balancer, an orchestrator or a curious person sees."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from modelport.app import create_app
from modelport.settings import Settings
from tests.helpers import OPERATOR, WINE_ROW, flush_log
from tests.processes import free_port


def test_root_reports_a_healthy_service(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model_loaded"] is True
    assert body["database_connected"] is True
    assert body["version"]


def test_ping_answers(client: TestClient) -> None:
    response = client.get("/ping")
    assert (response.status_code, response.json()) == (200, {"ping": "pong"})


def test_health_shows_each_component(client: TestClient) -> None:
    assert client.post("/predict", json=WINE_ROW).status_code == 200
    flush_log(client)

    response = client.get("/health", headers=OPERATOR)
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    components = body["components"]
    assert components["database"]["status"] == "up"
    assert components["models"]["status"] == "up"
    assert components["models"]["detail"]["loaded"] == ["wine-quality:1"]
    cache = components["models"]["detail"]["cache"]
    assert (cache["models"], cache["loads"], cache["evictions"]) == (1, 1, 0)
    assert cache["hits"] >= 1  # the prediction above found the preloaded model
    log = components["prediction_log"]
    assert log["status"] == "up"
    assert log["detail"]["written"] >= 1
    assert log["detail"]["last_error"] is None


def test_a_serving_app_is_live_and_ready(client: TestClient) -> None:
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    assert ready.json()["status"] == "ok"


def test_readiness_reports_how_busy_inference_is(client: TestClient) -> None:
    """Saturation itself is shown under attack in tests/serving/test_inference_limits.py."""
    ready = client.get("/health/ready").json()["components"]["inference"]
    detail = client.get("/health", headers=OPERATOR).json()["components"]["inference"]

    assert (ready["status"], ready["required"], ready["detail"]) == ("up", False, {})
    assert detail["detail"]["busy"] == 0
    assert detail["detail"]["stuck"] == 0
    assert detail["detail"]["threads"] >= 1
    assert "waiting" in detail["detail"]


@pytest.fixture
def empty_registry_client(settings: Settings) -> Iterator[TestClient]:
    """An app whose registry holds no model at all."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def test_without_a_model_the_app_is_live_but_not_ready(empty_registry_client: TestClient) -> None:
    client = empty_registry_client
    assert client.get("/health/live").status_code == 200

    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["components"]["models"]["status"] == "down"
    assert ready.json()["components"]["database"]["status"] == "up"

    root = client.get("/").json()
    assert (root["status"], root["model_loaded"], root["database_connected"]) == (
        "degraded",
        False,
        True,
    )
    assert client.get("/health").json()["status"] == "degraded"


def unreachable(database_url: str, folder: Path) -> str:
    """The same kind of database, somewhere nothing answers."""
    if database_url.startswith("sqlite"):
        return f"sqlite+aiosqlite:///{folder / 'no-such-folder' / 'modelport.db'}"
    url = make_url(database_url).set(host="127.0.0.1", port=free_port())
    return url.render_as_string(hide_password=False)


def test_starting_without_a_database_is_live_not_ready(
    make_settings: Callable[..., Settings], database_url: str, tmp_path: Path
) -> None:
    settings = make_settings(database_url=unreachable(database_url, tmp_path))
    with TestClient(create_app(settings)) as client:
        assert client.get("/health/live").status_code == 200
        assert client.get("/ping").status_code == 200
        assert client.post("/predict", json=WINE_ROW).status_code == 503

        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["components"]["database"]["status"] == "down"
        assert client.get("/").json()["database_connected"] is False
