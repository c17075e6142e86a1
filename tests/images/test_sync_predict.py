"""Classify at once: the generic predict endpoint takes an image upload for image models and
says clearly when the body does not fit the model."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.builtin.wine import TrainedWine
from modelport.errors import ModelRunError
from modelport.settings import Settings
from tests.helpers import (
    OPERATOR,
    WINE_ROW,
    admin_headers,
    flush_log,
    register_trained,
    services_of,
)
from tests.images.support import CAT_CLASSES, CLASSIFY, SQLITE_ONLY, cat, picture, serve

WINE_PREDICT = "/api/v1/models/wine-quality/predict"
pytestmark = SQLITE_ONLY  # request handling only; the database behind it plays no part


@pytest.fixture
def both_client(image_settings: Settings, trained_wine: TrainedWine) -> Iterator[TestClient]:
    """The image classifier and the wine regressor side by side."""
    register_trained(image_settings, trained_wine)
    with serve(image_settings) as client:
        yield client


def test_an_image_upload_returns_the_top_five_at_once(image_client: TestClient) -> None:
    response = image_client.post(CLASSIFY, files={"file": ("cat.jpg", cat(), "image/jpeg")})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "imagenet-classifier"
    assert body["model_version"] == "1"
    assert body["request_id"] == response.headers["x-request-id"]
    predictions = body["predictions"]
    assert len(predictions) == 5
    probabilities = [p["probability"] for p in predictions]
    assert probabilities == sorted(probabilities, reverse=True)
    assert predictions[0]["class_index"] in CAT_CLASSES
    assert 0 < sum(probabilities) <= 1.0 + 1e-6


def test_a_specific_version_takes_an_upload_too(image_client: TestClient) -> None:
    response = image_client.post(
        "/api/v1/models/imagenet-classifier/versions/1/predict",
        files={"file": ("cat.jpg", cat(), "image/jpeg")},
    )

    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["label"] == "Egyptian cat"


def test_synchronous_classifications_are_in_the_prediction_log(image_client: TestClient) -> None:
    response = image_client.post(CLASSIFY, files={"file": ("cat.jpg", cat(), "image/jpeg")})
    flush_log(image_client)

    logged = image_client.get(
        "/api/v1/predictions",
        params={"model": "imagenet-classifier"},
        headers=admin_headers(image_client),
    )

    assert logged.status_code == 200, logged.text
    (entry,) = logged.json()["items"]
    assert entry["request_id"] == response.json()["request_id"]
    assert entry["inputs"]["image"]["format"] == "JPEG"
    assert entry["outputs"][0]["label"] == "Egyptian cat"


def test_json_to_an_image_model_is_415_saying_how_to_send_it(image_client: TestClient) -> None:
    response = image_client.post(CLASSIFY, json={"image": "cat.jpg"})

    assert response.status_code == 415
    detail = response.json()["detail"]
    assert "takes an image" in detail
    assert "multipart/form-data" in detail
    assert "'file'" in detail


def test_an_upload_to_the_wine_model_is_415(both_client: TestClient) -> None:
    response = both_client.post(WINE_PREDICT, files={"file": ("cat.jpg", cat(), "image/jpeg")})

    assert response.status_code == 415
    assert "JSON" in response.json()["detail"]
    assert both_client.post(WINE_PREDICT, json=WINE_ROW).status_code == 200


def test_an_upload_without_the_file_field_is_422(image_client: TestClient) -> None:
    response = image_client.post(
        CLASSIFY, files={"photo": ("cat.jpg", cat(), "image/jpeg")}, data={"note": "a cat"}
    )

    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "file"]
    assert error["type"] == "missing"


def test_a_text_field_named_file_is_422(image_client: TestClient) -> None:
    response = image_client.post(CLASSIFY, data={"file": "not a file"}, files={"x": ("x", b"x")})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "file"]


def test_an_unknown_image_model_is_404(image_client: TestClient) -> None:
    response = image_client.post(
        "/api/v1/models/no-such-model/predict", files={"file": ("p.png", picture(), "image/png")}
    )

    assert response.status_code == 404
    assert "no-such-model" in response.json()["detail"]


def test_the_docs_show_both_image_endpoints_take_a_file(image_client: TestClient) -> None:
    paths = image_client.get("/openapi.json").json()["paths"]

    for path in ("/api/v1/images/predictions", "/api/v1/models/{name}/predict"):
        body = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert body["properties"]["file"]["format"] == "binary", path
        assert body["required"] == ["file"], path


# --- failures are logged and counted like tabular predictions -------------------------------


def counted(client: TestClient, status: str) -> float:
    """modelport_predictions_total for the classifier and ``status``, as Prometheus reads it."""
    text = client.get("/metrics", headers=OPERATOR).text
    pattern = (
        rf'^modelport_predictions_total\{{model="imagenet-classifier",status="{status}"\}} (\S+)$'
    )
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def logged(client: TestClient, request_id: str) -> dict[str, Any]:
    flush_log(client)
    page = client.get(
        "/api/v1/predictions",
        params={"model": "imagenet-classifier"},
        headers=admin_headers(client),
    )
    assert page.status_code == 200, page.text
    (entry,) = [item for item in page.json()["items"] if item["request_id"] == request_id]
    return dict(entry)


def test_a_classification_is_counted_in_the_prediction_metrics(image_client: TestClient) -> None:
    before = counted(image_client, "success")

    response = image_client.post(CLASSIFY, files={"file": ("cat.jpg", cat(), "image/jpeg")})

    assert response.status_code == 200, response.text
    assert counted(image_client, "success") == before + 1


def test_an_undecodable_image_is_logged_and_counted_as_invalid_input(
    image_client: TestClient,
) -> None:
    before = counted(image_client, "invalid_input")

    response = image_client.post(
        CLASSIFY, files={"file": ("cat.jpg", b"this is no picture", "image/jpeg")}
    )

    assert response.status_code == 400, response.text
    entry = logged(image_client, response.headers["x-request-id"])
    assert entry["status"] == "invalid_input"
    assert entry["error"] == response.json()["detail"]
    assert entry["model_version"] == "1"
    assert entry["inputs"] == {"image": {"bytes": len(b"this is no picture")}}
    assert counted(image_client, "invalid_input") == before + 1


def test_a_model_failure_is_logged_and_counted_as_an_error(image_client: TestClient) -> None:
    (loaded,) = services_of(image_client).models.loaded()

    def broken(_tensor: Any) -> Any:
        raise ModelRunError("onnxruntime: a node failed")

    loaded.runtime.predict = broken  # type: ignore[method-assign]
    before = counted(image_client, "error")

    response = image_client.post(CLASSIFY, files={"file": ("cat.jpg", cat(), "image/jpeg")})

    assert response.status_code == 503, response.text
    assert "onnxruntime" not in response.text  # the library's words stay in the server log
    entry = logged(image_client, response.headers["x-request-id"])
    assert entry["status"] == "error"
    assert entry["error"] == response.json()["detail"]
    assert entry["inputs"]["image"]["format"] == "JPEG"
    assert entry["outputs"] is None
    assert counted(image_client, "error") == before + 1
