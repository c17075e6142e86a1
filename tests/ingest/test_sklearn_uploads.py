"""scikit-learn uploads: skops for everyone, pickle/joblib only when allowed; converted to ONNX
and checked, or served natively when conversion is impossible."""

from __future__ import annotations

import io
import pickle
import sys
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
import skops.io as sio
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.svm import SVC

from modelport.errors import (
    BadRequestError,
    ForbiddenError,
    InvalidInputError,
    ModelUnavailableError,
)
from modelport.ingest.preparation import prepare_upload
from modelport.runtimes.loader import load_runtime
from modelport.runtimes.native import json_class
from modelport.runtimes.signature import FieldSpec, Signature
from tests.ingest.hostile_skops import RE_EXPORTS, RUNS_ON_IMPORT, skops_naming
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


def test_linear_regression_in_skops_is_converted_and_predicts_like_sklearn() -> None:
    features, values = regression_data(scale=1000.0)  # large values: the tolerance is relative
    model = LinearRegression().fit(features, values)

    prepared = prepare_upload(sio.dumps(model))

    assert (prepared.flavor, prepared.source_flavor) == ("onnx", "sklearn")
    assert prepared.artifact_suffix == ".onnx"
    assert prepared.details["converted"] is True
    assert prepared.details["source_format"] == "skops"
    assert "native_fallback" not in prepared.details
    assert prepared.signature.task == "regression"
    assert input_names(prepared) == ["x0", "x1", "x2", "x3", "x4"]
    assert output_names(prepared) == ["prediction"]
    rows = probe_rows(5)
    assert_regresses_like(prepared, rows, model.predict(rows))


def test_logistic_regression_fitted_on_a_dataframe_names_its_inputs() -> None:
    iris = load_iris(as_frame=True)
    model = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)

    prepared = prepare_upload(sio.dumps(model), declared_flavor="sklearn", task="classification")

    assert prepared.flavor == "onnx"
    assert prepared.signature.task == "classification"
    # "sepal length (cm)" is not a field name; it becomes one, and the original is recorded.
    assert input_names(prepared) == [
        "sepal_length_cm",
        "sepal_width_cm",
        "petal_length_cm",
        "petal_width_cm",
    ]
    assert prepared.details["feature_names"] == list(iris.data.columns)
    assert prepared.details["classes"] == [0, 1, 2]
    assert output_names(prepared) == ["label", "probabilities"]
    assert prepared.signature.outputs[0].type == "int"
    sample = iris.data.iloc[::7]
    assert_classifies_like(
        prepared, sample.to_numpy(), model.predict(sample), model.predict_proba(sample)
    )


def test_random_forest_with_text_labels_keeps_its_labels() -> None:
    features, labels = classification_data()
    names = np.array(["cat", "dog", "emu"])[labels]
    model = RandomForestClassifier(n_estimators=20, random_state=0).fit(frame(features), names)

    prepared = prepare_upload(sio.dumps(model))

    assert prepared.flavor == "onnx"
    assert input_names(prepared) == FEATURES
    assert prepared.details["classes"] == ["cat", "dog", "emu"]
    assert prepared.signature.outputs[0].type == "str"
    rows = probe_rows(5)
    named = frame(rows)
    assert_classifies_like(prepared, rows, model.predict(named), model.predict_proba(named))


def test_a_pipeline_choosing_columns_by_name_is_served_natively_with_its_names() -> None:
    features, values = regression_data()
    model = make_pipeline(
        ColumnTransformer(
            [("scaled", StandardScaler(), ["alcohol", "sugar"])], remainder="passthrough"
        ),
        LinearRegression(),
    ).fit(frame(features), values)

    prepared = prepare_upload(sio.dumps(model))

    assert prepared.flavor == "sklearn"  # skl2onnx wants one ONNX input per named column
    assert "alcohol" in prepared.details["native_fallback"]
    assert input_names(prepared) == FEATURES
    rows = probe_rows(5)
    assert_regresses_like(prepared, rows, model.predict(frame(rows)))


