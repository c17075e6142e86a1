"""The Open Inference Protocol (KServe V2) under /v2: raw JSON, then the official Triton client."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as triton
from fastapi.testclient import TestClient
from tritonclient.utils import InferenceServerException, deserialize_bytes_tensor

from modelport import __version__
from modelport.builtin.imagenet import IMAGENET_SIGNATURE
from modelport.builtin.wine import FEATURE_NAMES, TrainedWine
from modelport.settings import Settings
from tests.helpers import (
    WINE_ROW,
    admin_headers,
    bearer,
    create_account,
    flush_log,
    live_server,
    register_trained,
)
from tests.registry.support import linear_wine_onnx, register_onnx, serve
from tests.serving.v2_support import (
    colour_classifier,
    field_inputs,
    matrix_input,
    register_model,
)

INFER = "/v2/models/wine-quality/infer"
METADATA = {
    "name": "wine-quality",
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 11]}],
    "outputs": [{"name": "predicted_quality", "datatype": "FP64", "shape": [-1]}],
}


def wine_rows(trained: TrainedWine, count: int, start: int = 0) -> list[dict[str, float]]:
    features = trained.data.features[start : start + count]
    return [dict(zip(FEATURE_NAMES, row.tolist(), strict=True)) for row in features]


def rest_predictions(client: TestClient, rows: list[dict[str, float]]) -> list[float]:
    """What POST /predict answers for each row: the reference for every V2 answer."""
    answers = []
    for row in rows:
        response = client.post("/predict", json=row)
        assert response.status_code == 200, response.text
        answers.append(response.json()["predicted_quality"])
    return answers


def assert_protocol_error(response: Any, status: int, *fragments: str) -> str:
    """A V2 error: the status, a body that is exactly ``{"error": message}`` naming each part,
    plus the request id every error body carries."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "request_id"}, body
    assert body["request_id"] == response.headers["x-request-id"]
    for fragment in fragments:
        assert fragment in body["error"], (fragment, body["error"])
    message: str = body["error"]
    return message


# --- server and model metadata, health ---------------------------------------------------


def test_server_metadata_names_modelport_and_the_binary_extension(client: TestClient) -> None:
    response = client.get("/v2")

    assert response.status_code == 200
    assert response.json() == {
        "name": "modelport",
        "version": __version__,
        "extensions": ["binary_tensor_data"],
    }


def test_server_is_live_and_ready_once_the_model_is_loaded(client: TestClient) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200
    assert ready.json() == {"ready": True}


def test_server_without_models_is_live_but_not_ready(settings: Settings) -> None:
    with serve(settings, wait=False) as client:
        assert client.get("/v2/health/live").status_code == 200
        response = client.get("/v2/health/ready")

    assert response.status_code == 503
    assert response.json()["ready"] is False
    assert "no model is loaded" in response.json()["error"]


def test_model_metadata_advertises_the_2d_input_from_the_signature(client: TestClient) -> None:
    for path in ("/v2/models/wine-quality", "/v2/models/wine-quality/versions/1"):
        response = client.get(path)
        assert response.status_code == 200, response.text
        assert response.json() == METADATA


def test_model_and_version_are_ready_once_loaded(client: TestClient) -> None:
    for path in ("/v2/models/wine-quality/ready", "/v2/models/wine-quality/versions/1/ready"):
        response = client.get(path)
        assert response.status_code == 200, response.text
        assert response.json() == {"name": "wine-quality", "ready": True}


