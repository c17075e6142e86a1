"""Predictions over HTTP: the wine endpoint and the generic model endpoints."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient

from modelport.builtin.wine import FEATURE_NAMES, TrainedWine
from modelport.settings import Settings
from tests.helpers import WINE_ROW, flush_log, register_trained, services_of
from tests.registry.support import linear_wine_onnx, point_alias, register_onnx, serve

GENERIC = "/api/v1/models/wine-quality/predict"


def wine_rows(trained: TrainedWine, indices: list[int]) -> list[dict[str, float]]:
    features = trained.data.features
    return [dict(zip(FEATURE_NAMES, features[i].tolist(), strict=True)) for i in indices]


def onnx_predictions(onnx_bytes: bytes, rows: list[dict[str, float]]) -> list[float]:
    """What ONNX Runtime itself answers for ``rows`` (float32, the model's input type)."""
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    matrix = np.array([[row[name] for name in FEATURE_NAMES] for row in rows], dtype=np.float32)
    (result,) = session.run(None, {"features": matrix})
    return [float(value) for value in np.asarray(result).ravel()]


def test_predict_returns_quality_version_and_timestamp(client: TestClient) -> None:
    before = datetime.now(UTC)
    response = client.post("/predict", json=WINE_ROW)
    after = datetime.now(UTC)

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"predicted_quality", "model_version", "timestamp"}
    assert isinstance(body["predicted_quality"], float)
    # The first red wine in the UCI file was rated 5 by the tasters.
    assert body["predicted_quality"] == pytest.approx(5, abs=0.5)
    assert body["model_version"] == "1"
    timestamp = datetime.fromisoformat(body["timestamp"])
    assert timestamp.tzinfo is not None
    assert before <= timestamp <= after


def test_predict_accepts_integers_and_the_inclusive_bounds(client: TestClient) -> None:
    lowest = {**WINE_ROW, "alcohol": 8, "ph": 2, "density": 0.9}
    highest = {**WINE_ROW, "alcohol": 16, "ph": 5, "density": 1.1}

    for row in (lowest, highest):
        response = client.post("/predict", json=row)
        assert response.status_code == 200, response.text
        assert 0 <= response.json()["predicted_quality"] <= 10


def test_predict_clips_the_output_to_0_10(settings: Settings) -> None:
    # quality = 2 * alcohol - 20: below 0 for weak wines, above 10 for strong ones.
    register_onnx(settings, linear_wine_onnx({"alcohol": 2.0}, bias=-20.0))
    alcohols = [8.0, 9.4, 14.0, 16.0]
    with serve(settings) as client:
        single = [
            client.post("/predict", json={**WINE_ROW, "alcohol": a}).json()["predicted_quality"]
            for a in alcohols
        ]
        batch = client.post(
            GENERIC, json={"inputs": [{**WINE_ROW, "alcohol": a} for a in alcohols]}
        )
        # Past a few values the answer is named with numpy rather than plain Python.
        large = client.post(
            GENERIC, json={"inputs": [{**WINE_ROW, "alcohol": a} for a in alcohols * 10]}
        )

    assert single == pytest.approx([0.0, 0.0, 8.0, 10.0])
    assert [p["predicted_quality"] for p in batch.json()["predictions"]] == pytest.approx(single)
    assert [p["predicted_quality"] for p in large.json()["predictions"]] == pytest.approx(
        single * 10
    )


def test_a_model_answering_nan_is_refused_not_served(settings: Settings) -> None:
    # quality = sqrt(alcohol - 10): NaN for wines under 10% alcohol.
    register_onnx(settings, linear_wine_onnx({"alcohol": 1.0}, bias=-10.0, then="Sqrt"))
    strong, weak = {**WINE_ROW, "alcohol": 14.0}, {**WINE_ROW, "alcohol": 9.4}
    with serve(settings) as client:
        served = client.post("/predict", json=strong)
        refused = client.post("/predict", json=weak)
        refused_batch = client.post(GENERIC, json={"inputs": [strong, weak]})
        refused_large = client.post(GENERIC, json={"inputs": [strong] * 20 + [weak]})
        flush_log(client)  # the failed calls are logged like any other

    assert served.json()["predicted_quality"] == pytest.approx(2.0)
    assert refused.status_code == 503
    assert "NaN" in refused.json()["detail"]
    assert refused_batch.status_code == 503
    assert "row 1" in refused_batch.json()["detail"]
    assert refused_large.status_code == 503
    assert "row 20" in refused_large.json()["detail"]


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"inputs": [WINE_ROW, WINE_ROW]}, id="list-under-inputs"),
        pytest.param({"inputs": WINE_ROW}, id="one-object-under-inputs"),
        pytest.param(WINE_ROW, id="flat-object"),
    ],
)
def test_generic_predict_accepts_batches_and_single_rows(
    client: TestClient, payload: dict[str, object]
) -> None:
    response = client.post(GENERIC, json=payload)

    assert response.status_code == 200, response.text
    body = response.json()
    inputs = payload.get("inputs", payload)
    expected_rows = len(inputs) if isinstance(inputs, list) else 1
    assert body["model_name"] == "wine-quality"
    assert body["model_version"] == "1"
    assert len(body["predictions"]) == expected_rows
    for prediction in body["predictions"]:
        assert set(prediction) == {"predicted_quality"}
        assert prediction["predicted_quality"] == pytest.approx(5, abs=0.5)
    assert isinstance(body["processing_time_ms"], float)
    assert body["processing_time_ms"] >= 0
    assert body["request_id"] == response.headers["x-request-id"]
    assert len(body["request_id"]) >= 16


