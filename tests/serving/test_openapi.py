"""Interactive docs and the OpenAPI document a client generator or a person reads."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.builtin.wine import FEATURE_NAMES, WINE_SIGNATURE
from modelport.settings import Settings
from tests.helpers import WINE_ROW

# Serving, registry and datasets endpoints a client relies on (other areas add their own).
EXPECTED = {
    ("post", "/predict"),
    ("post", "/api/v1/models/{name}/predict"),
    ("post", "/api/v1/models/{name}/versions/{version}/predict"),
    ("get", "/api/v1/models"),
    ("get", "/api/v1/models/{name}"),
    ("get", "/api/v1/models/{name}/versions/{version}"),
    ("get", "/api/v1/datasets"),
    ("get", "/api/v1/datasets/{name}"),
    ("get", "/api/v1/datasets/{name}/rows"),
}


@pytest.fixture(scope="module")
def docs_client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    """The docs need no database: the app is not started."""
    return TestClient(create_app(Settings(var_dir=tmp_path_factory.mktemp("docs"))))


@pytest.fixture(scope="module")
def spec(docs_client: TestClient) -> dict[str, Any]:
    response = docs_client.get("/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = response.json()
    return document


def wine_body_schema(spec: dict[str, Any]) -> dict[str, Any]:
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    schema: dict[str, Any] = content["schema"]
    return schema


@pytest.mark.parametrize(("path", "marker"), [("/docs", "swagger"), ("/redoc", "redoc")])
def test_interactive_docs_answer(docs_client: TestClient, path: str, marker: str) -> None:
    response = docs_client.get(path)

    assert response.status_code == 200
    assert "text/html" in response.headers["content-type"]
    assert marker in response.text.lower()
    assert "/openapi.json" in response.text


def test_openapi_lists_every_endpoint(docs_client: TestClient, spec: dict[str, Any]) -> None:
    listed = {(method, path) for path, item in spec["paths"].items() for method in item}
    assert spec["openapi"].startswith("3.")
    assert listed >= EXPECTED

    for route in docs_client.app.routes:  # type: ignore[attr-defined]
        if isinstance(route, APIRoute) and route.include_in_schema:
            for method in route.methods or ():
                assert (method.lower(), route.path) in listed, (method, route.path)


def test_predict_body_schema_describes_all_11_features(spec: dict[str, Any]) -> None:
    schema = wine_body_schema(spec)

    assert schema["type"] == "object"
    assert sorted(schema["required"]) == sorted(FEATURE_NAMES)
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(FEATURE_NAMES)
    for feature in WINE_SIGNATURE.inputs:
        field = schema["properties"][feature.name]
        assert field["type"] == "number"
        assert field["minimum"] == feature.minimum
        assert field["maximum"] == feature.maximum
        assert field["examples"] == [feature.example]
        assert feature.description in field["description"]
        assert feature.unit is not None and feature.unit in field["description"]
    # Spelled out once, so a change to the signature cannot quietly change the contract.
    assert schema["properties"]["alcohol"]["minimum"] == 8
    assert schema["properties"]["alcohol"]["maximum"] == 16
    assert schema["properties"]["ph"]["description"].startswith("Acidity on the pH scale")


def test_predict_body_example_is_the_first_red_wine(spec: dict[str, Any]) -> None:
    content = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    examples = [example["value"] for example in content["examples"].values()]

    assert examples == [WINE_ROW]
    assert spec["paths"]["/predict"]["post"]["requestBody"]["required"] is True


def test_predict_documents_its_answer_and_errors(spec: dict[str, Any]) -> None:
    operation = spec["paths"]["/predict"]["post"]
    answer = spec["components"]["schemas"]["WinePredictionOut"]

    assert set(answer["properties"]) == {"predicted_quality", "model_version", "timestamp"}
    assert answer["properties"]["timestamp"]["format"] == "date-time"
    assert {"200", "404", "413", "422", "503"} <= set(operation["responses"])


def test_generic_predict_documents_both_body_forms(spec: dict[str, Any]) -> None:
    operation = spec["paths"]["/api/v1/models/{name}/predict"]["post"]
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    parameters = {p["name"]: p for p in operation["parameters"]}

    assert {e["value"] == {"inputs": [WINE_ROW]} for e in examples.values()} == {True, False}
    assert any(e["value"] == WINE_ROW for e in examples.values())
    assert parameters["name"]["in"] == "path"
    assert parameters["alias"]["in"] == "query"
    assert parameters["alias"]["required"] is False