def test_a_version_becomes_ready_when_first_used(wine_registered: Settings) -> None:
    """Only production is preloaded; another version loads on its first inference."""
    register_onnx(wine_registered, linear_wine_onnx({"alcohol": 0.5}, 0.0), alias=None)
    with serve(wine_registered) as client:
        versions = client.get("/v2/models/wine-quality").json()["versions"]
        before = client.get("/v2/models/wine-quality/versions/2/ready")
        infer = client.post(
            "/v2/models/wine-quality/versions/2/infer", json={"inputs": [matrix_input([WINE_ROW])]}
        )
        after = client.get("/v2/models/wine-quality/versions/2/ready")
        production = client.post(INFER, json={"inputs": [matrix_input([WINE_ROW])]})

    assert versions == ["1", "2"]
    assert before.status_code == 503
    assert before.json()["ready"] is False
    assert "version 2" in before.json()["error"]
    assert infer.status_code == 200, infer.text
    assert infer.json()["model_version"] == "2"
    # The hand-made model is 0.5 * alcohol: 4.7 for the first red wine (float32 precision).
    assert infer.json()["outputs"][0]["data"] == [pytest.approx(4.7, abs=1e-5)]
    assert after.status_code == 200
    assert production.json()["model_version"] == "1"


# --- inference -----------------------------------------------------------------------------


@pytest.mark.parametrize("nested", [True, False], ids=["nested", "flat"])
def test_infer_with_the_2d_tensor_equals_rest_predict(
    client: TestClient, trained_wine: TrainedWine, nested: bool
) -> None:
    rows = wine_rows(trained_wine, 5)

    response = client.post(INFER, json={"inputs": [matrix_input(rows, nested=nested)]})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == "wine-quality"
    assert body["model_version"] == "1"
    assert body["outputs"] == [
        {
            "name": "predicted_quality",
            "shape": [5],
            "datatype": "FP64",
            "data": rest_predictions(client, rows),
        }
    ]


def test_infer_with_one_tensor_per_feature_equals_rest_predict(
    client: TestClient, trained_wine: TrainedWine
) -> None:
    rows = wine_rows(trained_wine, 4, start=100)

    response = client.post(INFER, json={"inputs": field_inputs(rows)})

    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == rest_predictions(client, rows)


def test_infer_accepts_per_feature_tensors_shaped_rows_by_one(client: TestClient) -> None:
    inputs = field_inputs([WINE_ROW], datatype="FP32")
    for tensor in inputs:
        tensor["shape"] = [1, 1]
        tensor["data"] = [tensor["data"]]

    response = client.post("/v2/models/wine-quality/versions/1/infer", json={"inputs": inputs})

    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == rest_predictions(client, [WINE_ROW])


def test_infer_echoes_the_request_id_or_answers_the_server_one(client: TestClient) -> None:
    given = client.post(INFER, json={"id": "batch-42", "inputs": [matrix_input([WINE_ROW])]})
    generated = client.post(
        INFER, json={"inputs": [matrix_input([WINE_ROW])]}, headers={"X-Request-ID": "req-7"}
    )

    assert given.json()["id"] == "batch-42"
    assert generated.json()["id"] == "req-7"


def test_infer_answers_the_requested_outputs(client: TestClient) -> None:
    body = {"inputs": [matrix_input([WINE_ROW])], "outputs": [{"name": "predicted_quality"}]}

    response = client.post(INFER, json=body)

    assert response.status_code == 200, response.text
    assert [output["name"] for output in response.json()["outputs"]] == ["predicted_quality"]


def test_infer_can_answer_outputs_as_binary_data(client: TestClient) -> None:
    rows = [WINE_ROW, {**WINE_ROW, "alcohol": 12.0}]
    body = {"inputs": [matrix_input(rows)], "parameters": {"binary_data_output": True}}

    response = client.post(INFER, json=body)

    assert response.status_code == 200, response.text
    header_length = int(response.headers["inference-header-content-length"])
    header = orjson.loads(response.content[:header_length])
    (output,) = header["outputs"]
    assert output["parameters"] == {"binary_data_size": 16}
    assert "data" not in output
    values = np.frombuffer(response.content[header_length:], dtype="<f8").tolist()
    assert values == rest_predictions(client, rows)