def test_generic_predict_echoes_the_callers_request_id(client: TestClient) -> None:
    response = client.post(GENERIC, json=WINE_ROW, headers={"X-Request-ID": "order-42.retry-1"})

    assert response.json()["request_id"] == "order-42.retry-1"
    assert response.headers["x-request-id"] == "order-42.retry-1"


def test_batch_predictions_match_onnxruntime_row_by_row(
    client: TestClient, trained_wine: TrainedWine
) -> None:
    # Rows spread over the file, sent in a scrambled order: any reordering would show.
    indices = [(i * 37) % 1599 for i in range(60)]
    rows = wine_rows(trained_wine, indices)

    response = client.post(GENERIC, json={"inputs": rows})

    assert response.status_code == 200
    served = [p["predicted_quality"] for p in response.json()["predictions"]]
    expected = onnx_predictions(trained_wine.onnx_bytes, rows)
    assert len(set(expected)) > 20  # varied enough that a shuffled answer cannot match
    assert served == pytest.approx(expected, rel=1e-6, abs=1e-6)


def test_versions_endpoint_serves_the_requested_version(
    client: TestClient, settings: Settings
) -> None:
    # Version 2 is a different model (a constant 7.25) and is not production.
    version = register_onnx(settings, linear_wine_onnx({}, bias=7.25), alias=None)
    assert version == 2

    second = client.post("/api/v1/models/wine-quality/versions/2/predict", json=WINE_ROW)
    first = client.post("/api/v1/models/wine-quality/versions/1/predict", json=WINE_ROW)
    default = client.post(GENERIC, json=WINE_ROW)

    assert second.status_code == 200
    assert second.json()["model_version"] == "2"
    assert second.json()["predictions"] == [{"predicted_quality": 7.25}]
    assert first.json()["model_version"] == "1"
    assert first.json()["predictions"][0]["predicted_quality"] == pytest.approx(5, abs=0.5)
    assert default.json()["model_version"] == "1"  # production did not move


def test_alias_query_selects_the_aliased_version(
    wine_registered: Settings, trained_wine: TrainedWine
) -> None:
    assert register_trained(wine_registered, trained_wine) == 2  # production moved to 2
    point_alias(wine_registered, "wine-quality", "production", 1)
    point_alias(wine_registered, "wine-quality", "staging", 2)

    with serve(wine_registered) as client:
        staging = client.post(f"{GENERIC}?alias=staging", json={"inputs": [WINE_ROW]})
        production = client.post(f"{GENERIC}?alias=production", json=WINE_ROW)
        default = client.post(GENERIC, json=WINE_ROW)
        wine = client.post("/predict", json=WINE_ROW)

    assert staging.status_code == 200
    assert staging.json()["model_version"] == "2"
    assert staging.json()["predictions"][0]["predicted_quality"] == pytest.approx(5, abs=0.5)
    assert production.json()["model_version"] == "1"
    assert default.json()["model_version"] == "1"
    assert wine.json()["model_version"] == "1"


def test_predictions_follow_production_when_it_moves(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    settings = make_settings(registry_cache_seconds=0)
    register_trained(settings, trained_wine)
    with serve(settings) as client:
        before = client.post("/predict", json=WINE_ROW).json()
        register_onnx(settings, linear_wine_onnx({}, bias=6.5))
        after = client.post("/predict", json=WINE_ROW).json()

    assert before["model_version"] == "1"
    assert after["model_version"] == "2"
    assert after["predicted_quality"] == 6.5


def test_model_is_loaded_once_and_kept_in_memory(client: TestClient) -> None:
    models = services_of(client).models
    assert models.loads == 1  # preloaded at start-up

    for alcohol in (9.0, 10.0, 11.0, 12.0, 13.0):
        row = {**WINE_ROW, "alcohol": alcohol}
        assert client.post("/predict", json=row).status_code == 200
        assert client.post(GENERIC, json={"inputs": [row, row]}).status_code == 200
        assert client.post(f"{GENERIC}?alias=production", json=row).status_code == 200
        versioned = client.post("/api/v1/models/wine-quality/versions/1/predict", json=row)
        assert versioned.status_code == 200

    assert models.loads == 1
    assert len(models.loaded()) == 1


def test_concurrent_first_calls_load_a_version_once(client: TestClient, settings: Settings) -> None:
    register_onnx(settings, linear_wine_onnx({}, bias=7.25), alias=None)
    url = "/api/v1/models/wine-quality/versions/2/predict"

    with ThreadPoolExecutor(max_workers=8) as pool:
        responses = list(pool.map(lambda _: client.post(url, json=WINE_ROW), range(16)))

    assert [r.status_code for r in responses] == [200] * 16
    assert {r.json()["predictions"][0]["predicted_quality"] for r in responses} == {7.25}
    assert services_of(client).models.loads == 2  # version 1 at start-up, version 2 once
