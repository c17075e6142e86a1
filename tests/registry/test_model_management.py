"""Bring your own model: create, upload versions, promote and roll back, delete and restore."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.linear_model import LinearRegression

from modelport.app import create_app
from modelport.settings import Settings
from tests.helpers import (
    WINE_ROW,
    admin_headers,
    bearer,
    create_account,
    register_trained,
    wait_until_ready,
)

MODELS = "/api/v1/models"


def linear_onnx(coefficients: list[float]) -> bytes:
    """A real 3-feature LinearRegression converted with skl2onnx."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(50, 3))
    model = LinearRegression().fit(features, features @ np.array(coefficients))
    return bytes(to_onnx(model, features[:1].astype(np.float32)).SerializeToString())


def onnx_predict(model_bytes: bytes, rows: list[list[float]]) -> list[float]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    (out,) = session.run(None, {name: np.array(rows, dtype=np.float32)})
    return [float(v) for v in np.asarray(out).ravel()]


@pytest.fixture
def app_client(wine_registered: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(wine_registered)) as client:
        wait_until_ready(client)
        yield client


@pytest.fixture
def alice(app_client: TestClient, wine_registered: Settings) -> dict[str, str]:
    create_account(wine_registered, "alice@example.com")
    return bearer(app_client, "alice@example.com")


@pytest.fixture
def bob(app_client: TestClient, wine_registered: Settings) -> dict[str, str]:
    create_account(wine_registered, "bob@example.com")
    return bearer(app_client, "bob@example.com")


def create(client: TestClient, headers: dict[str, str], name: str = "linear", **extra: Any) -> Any:
    body = {"name": name, "task": "regression", "description": "a line", **extra}
    return client.post(MODELS, json=body, headers=headers)


def upload(
    client: TestClient,
    headers: dict[str, str],
    data: bytes,
    name: str = "linear",
    **form: str,
) -> Any:
    return client.post(
        f"{MODELS}/{name}/versions",
        files={"file": ("model.bin", data, "application/octet-stream")},
        data=form,
        headers=headers,
    )


def predict(
    client: TestClient, headers: dict[str, str], path: str = "linear", **params: str
) -> Any:
    return client.post(
        f"{MODELS}/{path}/predict",
        json={"x0": 1.0, "x1": 2.0, "x2": 3.0},
        headers=headers,
        params=params,
    )


def test_upload_serves_the_model_with_an_inferred_signature(
    app_client: TestClient, alice: dict[str, str]
) -> None:
    model = linear_onnx([1.0, 2.0, 3.0])
    assert create(app_client, alice).status_code == 201

    response = upload(app_client, alice, model, description="first try", metrics='{"mae": 0.1}')

    assert response.status_code == 201, response.text
    version = response.json()
    assert (version["version"], version["flavor"], version["size_bytes"]) == (1, "onnx", len(model))
    assert [f["name"] for f in version["signature"]["inputs"]] == ["x0", "x1", "x2"]
    assert version["metrics"] == {"mae": 0.1}
    assert version["description"] == "first try"
    answer = predict(app_client, alice)
    assert answer.status_code == 200, answer.text
    (value,) = answer.json()["predictions"][0].values()
    assert value == pytest.approx(onnx_predict(model, [[1.0, 2.0, 3.0]])[0], abs=1e-5)
    detail = app_client.get(f"{MODELS}/linear", headers=alice).json()
    assert detail["aliases"] == {"production": 1}
    assert detail["public"] is False