def test_infer_is_written_to_the_prediction_log(client: TestClient) -> None:
    response = client.post(
        INFER, json={"inputs": [matrix_input([WINE_ROW])]}, headers={"X-Request-ID": "v2-logged"}
    )
    assert response.status_code == 200
    flush_log(client)

    page = client.get("/api/v1/predictions", headers=admin_headers(client)).json()

    (record,) = [r for r in page["items"] if r["request_id"] == "v2-logged"]
    assert record["status"] == "success"
    assert record["model_name"] == "wine-quality"
    assert record["model_version"] == "1"
    assert record["inputs"]["inputs"][0]["name"] == "features"
    assert record["outputs"] == [{"predicted_quality": response.json()["outputs"][0]["data"][0]}]


# --- errors: protocol-shaped --------------------------------------------------------------


def test_unknown_datatype_is_400_naming_it(client: TestClient) -> None:
    tensor = {**matrix_input([WINE_ROW]), "datatype": "FP33"}

    response = client.post(INFER, json={"inputs": [tensor]})

    assert_protocol_error(response, 400, "FP33", "features")


def test_non_numeric_datatype_is_400(client: TestClient) -> None:
    tensor = {**matrix_input([WINE_ROW]), "datatype": "BYTES"}

    response = client.post(INFER, json={"inputs": [tensor]})

    assert_protocol_error(response, 400, "BYTES", "numbers")


def test_values_that_do_not_match_the_datatype_are_400(client: TestClient) -> None:
    tensor = matrix_input([WINE_ROW], nested=False)
    tensor["data"][3] = "1.9"

    response = client.post(INFER, json={"inputs": [tensor]})

    assert_protocol_error(response, 400, "element 3", "FP32")


def test_wrong_shape_is_400_stating_the_expected_one(client: TestClient) -> None:
    tensor = {**matrix_input([WINE_ROW]), "shape": [1, 10]}

    response = client.post(INFER, json={"inputs": [tensor]})

    assert_protocol_error(response, 400, "[1, 10]", "[rows, 11]")


def test_data_length_that_does_not_match_the_shape_is_400(client: TestClient) -> None:
    tensor = {**matrix_input([WINE_ROW]), "shape": [2, 11]}

    response = client.post(INFER, json={"inputs": [tensor]})

    assert_protocol_error(response, 400, "22 values", "data has 11")


def test_out_of_range_value_is_400_naming_row_and_feature(client: TestClient) -> None:
    rows = [WINE_ROW, {**WINE_ROW, "alcohol": 30.0}]

    response = client.post(INFER, json={"inputs": [matrix_input(rows)]})

    assert_protocol_error(
        response, 400, "row 1, feature 'alcohol'", "less than or equal to 16", "got 30.0"
    )


def test_missing_and_unknown_feature_tensors_are_400(client: TestClient) -> None:
    without_ph = [t for t in field_inputs([WINE_ROW]) if t["name"] != "ph"]
    with_color = [*field_inputs([WINE_ROW]), {**field_inputs([WINE_ROW])[0], "name": "color"}]

    missing = client.post(INFER, json={"inputs": without_ph})
    unknown = client.post(INFER, json={"inputs": with_color})

    assert_protocol_error(missing, 400, "'ph'", "missing")
    assert_protocol_error(unknown, 400, "'color'", "features")


def test_mixing_the_2d_tensor_and_feature_tensors_is_400(client: TestClient) -> None:
    inputs = [matrix_input([WINE_ROW]), field_inputs([WINE_ROW])[0]]

    response = client.post(INFER, json={"inputs": inputs})

    assert_protocol_error(response, 400, "not both")


def test_feature_tensors_of_different_lengths_are_400(client: TestClient) -> None:
    inputs = field_inputs([WINE_ROW, WINE_ROW])
    inputs[4] = field_inputs([WINE_ROW])[4]

    response = client.post(INFER, json={"inputs": inputs})

    assert_protocol_error(response, 400, "'chlorides' has 1 rows")


