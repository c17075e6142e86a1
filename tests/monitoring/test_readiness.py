"""Readiness reports every dependency; only what stops this process serving its loaded models
makes it unready: a stopped S3 server leaves a replica with its models loaded ready (and says
so), a replica that could not load any model is not ready, Redis counts only when rate limits
fail closed."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from modelport.monitoring.probes import store_probe
from modelport.settings import Settings
from tests.helpers import (
    OPERATOR,
    WINE_ROW,
    admin_headers,
    register_trained,
    run,
    settings_for,
    wait_until_ready,
)
from tests.ratelimit.support import closed_port_url as closed_redis_url
from tests.ratelimit.support import require_redis
from tests.storage.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, MotoS3
from tests.storage.test_s3_store import register_from_another_host

STORE_DOWN_IMPACT = (
    "uploads, and loading a model that is not in memory yet, answer 503 until it answers; "
    "models in memory keep serving"
)


@pytest.fixture
def moto_s3() -> Iterator[MotoS3]:
    """A local S3 server of this test's own, which the test stops."""
    server = MotoS3.start()
    yield server
    server.stop()


@pytest.fixture
def s3_settings(
    make_settings: Callable[..., Settings], moto_s3: MotoS3, tmp_path: Path
) -> Settings:
    """An app storing its artifacts in S3, checking the store on every probe (no reuse)."""
    return make_settings(
        artifact_store=f"s3://{moto_s3.new_bucket()}/modelport",
        s3_endpoint_url=moto_s3.endpoint_url,
        s3_region=REGION,
        s3_access_key_id=ACCESS_KEY_ID,
        s3_secret_access_key=SECRET_ACCESS_KEY,
        artifact_cache_dir=tmp_path / "artifact-cache",
        health_check_seconds=0,
    )


def readiness(client: TestClient) -> tuple[int, dict[str, Any]]:
    response = client.get("/health/ready")
    return response.status_code, response.json()


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {name: c["status"] for name, c in report["components"].items()}


def upload(client: TestClient, headers: dict[str, str], data: bytes) -> Any:
    return client.post(
        "/api/v1/models/wine-quality/versions",
        files={"file": ("model.onnx", data, "application/octet-stream")},
        headers=headers,
    )


def restart(moto_s3: MotoS3) -> MotoS3:
    """The S3 server back on the same address, holding the same buckets (moto keeps them in
    this process)."""
    host, port = moto_s3.endpoint_url.removeprefix("http://").split(":")
    server = ThreadedMotoServer(ip_address=host, port=int(port), verbose=False)
    server.start()
    return MotoS3(server, moto_s3.endpoint_url)


def test_with_s3_stopped_a_replica_with_its_models_loaded_stays_ready_and_says_so(
    s3_settings: Settings, trained_wine: TrainedWine, moto_s3: MotoS3
) -> None:
    register_trained(s3_settings, trained_wine)
    with TestClient(create_app(s3_settings)) as client:
        wait_until_ready(client)
        status, report = readiness(client)
        assert status == 200
        assert (report["status"], report["ready"]) == ("ok", True)
        assert report["components"]["artifact_store"] == {
            "status": "up",
            "required": False,
            "impact": None,
            "detail": {},
        }

        moto_s3.stop()

        status, report = readiness(client)
        assert status == 200, report
        assert (report["status"], report["ready"]) == ("degraded", True)
        assert statuses(report) == {
            "database": "up",
            "models": "up",
            "prediction_log": "up",
            "artifact_store": "down",
            "inference": "up",
        }
        assert report["components"]["artifact_store"] == {
            "status": "down",
            "required": False,
            "impact": STORE_DOWN_IMPACT,
            "detail": {},
        }
        # What readiness promises: the loaded model serves; what it warns of: uploads fail.
        assert client.post("/predict", json=WINE_ROW).status_code == 200
        refused = upload(client, admin_headers(client), trained_wine.onnx_bytes)
        assert refused.status_code == 503, refused.text
        assert "artifact store" in refused.json()["detail"]
        assert "retry" in refused.json()["detail"]

        # Operators see why, in words that name no endpoint.
        health = client.get("/health", headers=OPERATOR).json()
        store = health["components"]["artifact_store"]
        assert store["detail"]["problem"] == "the store cannot be reached"
        assert moto_s3.endpoint_url.removeprefix("http://") not in str(health)

        back = restart(moto_s3)
        try:
            status, report = readiness(client)
            assert (status, report["status"]) == (200, "ok")
            assert report["components"]["artifact_store"]["status"] == "up"
        finally:
            back.stop()