def test_a_model_skl2onnx_cannot_convert_is_served_natively() -> None:
    features, labels = classification_data()
    model = HistGradientBoostingClassifier(max_iter=20, random_state=0).fit(features, labels)
    data = sio.dumps(model)

    prepared = prepare_upload(data)

    assert (prepared.flavor, prepared.source_flavor) == ("sklearn", "sklearn")
    assert prepared.artifact == data
    assert prepared.artifact_suffix == ".skops"
    assert prepared.details["converted"] is False
    assert "skl2onnx" in prepared.details["native_fallback"]
    assert prepared.details["classes"] == [0, 1, 2]
    rows = probe_rows(5)
    assert_classifies_like(prepared, rows, model.predict(rows), model.predict_proba(rows))


def test_a_pipeline_is_converted_whole() -> None:
    features, labels = classification_data(n_classes=2)
    model = make_pipeline(StandardScaler(), LogisticRegression()).fit(features, labels)

    prepared = prepare_upload(sio.dumps(model))

    assert prepared.flavor == "onnx"
    assert prepared.details["classes"] == [0, 1]
    rows = probe_rows(5)
    assert_classifies_like(prepared, rows, model.predict(rows), model.predict_proba(rows))


class Doubler(BaseEstimator, TransformerMixin):
    """A transformer from outside scikit-learn: skops would have to import this module."""

    def fit(self, features: Any, labels: Any = None) -> Doubler:
        return self

    def transform(self, features: Any) -> Any:
        return features * 2


@pytest.mark.parametrize(
    ("step", "named"),
    [(Doubler(), "Doubler"), (FunctionTransformer(np.mean), "numpy.mean")],
    ids=["foreign-class", "numpy-function"],
)
def test_skops_files_needing_untrusted_code_are_refused(step: Any, named: str) -> None:
    model = make_pipeline(step, LogisticRegression())  # refused before anything is fitted

    with pytest.raises(BadRequestError, match="does not trust") as refused:
        prepare_upload(sio.dumps(model))

    assert named in refused.value.message