def test_unknown_requested_output_is_400_naming_the_outputs(client: TestClient) -> None:
    body = {"inputs": [matrix_input([WINE_ROW])], "outputs": [{"name": "colour"}]}

    response = client.post(INFER, json=body)

    assert_protocol_error(response, 400, "'colour'", "predicted_quality")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"", "empty"),
        (b"{not json", "not valid JSON"),
        (b'{"inputs": "features"}', "inputs"),
        (b'{"inputs": []}', "inputs"),
        (b'{"inputs": [{"name": "features", "datatype": "FP32", "data": [1]}]}', "shape"),
    ],
    ids=["empty", "not-json", "inputs-not-a-list", "no-inputs", "no-shape"],
)
def test_bodies_that_are_not_inference_requests_are_400(
    client: TestClient, body: bytes, fragment: str
) -> None:
    response = client.post(INFER, content=body, headers={"content-type": "application/json"})

    assert_protocol_error(response, 400, fragment)


def test_too_many_rows_is_413(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    settings = make_settings(max_batch_rows=3)
    register_trained(settings, trained_wine)
    rows = wine_rows(trained_wine, 4)
    with serve(settings) as client:
        matrix = client.post(INFER, json={"inputs": [matrix_input(rows)]})
        fields = client.post(INFER, json={"inputs": field_inputs(rows)})
        allowed = client.post(INFER, json={"inputs": [matrix_input(rows[:3])]})

    assert_protocol_error(matrix, 413, "4 rows", "at most 3")
    assert_protocol_error(fields, 413, "4 rows", "at most 3")
    assert allowed.status_code == 200


def test_unknown_model_and_version_are_404_naming_them(client: TestClient) -> None:
    body = {"inputs": [matrix_input([WINE_ROW])]}

    assert_protocol_error(client.post("/v2/models/no-such/infer", json=body), 404, "'no-such'")
    assert_protocol_error(client.get("/v2/models/no-such"), 404, "'no-such'")
    assert_protocol_error(client.get("/v2/models/no-such/ready"), 404, "'no-such'")
    for version in ("9", "latest", "0"):
        infer = client.post(f"/v2/models/wine-quality/versions/{version}/infer", json=body)
        assert_protocol_error(infer, 404, "wine-quality", "version", version)
        metadata = client.get(f"/v2/models/wine-quality/versions/{version}")
        assert_protocol_error(metadata, 404, "wine-quality")


def test_private_models_are_404_to_others_and_served_to_their_owner(
    wine_registered: Settings,
) -> None:
    owner = create_account(wine_registered, "owner@example.com")
    create_account(wine_registered, "other@example.com")
    register_model(wine_registered, linear_wine_onnx({"alcohol": 0.5}, 0.0), "secret", owner=owner)
    body = {"inputs": [matrix_input([WINE_ROW])]}
    with serve(wine_registered) as client:
        mine = bearer(client, "owner@example.com")
        others = {"anonymous": {}, "other user": bearer(client, "other@example.com")}
        for headers in others.values():
            assert_protocol_error(client.get("/v2/models/secret", headers=headers), 404)
            assert_protocol_error(client.get("/v2/models/secret/ready", headers=headers), 404)
            infer = client.post("/v2/models/secret/infer", json=body, headers=headers)
            assert_protocol_error(infer, 404, "'secret' not found")
            for path in ("/v2/models/secret/versions/9", "/v2/models/secret/versions/9/ready"):
                message = assert_protocol_error(client.get(path, headers=headers), 404)
                assert message == "model 'secret' not found"
        metadata = client.get("/v2/models/secret", headers=mine)
        missing_version = client.get("/v2/models/secret/versions/9", headers=mine)
        infer = client.post("/v2/models/secret/infer", json=body, headers=mine)

    assert metadata.status_code == 200
    assert metadata.json()["name"] == "secret"
    assert "no version 9" in missing_version.json()["error"]  # the owner is told the truth
    assert infer.status_code == 200, infer.text


def test_anonymous_inference_follows_the_setting(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    settings = make_settings(anonymous_predictions=False)
    register_trained(settings, trained_wine)
    email = f"user-{uuid.uuid4().hex[:8]}@example.com"
    create_account(settings, email)
    body = {"inputs": [matrix_input([WINE_ROW])]}
    with serve(settings) as client:
        anonymous = client.post(INFER, json=body)
        metadata = client.get("/v2/models/wine-quality")
        signed_in = client.post(INFER, json=body, headers=bearer(client, email))

    message = assert_protocol_error(anonymous, 401, "anonymous")
    assert "API key" in message
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert metadata.status_code == 200  # reading metadata needs no account
    assert signed_in.status_code == 200


def test_image_models_are_described_but_point_to_the_rest_upload(
    wine_registered: Settings,
) -> None:
    # Any loadable ONNX file will do: the V2 endpoints never run an image model.
    onnx_bytes = linear_wine_onnx({"alcohol": 0.5}, 0.0)
    register_model(wine_registered, onnx_bytes, "photos", signature=IMAGENET_SIGNATURE)
    with serve(wine_registered) as client:
        metadata = client.get("/v2/models/photos")
        infer = client.post(
            "/v2/models/photos/infer",
            json={"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": ["x"]}]},
        )

    assert metadata.status_code == 200, metadata.text
    assert metadata.json()["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1]}]
    assert metadata.json()["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probability", "datatype": "FP64", "shape": [-1]},
    ]
    assert_protocol_error(infer, 400, "'photos' takes an image", "/api/v1/models/")