def test_promote_and_roll_back_with_an_alias(app_client: TestClient, alice: dict[str, str]) -> None:
    create(app_client, alice)
    first, second = linear_onnx([1.0, 0.0, 0.0]), linear_onnx([0.0, 0.0, 10.0])
    upload(app_client, alice, first)
    assert upload(app_client, alice, second).json()["version"] == 2
    expected_first = onnx_predict(first, [[1.0, 2.0, 3.0]])[0]
    expected_second = onnx_predict(second, [[1.0, 2.0, 3.0]])[0]

    def production_value() -> float:
        (value,) = predict(app_client, alice).json()["predictions"][0].values()
        return float(value)

    assert production_value() == pytest.approx(expected_first, abs=1e-5)  # v2 not promoted yet
    promoted = app_client.put(
        f"{MODELS}/linear/aliases/production", json={"version": 2}, headers=alice
    )
    assert promoted.json() == {"model": "linear", "alias": "production", "version": 2}
    assert production_value() == pytest.approx(expected_second, abs=1e-5)

    app_client.put(f"{MODELS}/linear/aliases/production", json={"version": 1}, headers=alice)
    assert production_value() == pytest.approx(expected_first, abs=1e-5)

    app_client.put(f"{MODELS}/linear/aliases/staging", json={"version": 2}, headers=alice)
    staged = predict(app_client, alice, alias="staging").json()
    assert staged["model_version"] == "2"
    assert app_client.delete(f"{MODELS}/linear/aliases/staging", headers=alice).status_code == 204
    assert predict(app_client, alice, alias="staging").status_code == 404


def test_deleted_version_is_never_served_and_an_admin_restores_it(
    app_client: TestClient, alice: dict[str, str]
) -> None:
    create(app_client, alice)
    upload(app_client, alice, linear_onnx([1.0, 1.0, 1.0]))

    assert app_client.delete(f"{MODELS}/linear/versions/1", headers=alice).status_code == 204

    refused = predict(app_client, alice)
    assert refused.status_code == 404
    assert "deleted version 1" in refused.json()["detail"]
    assert predict(app_client, alice, "linear/versions/1").status_code == 404
    assert app_client.get(f"{MODELS}/linear", headers=alice).json()["latest_version"] is None
    not_admin = app_client.post(f"{MODELS}/linear/versions/1/restore", headers=alice)
    assert not_admin.status_code == 403

    admin = admin_headers(app_client)
    restored = app_client.post(f"{MODELS}/linear/versions/1/restore", headers=admin)
    assert restored.status_code == 200
    assert restored.json()["status"] == "ready"
    assert predict(app_client, alice).status_code == 200


def test_deleted_model_disappears_until_restored(
    app_client: TestClient, alice: dict[str, str]
) -> None:
    create(app_client, alice)
    upload(app_client, alice, linear_onnx([1.0, 1.0, 1.0]))

    assert app_client.delete(f"{MODELS}/linear", headers=alice).status_code == 204

    assert app_client.get(f"{MODELS}/linear", headers=alice).status_code == 404
    assert predict(app_client, alice).status_code == 404
    names = [m["name"] for m in app_client.get(MODELS, headers=alice).json()["items"]]
    assert "linear" not in names
    again = create(app_client, alice)
    assert again.status_code == 409
    assert "restore" in again.json()["detail"]
    admin = admin_headers(app_client)
    listed = app_client.get(MODELS, params={"include_deleted": True}, headers=admin).json()
    assert "linear" in [m["name"] for m in listed["items"]]
    assert app_client.post(f"{MODELS}/linear/restore", headers=admin).status_code == 200
    assert predict(app_client, alice).status_code == 200


def test_creating_models_needs_an_account_and_a_valid_unique_name(
    app_client: TestClient, alice: dict[str, str]
) -> None:
    assert create(app_client, {}).status_code == 401
    assert create(app_client, alice, name="Bad Name!").status_code == 422
    assert create(app_client, alice, task="clustering").status_code == 422
    assert create(app_client, alice).status_code == 201
    assert create(app_client, alice).status_code == 409
    assert create(app_client, alice, name="wine-quality").status_code == 409


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "empty"),
        (b"this is not a model at all", "not a model format"),
        (linear_onnx([1.0, 1.0, 1.0])[:40], "ONNX"),
    ],
)
def test_unusable_files_get_a_clear_400(
    app_client: TestClient, alice: dict[str, str], payload: bytes, message: str
) -> None:
    create(app_client, alice)

    response = upload(app_client, alice, payload)

    assert response.status_code == 400, response.text
    assert message in response.json()["detail"]


