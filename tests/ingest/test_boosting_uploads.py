"""XGBoost (JSON and UBJ) and LightGBM (text) uploads: converted with onnxmltools and checked,
or served natively; damaged files are refused without harming the server process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import xgboost as xgb

from modelport.errors import BadRequestError, InvalidInputError
from modelport.ingest.preparation import prepare_upload
from modelport.runtimes.loader import load_runtime
from modelport.runtimes.signature import FieldSpec, Signature
from tests.ingest.support import (
    FEATURES,
    assert_classifies_like,
    assert_regresses_like,
    classification_data,
    frame,
    input_names,
    output_names,
    probe_rows,
    regression_data,
)


def xgboost_file(model: Any, tmp_path: Path, suffix: str) -> bytes:
    """What a data scientist uploads: ``model.save_model("model.json" / "model.ubj")``."""
    path = tmp_path / f"model.{suffix}"
    model.save_model(path)
    return path.read_bytes()


def lightgbm_file(model: Any) -> bytes:
    """``booster.save_model("model.txt")``, the LightGBM text format."""
    return str(model.booster_.model_to_string()).encode()


# --- XGBoost -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["json", "ubj"])
def test_xgboost_regressor_is_converted_and_predicts_like_xgboost(
    suffix: str, tmp_path: Path
) -> None:
    features, values = regression_data(scale=100.0)
    model = xgb.XGBRegressor(n_estimators=20, max_depth=3).fit(frame(features), values)

    prepared = prepare_upload(xgboost_file(model, tmp_path, suffix), task="regression")

    assert (prepared.flavor, prepared.source_flavor) == ("onnx", "xgboost")
    assert prepared.details["source_format"] == f"xgboost-{suffix}"
    assert prepared.details["converted"] is True
    assert "onnxmltools" in prepared.details["conversion"]["converter"]
    assert input_names(prepared) == FEATURES
    assert output_names(prepared) == ["prediction"]
    rows = probe_rows(5)
    assert_regresses_like(prepared, rows, model.predict(frame(rows)))


@pytest.mark.parametrize("suffix", ["json", "ubj"])
@pytest.mark.parametrize("n_classes", [2, 3])
def test_xgboost_classifier_gives_labels_and_probabilities(
    suffix: str, n_classes: int, tmp_path: Path
) -> None:
    features, labels = classification_data(n_classes)
    model = xgb.XGBClassifier(n_estimators=15, max_depth=3).fit(features, labels)

    prepared = prepare_upload(xgboost_file(model, tmp_path, suffix), declared_flavor="xgboost")

    assert prepared.flavor == "onnx"
    assert prepared.signature.task == "classification"
    assert prepared.details["classes"] == list(range(n_classes))
    assert input_names(prepared) == [f"x{i}" for i in range(5)]
    rows = probe_rows(5)
    assert_classifies_like(prepared, rows, model.predict(rows), model.predict_proba(rows))


def test_xgboost_the_converter_cannot_handle_is_served_by_xgboost(tmp_path: Path) -> None:
    features, labels = classification_data(2)
    model = xgb.XGBClassifier(n_estimators=10, booster="dart").fit(frame(features), labels)
    data = xgboost_file(model, tmp_path, "ubj")

    prepared = prepare_upload(data)

    assert (prepared.flavor, prepared.artifact, prepared.artifact_suffix) == (
        "xgboost",
        data,
        ".ubj",
    )
    assert prepared.details["converted"] is False
    assert "onnxmltools" in prepared.details["native_fallback"]
    rows = probe_rows(5)
    named = frame(rows)
    assert_classifies_like(prepared, rows, model.predict(named), model.predict_proba(named))


def test_an_xgboost_conversion_that_answers_differently_is_not_used(tmp_path: Path) -> None:
    """onnxmltools drops reg:logistic's sigmoid: the check catches it, XGBoost serves."""
    features, labels = classification_data(2)
    model = xgb.XGBRegressor(n_estimators=10, objective="reg:logistic").fit(features, labels)

    prepared = prepare_upload(xgboost_file(model, tmp_path, "json"))

    assert prepared.flavor == "xgboost"
    assert "values differ" in prepared.details["native_fallback"]
    rows = probe_rows(5)
    assert_regresses_like(prepared, rows, model.predict(rows))


def test_a_linear_xgboost_booster_is_served(tmp_path: Path) -> None:
    features, values = regression_data()
    model = xgb.XGBRegressor(n_estimators=10, booster="gblinear").fit(features, values)

    prepared = prepare_upload(xgboost_file(model, tmp_path, "json"))

    rows = probe_rows(5)
    assert_regresses_like(prepared, rows, model.predict(rows))


