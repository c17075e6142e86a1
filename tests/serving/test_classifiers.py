"""Uploaded classifiers and regressors served through the API: a classifier's row is its label
and the probability of each class; the wine regressor's stays {"predicted_quality": value}."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import skops.io as sio
from fastapi.testclient import TestClient
from sklearn.datasets import load_iris
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from modelport.app import create_app
from modelport.builtin.wine import WINE_SIGNATURE
from modelport.db.engine import create_engine, create_session_factory
from modelport.errors import ModelUnavailableError
from modelport.ingest.preparation import PreparedModel, prepare_upload
from modelport.registry import service as registry
from modelport.runtimes.signature import FieldSpec, Signature
from modelport.serving.service import postprocess
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from tests.helpers import WINE_ROW, run, wait_until_ready

IRIS_FIELDS = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
CLASSIFIER = Signature(
    task="classification",
    inputs=(FieldSpec(name="a"), FieldSpec(name="b")),
    outputs=(FieldSpec(name="label", type="str"), FieldSpec(name="probabilities")),
)


# --- postprocess -------------------------------------------------------------------------------


def test_a_regressor_row_is_named_and_clipped_as_before() -> None:
    rows = postprocess(WINE_SIGNATURE, {"variable": np.array([[5.25], [12.0]])}, 2)

    assert rows == [{"predicted_quality": 5.25}, {"predicted_quality": 10.0}]
    assert postprocess(WINE_SIGNATURE, np.array([[6.5]], dtype=np.float32), 1) == [
        {"predicted_quality": 6.5}
    ]


def test_a_classifier_row_is_its_label_and_class_probabilities() -> None:
    outputs = {
        "label": np.array(["dog", "cat"], dtype=object),
        "probabilities": np.array([[0.2, 0.8], [0.9, 0.1]], dtype=np.float32),
    }

    rows = postprocess(CLASSIFIER, outputs, 2, {"classes": ["cat", "dog"]})

    assert rows[0]["label"] == "dog"
    assert rows[0]["probabilities"] == pytest.approx({"cat": 0.2, "dog": 0.8})
    assert rows[1]["label"] == "cat"


def test_without_a_label_output_the_most_likely_class_is_the_label() -> None:
    outputs = {"scores": np.array([[0.1, 0.7, 0.2]])}

    (row,) = postprocess(CLASSIFIER, outputs, 1, {"classes": [3, 5, 7]})

    assert row == {"label": 5, "probabilities": pytest.approx({"3": 0.1, "5": 0.7, "7": 0.2})}
    (unnamed,) = postprocess(CLASSIFIER, outputs, 1, {})
    assert unnamed["label"] == 1
    assert list(unnamed["probabilities"]) == ["0", "1", "2"]


def test_a_classifier_that_answers_nan_is_503() -> None:
    outputs = {"label": np.array([0]), "probabilities": np.array([[math.nan, 0.5]])}

    with pytest.raises(ModelUnavailableError, match="NaN"):
        postprocess(CLASSIFIER, outputs, 1, {"classes": [0, 1]})


# --- through the API ---------------------------------------------------------------------------


def _register(settings: Settings, name: str, prepared: PreparedModel) -> None:
    async def register() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                await registry.register_version(
                    session,
                    open_artifact_store(settings),
                    model_name=name,
                    task=prepared.signature.task,
                    artifact=prepared.artifact,
                    artifact_suffix=prepared.artifact_suffix,
                    flavor=prepared.flavor,
                    signature=prepared.signature,
                    metrics={},
                    details={"source_flavor": prepared.source_flavor, **prepared.details},
                )
                await session.commit()
        finally:
            await engine.dispose()

    run(register())


@pytest.fixture(scope="module")
def iris() -> Any:
    return load_iris(as_frame=True)


@pytest.fixture(scope="module")
def iris_models(iris: Any) -> dict[str, tuple[Any, PreparedModel]]:
    """One classifier converted to ONNX and one served natively by scikit-learn."""
    converted = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    native = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(iris.data, iris.target)
    return {
        "iris-onnx": (converted, prepare_upload(sio.dumps(converted))),
        "iris-native": (native, prepare_upload(sio.dumps(native))),
    }


@pytest.fixture
def app(
    wine_registered: Settings, iris_models: dict[str, tuple[Any, PreparedModel]]
) -> Iterator[TestClient]:
    for name, (_, prepared) in iris_models.items():
        _register(wine_registered, name, prepared)
    with TestClient(create_app(wine_registered)) as client:
        wait_until_ready(client)
        yield client


@pytest.mark.parametrize(("name", "flavor"), [("iris-onnx", "onnx"), ("iris-native", "sklearn")])
def test_an_uploaded_classifier_answers_with_label_and_probabilities(
    app: TestClient,
    iris: Any,
    iris_models: dict[str, tuple[Any, PreparedModel]],
    name: str,
    flavor: str,
) -> None:
    model, prepared = iris_models[name]
    assert prepared.flavor == flavor
    sample = iris.data.iloc[[0, 60, 120, 149]]
    rows = [dict(zip(IRIS_FIELDS, values, strict=True)) for values in sample.to_numpy().tolist()]

    single = app.post(f"/api/v1/models/{name}/predict", json=rows[0])
    batch = app.post(f"/api/v1/models/{name}/predict", json={"inputs": rows})

    assert single.status_code == 200, single.text
    assert batch.status_code == 200, batch.text
    predictions = batch.json()["predictions"]
    assert predictions[0] == single.json()["predictions"][0]
    expected = model.predict_proba(sample)
    for got, label, probabilities in zip(predictions, model.predict(sample), expected, strict=True):
        assert set(got) == {"label", "probabilities"}
        assert got["label"] == int(label)
        assert list(got["probabilities"]) == ["0", "1", "2"]
        assert list(got["probabilities"].values()) == pytest.approx(probabilities, abs=1e-4)


def test_the_wine_regressor_still_answers_predicted_quality_only(app: TestClient) -> None:
    response = app.post("/api/v1/models/wine-quality/predict", json=WINE_ROW)

    assert response.status_code == 200, response.text
    (row,) = response.json()["predictions"]
    assert list(row) == ["predicted_quality"]
    assert 0 <= row["predicted_quality"] <= 10