def _with_external_data() -> bytes:
    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 1], [1.0, 2.0, 3.0])
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    tensor = model.graph.initializer[0]
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    return bytes(model.SerializeToString())


def _with_custom_op() -> bytes:
    node = helper.make_node("Evil", ["x"], ["y"], domain="com.attacker")
    graph = helper.make_graph(
        [node],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.attacker", 1)]
    return bytes(helper.make_model(graph, opset_imports=opsets).SerializeToString())


@pytest.mark.parametrize(
    ("payload", "message"),
    [(_with_external_data(), "external file"), (_with_custom_op(), "custom operator")],
)
def test_unsafe_onnx_models_are_refused(
    app_client: TestClient, alice: dict[str, str], payload: bytes, message: str
) -> None:
    create(app_client, alice)

    response = upload(app_client, alice, payload, flavor="onnx")

    assert response.status_code == 400
    assert message in response.json()["detail"]


def test_signature_that_does_not_match_the_model_is_422(
    app_client: TestClient, alice: dict[str, str]
) -> None:
    create(app_client, alice)
    two_inputs = (
        '{"task": "regression", "inputs": [{"name": "a"}, {"name": "b"}],'
        ' "outputs": [{"name": "y"}]}'
    )

    response = upload(app_client, alice, linear_onnx([1.0, 1.0, 1.0]), signature=two_inputs)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "signature", "inputs"]
    assert upload(app_client, alice, linear_onnx([1.0] * 3), signature="{").status_code == 422


def test_given_signature_names_and_bounds_the_inputs(
    app_client: TestClient, alice: dict[str, str]
) -> None:
    create(app_client, alice)
    signature = (
        '{"task": "regression", "outputs": [{"name": "y"}], "inputs": ['
        '{"name": "a", "minimum": 0, "maximum": 1}, {"name": "b"}, {"name": "c"}]}'
    )
    assert upload(app_client, alice, linear_onnx([1.0] * 3), signature=signature).status_code == 201

    ok = app_client.post(f"{MODELS}/linear/predict", json={"a": 0.5, "b": 1, "c": 2}, headers=alice)
    too_big = app_client.post(
        f"{MODELS}/linear/predict", json={"a": 5, "b": 1, "c": 2}, headers=alice
    )

    assert ok.status_code == 200
    assert list(ok.json()["predictions"][0]) == ["y"]
    assert too_big.status_code == 422
    assert too_big.json()["detail"][0]["loc"] == ["body", "a"]


def test_model_files_over_the_limit_are_413(make_settings: Any, wine_registered: Settings) -> None:
    settings = make_settings(max_model_upload_bytes=2048)
    create_account(settings, "carol@example.com")
    with TestClient(create_app(settings)) as client:
        headers = bearer(client, "carol@example.com")
        create(client, headers)

        response = upload(client, headers, b"\0" * 10_000)

    assert response.status_code == 413