def test_classifiers_answer_labels_and_one_probability_column_per_class(
    wine_registered: Settings,
) -> None:
    prepared = colour_classifier()
    register_model(
        wine_registered,
        prepared.artifact,
        "colour",
        signature=prepared.signature,
        details=prepared.details,
    )
    rows = [{"x0": 0.1, "x1": 0.9, "x2": 0.5}, {"x0": 0.8, "x1": 0.2, "x2": 0.3}]
    tensor = {
        "name": "features",
        "shape": [2, 3],
        "datatype": "FP32",
        "data": [0.1, 0.9, 0.5, 0.8, 0.2, 0.3],
    }
    with serve(wine_registered) as client:
        metadata = client.get("/v2/models/colour").json()
        rest = client.post("/api/v1/models/colour/predict", json={"inputs": rows}).json()
        as_json = client.post("/v2/models/colour/infer", json={"inputs": [tensor]})
        as_binary = client.post(
            "/v2/models/colour/infer",
            json={"inputs": [tensor], "parameters": {"binary_data_output": True}},
        )

    assert metadata["outputs"] == [
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "probabilities", "datatype": "FP64", "shape": [-1, 3]},
    ]
    expected = rest["predictions"]
    labels, probabilities = as_json.json()["outputs"]
    assert labels["data"] == [p["label"] for p in expected]
    assert probabilities["shape"] == [2, 3]
    assert probabilities["parameters"] == {"classes": ["red", "rose", "white"]}
    assert probabilities["data"] == [
        p["probabilities"][c] for p in expected for c in ("red", "rose", "white")
    ]
    length = int(as_binary.headers["inference-header-content-length"])
    header = orjson.loads(as_binary.content[:length])
    sizes = [output["parameters"]["binary_data_size"] for output in header["outputs"]]
    blob = as_binary.content[length:]
    decoded = deserialize_bytes_tensor(blob[: sizes[0]])
    assert [label.decode() for label in decoded] == labels["data"]
    assert np.frombuffer(blob[sizes[0] :], dtype="<f8").tolist() == probabilities["data"]


def test_binary_inputs_with_nan_are_400(client: TestClient) -> None:
    values = np.array([[WINE_ROW[name] for name in FEATURE_NAMES]], dtype="<f4")
    values[0, 2] = np.nan
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [1, 11],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ]
        }
    )

    response = client.post(
        INFER,
        content=header + values.tobytes(),
        headers={"Inference-Header-Content-Length": str(len(header))},
    )

    assert_protocol_error(response, 400, "element 2", "NaN")