@pytest.mark.parametrize("suffix", ["json", "ubj"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.95, 0.999])
def test_a_truncated_xgboost_file_is_400(suffix: str, keep: float, tmp_path: Path) -> None:
    features, values = regression_data()
    data = xgboost_file(xgb.XGBRegressor(n_estimators=5).fit(features, values), tmp_path, suffix)

    with pytest.raises(BadRequestError, match="XGBoost") as refused:
        prepare_upload(data[: int(len(data) * keep)])

    assert "truncated" in refused.value.message


def test_xgboost_signature_names_are_checked(tmp_path: Path) -> None:
    features, values = regression_data()
    model = xgb.XGBRegressor(n_estimators=5).fit(frame(features), values)
    data = xgboost_file(model, tmp_path, "json")
    wrong = Signature(
        task="regression",
        inputs=tuple(FieldSpec(name=f"x{i}") for i in range(5)),
        outputs=(FieldSpec(name="y"),),
    )

    with pytest.raises(InvalidInputError, match="'alcohol'"):
        prepare_upload(data, signature=wrong)


# --- LightGBM ----------------------------------------------------------------------------------


def test_lightgbm_regressor_is_converted_and_predicts_like_lightgbm() -> None:
    features, values = regression_data(scale=100.0)
    model = lgb.LGBMRegressor(n_estimators=20, verbose=-1).fit(frame(features), values)

    prepared = prepare_upload(lightgbm_file(model), declared_flavor="lightgbm")

    assert (prepared.flavor, prepared.source_flavor) == ("onnx", "lightgbm")
    assert prepared.details["converted"] is True
    assert input_names(prepared) == FEATURES
    rows = probe_rows(5)
    assert_regresses_like(prepared, rows, model.predict(frame(rows)))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_lightgbm_classifier_gives_labels_and_probabilities(n_classes: int) -> None:
    features, labels = classification_data(n_classes)
    model = lgb.LGBMClassifier(n_estimators=15, verbose=-1).fit(features, labels)

    prepared = prepare_upload(lightgbm_file(model), task="classification")

    assert prepared.flavor == "onnx"
    assert prepared.details["classes"] == list(range(n_classes))
    # Without names LightGBM calls its features Column_0...; the signature says x0...
    assert input_names(prepared) == [f"x{i}" for i in range(5)]
    rows = probe_rows(5)
    assert_classifies_like(prepared, rows, model.predict(rows), model.predict_proba(rows))


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"linear_tree": True}, "values differ"),
        ({"objective": "cross_entropy"}, "cross_entropy"),
    ],
)
def test_lightgbm_that_does_not_convert_faithfully_is_served_by_lightgbm(
    params: dict[str, Any], reason: str
) -> None:
    features, values = regression_data()
    if params.get("objective") == "cross_entropy":
        values = (values > 0).astype(float)
    model = lgb.LGBMRegressor(n_estimators=10, verbose=-1, **params).fit(features, values)
    data = lightgbm_file(model)

    prepared = prepare_upload(data)

    assert (prepared.flavor, prepared.artifact, prepared.artifact_suffix) == (
        "lightgbm",
        data,
        ".txt",
    )
    assert reason in prepared.details["native_fallback"]
    rows = probe_rows(5)
    assert_regresses_like(prepared, rows, model.predict(rows))


def test_the_native_lightgbm_runtime_classifies_like_lightgbm() -> None:
    features, labels = classification_data(3)
    model = lgb.LGBMClassifier(n_estimators=10, verbose=-1).fit(frame(features), labels)
    runtime = load_runtime("lightgbm", lightgbm_file(model))
    rows = probe_rows(5)

    outputs = runtime.predict_outputs(rows)

    assert outputs["label"].tolist() == model.predict(frame(rows)).tolist()
    np.testing.assert_allclose(outputs["probabilities"], model.predict_proba(frame(rows)))


@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9, 0.995])
def test_a_truncated_lightgbm_file_is_400_and_the_process_survives(keep: float) -> None:
    """LightGBM aborts or crashes the process on some of these; the child takes the hit."""
    features, values = regression_data()
    data = lightgbm_file(lgb.LGBMRegressor(n_estimators=5, verbose=-1).fit(features, values))

    with pytest.raises(BadRequestError, match="LightGBM"):
        prepare_upload(data[: int(len(data) * keep)])


def test_a_file_that_is_not_the_declared_booster_is_400(tmp_path: Path) -> None:
    features, values = regression_data()
    xgboost_data = xgboost_file(
        xgb.XGBRegressor(n_estimators=3).fit(features, values), tmp_path, "json"
    )
    lightgbm_data = lightgbm_file(
        lgb.LGBMRegressor(n_estimators=3, verbose=-1).fit(features, values)
    )

    with pytest.raises(BadRequestError, match="declared as LightGBM"):
        prepare_upload(xgboost_data, declared_flavor="lightgbm")
    with pytest.raises(BadRequestError, match="declared as XGBoost"):
        prepare_upload(lightgbm_data, declared_flavor="xgboost")