def test_other_users_cannot_touch_a_private_model(
    app_client: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    create(app_client, alice)
    upload(app_client, alice, linear_onnx([1.0, 1.0, 1.0]))
    missing = app_client.get(f"{MODELS}/no-such-model", headers=bob).json()

    for response in (
        app_client.get(f"{MODELS}/linear", headers=bob),
        upload(app_client, bob, linear_onnx([2.0, 2.0, 2.0])),
        app_client.put(f"{MODELS}/linear/aliases/production", json={"version": 1}, headers=bob),
        app_client.patch(f"{MODELS}/linear", json={"public": True}, headers=bob),
        app_client.delete(f"{MODELS}/linear/versions/1", headers=bob),
        app_client.delete(f"{MODELS}/linear", headers=bob),
        predict(app_client, bob),
    ):
        assert response.status_code == 404
        assert response.json()["detail"] == missing["detail"].replace("no-such-model", "linear")

    builtin = app_client.patch(f"{MODELS}/wine-quality", json={"public": False}, headers=bob)
    assert builtin.status_code == 403


def test_making_a_model_public_lets_others_predict(
    app_client: TestClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    create(app_client, alice)
    upload(app_client, alice, linear_onnx([1.0, 1.0, 1.0]))
    assert predict(app_client, bob).status_code == 404

    changed = app_client.patch(f"{MODELS}/linear", json={"public": True}, headers=alice)

    assert changed.json()["public"] is True
    assert predict(app_client, bob).status_code == 200
    assert predict(app_client, {}).status_code == 200  # anonymous callers too


def test_listing_filters_sorts_and_pages(app_client: TestClient, alice: dict[str, str]) -> None:
    for name in ("alpha", "beta", "gamma"):
        assert create(app_client, alice, name=name).status_code == 201

    def names(**params: Any) -> list[str]:
        page = app_client.get(MODELS, params=params, headers=alice).json()
        return [m["name"] for m in page["items"]]

    assert names(mine=True) == ["alpha", "beta", "gamma"]
    assert names(mine=True, sort="-name") == ["gamma", "beta", "alpha"]
    assert names(q="amm") == ["gamma"]
    assert names(q="%") == []  # LIKE wildcards are literal
    assert names(mine=True, offset=1, limit=1) == ["beta"]
    assert app_client.get(MODELS, params={"mine": True}, headers=alice).json()["total"] == 3
    assert "wine-quality" in names()  # public models are listed for everyone
    assert app_client.get(MODELS, params={"sort": "size"}, headers=alice).status_code == 422


def test_an_alias_move_reaches_another_replica_within_the_cache_lifetime(
    make_settings: Any, wine_registered: Settings, trained_wine: Any
) -> None:
    """Two replicas share the database; promoting on one is served by the other within
    MODELPORT_REGISTRY_CACHE_SECONDS, with no restart."""
    register_trained(wine_registered, trained_wine)  # v2; production stays on the newest: v2
    other_var = wine_registered.var_dir.parent / "replica-b"
    replica_b = make_settings(
        var_dir=other_var,
        registry_cache_seconds=0.5,
        jwt_secret="r" * 40,
        artifact_store=wine_registered.artifact_store,
    )
    replica_a = make_settings(jwt_secret="r" * 40, registry_cache_seconds=0.5)
    create_account(replica_a, "admin-r@example.com", role="admin")
    with TestClient(create_app(replica_a)) as a, TestClient(create_app(replica_b)) as b:
        wait_until_ready(a)
        wait_until_ready(b)
        assert b.post("/predict", json=WINE_ROW).json()["model_version"] == "2"
        admin = bearer(a, "admin-r@example.com")

        moved = a.put(
            f"{MODELS}/wine-quality/aliases/production", json={"version": 1}, headers=admin
        )
        assert moved.status_code == 200

        deadline = time.monotonic() + 10
        served = "2"
        while time.monotonic() < deadline and served != "1":
            served = b.post("/predict", json=WINE_ROW).json()["model_version"]
            time.sleep(0.1)
    assert served == "1"


def test_concurrent_uploads_to_one_model_get_consecutive_versions(
    app_client: TestClient, alice: dict[str, str]
) -> None:
    assert create(app_client, alice).status_code == 201
    files = [linear_onnx([1.0, 2.0, float(i)]) for i in range(6)]

    with ThreadPoolExecutor(max_workers=len(files)) as pool:
        answers = list(pool.map(lambda data: upload(app_client, alice, data), files))

    assert [a.status_code for a in answers] == [201] * len(files), [a.text for a in answers]
    numbers = sorted(a.json()["version"] for a in answers)
    assert numbers == list(range(1, len(files) + 1))
    listed = app_client.get(f"{MODELS}/linear", headers=alice).json()
    assert sorted(v["version"] for v in listed["versions"]) == numbers