def test_a_replica_that_cannot_load_its_models_while_s3_is_stopped_is_not_ready(
    s3_settings: Settings, trained_wine: TrainedWine, moto_s3: MotoS3
) -> None:
    # Registered from another host: this replica's cache is empty, so it must read S3.
    register_from_another_host(s3_settings, trained_wine)
    moto_s3.stop()

    with TestClient(create_app(s3_settings)) as client:
        status, report = readiness(client)

        assert status == 503, report
        assert report["ready"] is False
        assert statuses(report) == {
            "database": "up",
            "models": "down",
            "prediction_log": "up",
            "artifact_store": "down",
            "inference": "up",
        }
        assert report["components"]["models"]["required"] is True


def test_a_file_store_that_cannot_be_written_is_reported_down_while_models_serve(
    settings: Settings, trained_wine: TrainedWine
) -> None:
    register_trained(settings, trained_wine)
    root = Path(settings.artifact_store.removeprefix("file://"))
    with TestClient(create_app(settings.model_copy(update={"health_check_seconds": 0}))) as client:
        wait_until_ready(client)
        assert readiness(client)[1]["components"]["artifact_store"]["status"] == "up"

        shutil.rmtree(root)
        root.write_text("a file where the store's folder was")

        status, report = readiness(client)
        assert status == 200
        assert report["components"]["artifact_store"]["status"] == "down"
        detail = client.get("/health", headers=OPERATOR).json()["components"]["artifact_store"]
        assert detail["detail"]["problem"] == "the store's folder is not a folder"
        assert client.post("/predict", json=WINE_ROW).status_code == 200


@pytest.mark.parametrize(
    ("fail_open", "ready_status"), [(True, 200), (False, 503)], ids=["fail-open", "fail-closed"]
)
def test_redis_down_makes_the_replica_unready_only_when_limits_fail_closed(
    make_settings: Callable[..., Settings],
    trained_wine: TrainedWine,
    fail_open: bool,
    ready_status: int,
) -> None:
    settings = make_settings(
        redis_url=closed_redis_url(), rate_limit_fail_open=fail_open, health_check_seconds=0
    )
    register_trained(settings, trained_wine)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)

        status, report = readiness(client)

        assert status == ready_status, report
        assert report["ready"] is fail_open
        redis = report["components"]["redis"]
        assert (redis["status"], redis["required"]) == ("down", not fail_open)
        assert ("not enforced" if fail_open else "refused with 503") in redis["impact"]
        health = client.get("/health", headers=OPERATOR).json()["components"]["redis"]
        assert health["detail"]["problem"] == "Redis cannot be reached"
        # Why it counts only then: failing closed, no request is served while Redis is away.
        assert client.post("/predict", json=WINE_ROW).status_code == ready_status


def test_a_reachable_redis_is_reported_up(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    settings = make_settings(redis_url=require_redis(), rate_limit_fail_open=False)
    register_trained(settings, trained_wine)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        status, report = readiness(client)

    assert (status, report["status"]) == (200, "ok")
    assert report["components"]["redis"] == {
        "status": "up",
        "required": True,
        "impact": None,
        "detail": {},
    }


def test_repeated_probes_reuse_one_check_of_the_store(
    s3_settings: Settings, trained_wine: TrainedWine, moto_s3: MotoS3
) -> None:
    """Orchestrators probe every few seconds from every replica: within the reuse window the
    store is asked once, so a stopped store is noticed only when the window has passed."""
    register_trained(s3_settings, trained_wine)
    reused = s3_settings.model_copy(update={"health_check_seconds": 300})
    with TestClient(create_app(reused)) as client:
        wait_until_ready(client)
        assert readiness(client)[1]["components"]["artifact_store"]["status"] == "up"
        moto_s3.stop()

        for _ in range(5):
            assert readiness(client)[1]["components"]["artifact_store"]["status"] == "up"


def test_a_bucket_that_does_not_exist_is_named_as_such_to_operators(
    moto_s3: MotoS3, tmp_path: Path
) -> None:
    settings = settings_for(
        tmp_path / "var",
        f"sqlite+aiosqlite:///{tmp_path / 'modelport.db'}",
        artifact_store="s3://no-such-bucket/modelport",
        s3_endpoint_url=moto_s3.endpoint_url,
        s3_region=REGION,
        s3_access_key_id=ACCESS_KEY_ID,
        s3_secret_access_key=SECRET_ACCESS_KEY,
    )

    result = run(store_probe(settings).state())

    assert (result.up, result.problem) == (False, "the bucket does not exist")