# --- the official Triton client against a real HTTP server ---------------------------------


@pytest.fixture
def triton_server(wine_registered: Settings) -> Iterator[str]:
    with live_server(wine_registered, "/v2/health/ready") as port:
        yield f"127.0.0.1:{port}"


@pytest.fixture
def triton_client(triton_server: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(triton_server)
    yield client
    client.close()


def rest_over_http(address: str, rows: list[dict[str, float]]) -> list[float]:
    answers = []
    with httpx.Client(base_url=f"http://{address}") as http:
        for row in rows:
            response = http.post("/predict", json=row)
            assert response.status_code == 200, response.text
            answers.append(response.json()["predicted_quality"])
    return answers


def test_triton_client_sees_a_live_ready_server_and_model(
    triton_client: triton.InferenceServerClient,
) -> None:
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready("wine-quality")
    assert triton_client.is_model_ready("wine-quality", "1")
    assert not triton_client.is_model_ready("wine-quality", "2")
    assert not triton_client.is_model_ready("no-such-model")
    assert triton_client.get_server_metadata()["name"] == "modelport"
    assert triton_client.get_model_metadata("wine-quality") == METADATA
    assert triton_client.get_model_metadata("wine-quality", "1") == METADATA


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_triton_client_infer_equals_rest_predict(
    triton_server: str,
    triton_client: triton.InferenceServerClient,
    trained_wine: TrainedWine,
    binary: bool,
) -> None:
    rows = wine_rows(trained_wine, 6, start=20)
    features = triton.InferInput("features", [len(rows), len(FEATURE_NAMES)], "FP32")
    features.set_data_from_numpy(
        np.array([[row[n] for n in FEATURE_NAMES] for row in rows], dtype=np.float32),
        binary_data=binary,
    )
    wanted = triton.InferRequestedOutput("predicted_quality", binary_data=binary)

    result = triton_client.infer(
        "wine-quality", [features], outputs=[wanted], request_id="triton-1"
    )

    assert result.get_response()["id"] == "triton-1"
    assert result.get_response()["model_version"] == "1"
    predicted = result.as_numpy("predicted_quality")
    assert predicted is not None
    assert predicted.shape == (len(rows),)
    assert predicted.tolist() == rest_over_http(triton_server, rows)


def test_triton_client_infer_with_one_input_per_feature(
    triton_server: str, triton_client: triton.InferenceServerClient, trained_wine: TrainedWine
) -> None:
    rows = wine_rows(trained_wine, 3, start=40)
    inputs = []
    for name in FEATURE_NAMES:
        tensor = triton.InferInput(name, [len(rows)], "FP32")
        tensor.set_data_from_numpy(np.array([row[name] for row in rows], dtype=np.float32))
        inputs.append(tensor)

    # No outputs named: the client asks for every output as binary data.
    result = triton_client.infer("wine-quality", inputs, model_version="1")

    predicted = result.as_numpy("predicted_quality")
    assert predicted is not None
    assert predicted.tolist() == rest_over_http(triton_server, rows)


def test_triton_client_receives_protocol_errors(
    triton_client: triton.InferenceServerClient,
) -> None:
    row = np.array([[{**WINE_ROW, "alcohol": 30.0}[n] for n in FEATURE_NAMES]], dtype=np.float32)
    features = triton.InferInput("features", [1, len(FEATURE_NAMES)], "FP32")
    features.set_data_from_numpy(row)

    with pytest.raises(InferenceServerException) as invalid:
        triton_client.infer("wine-quality", [features])
    with pytest.raises(InferenceServerException) as unknown:
        triton_client.get_model_metadata("no-such-model")

    assert invalid.value.status() == "400"
    assert "alcohol" in invalid.value.message()
    assert unknown.value.status() == "404"
    assert "no-such-model" in unknown.value.message()