def test_a_skops_file_naming_a_module_that_runs_on_import_is_refused_unimported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Trust is decided from the names before any import: importing numpy.f2py.__main__ would
    run f2py inside the server."""
    monkeypatch.setattr(sys, "argv", ["f2py"])  # were it ever run again: usage, nothing else
    monkeypatch.delitem(sys.modules, "numpy.f2py.__main__", raising=False)

    with pytest.raises(BadRequestError, match="does not trust") as refused:
        prepare_upload(skops_naming(*RUNS_ON_IMPORT))

    assert refused.value.status_code == 400
    assert "numpy.f2py.__main__.main" in refused.value.message
    assert "numpy.f2py.__main__" not in sys.modules


def test_names_that_trusted_libraries_only_re_export_are_refused(
    subtests: pytest.Subtests,
) -> None:
    """``sklearn.datasets._base.Path`` starts like scikit-learn but is pathlib's Path: a type
    is trusted by the module that defines it, never by one that imports it."""
    for (module, name), really in RE_EXPORTS.items():
        with subtests.test(name=f"{module}.{name}", really=really):
            with pytest.raises(BadRequestError, match="does not trust") as refused:
                prepare_upload(skops_naming(module, name))
            assert f"{module}.{name}" in refused.value.message


def test_the_serving_runtime_trusts_stored_skops_files_no_more_than_uploads(
    monkeypatch: pytest.MonkeyPatch, subtests: pytest.Subtests
) -> None:
    monkeypatch.setattr(sys, "argv", ["f2py"])
    monkeypatch.delitem(sys.modules, "numpy.f2py.__main__", raising=False)
    for module, name in [RUNS_ON_IMPORT, *RE_EXPORTS]:
        with (
            subtests.test(name=f"{module}.{name}"),
            pytest.raises(ModelUnavailableError) as refused,
        ):
            load_runtime("sklearn", skops_naming(module, name))
        assert "does not trust" in (refused.value.internal or "")  # in the log, not the answer
    assert "numpy.f2py.__main__" not in sys.modules


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_scikit_learn_models_made_of_internal_parts_are_trusted() -> None:
    """Trees, histogram-boosting predictors and binners, losses, neighbour trees, distance
    metrics and optimizers are not listed as estimators, but fitted models are made of them."""
    features, labels = classification_data()
    for model in (
        HistGradientBoostingClassifier(max_iter=5, random_state=0),
        GradientBoostingClassifier(n_estimators=5, random_state=0),
        KNeighborsClassifier(),
        MLPClassifier(hidden_layer_sizes=(4,), max_iter=50, random_state=0),
    ):
        model.fit(features, labels)
        runtime = load_runtime("sklearn", sio.dumps(model))
        rows = probe_rows(5)
        assert [json_class(v) for v in runtime.predict(rows)] == model.predict(rows).tolist()


def test_numpy_ufuncs_in_a_skops_pipeline_are_trusted() -> None:
    features, values = regression_data()
    model = make_pipeline(FunctionTransformer(np.tanh), LinearRegression()).fit(features, values)

    prepared = prepare_upload(sio.dumps(model))

    rows = probe_rows(5)
    assert_regresses_like(prepared, rows, model.predict(rows))


class _Tripwire:
    """Unpickling this creates a file: proof that a refused pickle was never loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def _dump_joblib(value: Any, compress: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(value, buffer, compress=compress)
    return buffer.getvalue()


PICKLERS = {
    "pickle": lambda value: pickle.dumps(value),
    "pickle-protocol-2": lambda value: pickle.dumps(value, protocol=2),
    "joblib": lambda value: _dump_joblib(value, 0),
    "joblib-zlib": lambda value: _dump_joblib(value, 3),
    "joblib-gzip": lambda value: _dump_joblib(value, ("gzip", 3)),
    "joblib-bz2": lambda value: _dump_joblib(value, ("bz2", 3)),
    "joblib-xz": lambda value: _dump_joblib(value, ("xz", 3)),
}


@pytest.mark.parametrize("pickler", sorted(PICKLERS))
@pytest.mark.parametrize("declared", [None, "sklearn", "pickle", "joblib"])
def test_pickles_are_refused_with_403_and_never_loaded(
    pickler: str, declared: str | None, tmp_path: Path
) -> None:
    tripwire = tmp_path / "unpickled"
    data = PICKLERS[pickler](_Tripwire(tripwire))

    with pytest.raises(ForbiddenError, match="MODELPORT_ALLOW_PICKLE") as refused:
        prepare_upload(data, declared_flavor=declared)

    assert refused.value.status_code == 403
    assert not tripwire.exists()


@pytest.mark.parametrize("pickler", sorted(PICKLERS))
def test_pickles_are_converted_when_allowed(pickler: str) -> None:
    features, labels = classification_data()
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(features, labels)

    prepared = prepare_upload(PICKLERS[pickler](model), allow_pickle=True)

    assert (prepared.flavor, prepared.source_flavor) == ("onnx", "sklearn")
    assert prepared.details["source_format"] in ("pickle", "joblib")
    rows = probe_rows(5)
    assert_classifies_like(prepared, rows, model.predict(rows), model.predict_proba(rows))


def test_an_allowed_pickle_that_cannot_be_converted_is_unpickled_by_its_runtime() -> None:
    features, values = regression_data()
    model = HistGradientBoostingRegressor(max_iter=20, random_state=0).fit(features, values)
    data = _dump_joblib(model, 3)

    prepared = prepare_upload(data, allow_pickle=True)

    assert prepared.flavor == "sklearn-pickle"
    assert prepared.artifact == data
    assert prepared.artifact_suffix == ".joblib"
    assert prepared.details["native_fallback"]
    rows = probe_rows(5)
    assert_regresses_like(prepared, rows, model.predict(rows))


def test_a_skops_runtime_refuses_a_pickle_artifact() -> None:
    """The safe flavor never unpickles, whatever bytes reach it."""
    features, values = regression_data()
    data = pickle.dumps(LinearRegression().fit(features, values))

    with pytest.raises(Exception, match="sklearn model could not be loaded"):
        load_runtime("sklearn", data)


def test_a_truncated_allowed_pickle_is_400() -> None:
    features, values = regression_data()
    data = pickle.dumps(LinearRegression().fit(features, values))

    with pytest.raises(BadRequestError, match="cannot be loaded"):
        prepare_upload(data[: len(data) // 2], allow_pickle=True)


def test_a_truncated_skops_file_is_400() -> None:
    features, values = regression_data()
    data = sio.dumps(LinearRegression().fit(features, values))

    with pytest.raises(BadRequestError, match="zip"):
        prepare_upload(data[: len(data) - 40])


def test_a_classifier_without_probabilities_is_400() -> None:
    features, labels = classification_data()

    with pytest.raises(BadRequestError, match="probabilities"):
        prepare_upload(sio.dumps(SVC().fit(features, labels)))


def test_an_unfitted_model_is_400() -> None:
    with pytest.raises(BadRequestError, match="not fitted"):
        prepare_upload(sio.dumps(LinearRegression()))


# --- signatures --------------------------------------------------------------------------------


def _signature(names: list[str], task: str = "regression", **bounds: Any) -> Signature:
    outputs = (
        (FieldSpec(name="label", type="int"), FieldSpec(name="probabilities"))
        if task == "classification"
        else (FieldSpec(name="quality"),)
    )
    return Signature.model_validate(
        {
            "task": task,
            "inputs": [FieldSpec(name=name, **bounds.get(name, {})) for name in names],
            "outputs": outputs,
        }
    )


def test_a_given_signature_is_kept_and_bounds_the_verification_rows() -> None:
    features, values = regression_data()
    model = LinearRegression().fit(frame(features), values)
    signature = _signature(FEATURES, alcohol={"minimum": 8.0, "maximum": 15.0})

    prepared = prepare_upload(sio.dumps(model), signature=signature)

    assert prepared.signature == signature
    assert prepared.flavor == "onnx"


def test_a_signature_with_the_wrong_feature_count_is_422() -> None:
    features, values = regression_data()
    model = LinearRegression().fit(features, values)

    with pytest.raises(InvalidInputError, match="takes 5 features") as wrong:
        prepare_upload(sio.dumps(model), signature=_signature(["a", "b"]))

    assert wrong.value.status_code == 422
    assert wrong.value.errors[0]["loc"] == ["body", "signature", "inputs"]


def test_signature_names_must_match_the_models_feature_names() -> None:
    features, values = regression_data()
    model = LinearRegression().fit(frame(features), values)
    swapped = [FEATURES[1], FEATURES[0], *FEATURES[2:]]

    with pytest.raises(InvalidInputError, match="do not match the model's features") as wrong:
        prepare_upload(sio.dumps(model), signature=_signature(swapped))

    assert [e["loc"] for e in wrong.value.errors] == [
        ["body", "signature", "inputs", 0, "name"],
        ["body", "signature", "inputs", 1, "name"],
    ]


def test_signature_task_and_outputs_must_fit_the_model() -> None:
    features, labels = classification_data()
    classifier = sio.dumps(LogisticRegression().fit(features, labels))
    names = [f"x{i}" for i in range(5)]

    with pytest.raises(InvalidInputError, match="says regression"):
        prepare_upload(classifier, signature=_signature(names))
    with pytest.raises(InvalidInputError, match="registered for regression"):
        prepare_upload(classifier, task="regression")
    bad_outputs = _signature(names, "classification").model_copy(
        update={"outputs": (FieldSpec(name="species"),)}
    )
    with pytest.raises(InvalidInputError, match="'label' and 'probabilities'"):
        prepare_upload(classifier, signature=bad_outputs)
    assert prepare_upload(classifier, signature=_signature(names, "classification")).flavor


def test_a_multi_output_regressor_gets_one_output_per_target() -> None:
    features, values = regression_data()
    targets = np.column_stack([values, values * 2 + 1])
    model = LinearRegression().fit(features, targets)

    prepared = prepare_upload(sio.dumps(model))

    assert output_names(prepared) == ["prediction_0", "prediction_1"]
    rows = probe_rows(5)
    assert_regresses_like(prepared, rows, model.predict(rows))
    with pytest.raises(InvalidInputError, match="2 value"):
        prepare_upload(sio.dumps(model), signature=_signature([f"x{i}" for i in range(5)]))
