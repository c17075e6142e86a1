"""An artifact changed after registration is never served: 503 naming the sha256 check."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from modelport.builtin.wine import TrainedWine
from modelport.settings import Settings
from tests.helpers import WINE_ROW, register_trained, services_of
from tests.registry.support import artifact_file, linear_wine_onnx, register_onnx, serve
from tests.serving.support import GENERIC

# A swapped-in model that loads and runs fine is the dangerous case: only the hash catches it.
TAMPERINGS: dict[str, Callable[[bytes], bytes]] = {
    "another-valid-model": lambda _: linear_wine_onnx({}, bias=9.0),
    "one-byte-flipped": lambda original: original[:-1] + bytes([original[-1] ^ 1]),
    "truncated": lambda original: original[: len(original) // 2],
    "garbage": lambda _: b"\x00not an onnx model\xff",
}


@pytest.mark.parametrize("tampering", TAMPERINGS)
def test_fresh_app_refuses_a_tampered_artifact(
    settings: Settings, trained_wine: TrainedWine, tampering: str
) -> None:
    register_trained(settings, trained_wine)
    path = artifact_file(settings, "wine-quality", 1)
    path.write_bytes(TAMPERINGS[tampering](path.read_bytes()))

    with serve(settings, wait=False) as client:
        responses = [
            client.post("/predict", json=WINE_ROW),
            client.post(GENERIC, json={"inputs": [WINE_ROW]}),
            client.post("/api/v1/models/wine-quality/versions/1/predict", json=WINE_ROW),
        ]
        loaded = services_of(client).models.loaded()

    for response in responses:
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert "sha256" in detail
        assert "will not be served" in detail
    assert loaded == []


def test_version_not_yet_loaded_is_refused_when_tampered(
    client: TestClient, settings: Settings
) -> None:
    register_onnx(settings, linear_wine_onnx({}, bias=7.0), alias=None)
    artifact_file(settings, "wine-quality", 2).write_bytes(linear_wine_onnx({}, bias=1.0))

    refused = client.post("/api/v1/models/wine-quality/versions/2/predict", json=WINE_ROW)
    again = client.post("/api/v1/models/wine-quality/versions/2/predict", json=WINE_ROW)
    still_served = client.post("/predict", json=WINE_ROW)  # version 1 was verified at start-up

    assert refused.status_code == 503
    assert "sha256" in refused.json()["detail"]
    assert again.status_code == 503
    assert still_served.status_code == 200
    assert still_served.json()["model_version"] == "1"


def test_missing_artifact_is_503_saying_so(settings: Settings, trained_wine: TrainedWine) -> None:
    register_trained(settings, trained_wine)
    artifact_file(settings, "wine-quality", 1).unlink()

    with serve(settings, wait=False) as client:
        response = client.post("/predict", json=WINE_ROW)

    assert response.status_code == 503
    assert "missing" in response.json()["detail"]


def test_restored_artifact_is_served_again(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    # A failed load is remembered for MODELPORT_MODEL_LOAD_RETRY_SECONDS; none here.
    settings = make_settings(model_load_retry_seconds=0)
    register_trained(settings, trained_wine)
    path = artifact_file(settings, "wine-quality", 1)
    path.write_bytes(b"tampered")

    with serve(settings, wait=False) as client:
        refused = client.post("/predict", json=WINE_ROW)
        path.write_bytes(trained_wine.onnx_bytes)  # an operator restores the file
        served = client.post("/predict", json=WINE_ROW)

    assert refused.status_code == 503
    assert served.status_code == 200
    assert served.json()["predicted_quality"] == pytest.approx(5, abs=0.5)
