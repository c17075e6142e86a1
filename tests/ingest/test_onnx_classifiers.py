"""ONNX classifiers uploaded as ONNX: recognised, their classes read from the graph, served with
labels and probabilities (with or without a ZipMap)."""

from __future__ import annotations

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression

from modelport.ingest.preparation import prepare_upload
from modelport.runtimes.loader import load_runtime
from modelport.serving.service import postprocess
from tests.ingest.support import classification_data, output_names, probe_rows


@pytest.mark.parametrize("zipmap", [True, False])
@pytest.mark.parametrize("text_labels", [True, False])
def test_an_onnx_classifier_is_served_with_labels_and_probabilities(
    zipmap: bool, text_labels: bool
) -> None:
    features, labels = classification_data()
    classes = np.array(["cat", "dog", "emu"]) if text_labels else np.array([3, 5, 7])
    model = LogisticRegression().fit(features, classes[labels])
    data = to_onnx(
        model, features[:1].astype(np.float32), options={"zipmap": zipmap}
    ).SerializeToString()

    prepared = prepare_upload(data)

    assert prepared.flavor == "onnx"
    assert prepared.signature.task == "classification"
    assert output_names(prepared) == ["label", "probabilities"]
    assert prepared.details["classes"] == classes.tolist()
    rows = probe_rows(5)
    runtime = load_runtime("onnx", data)
    served = postprocess(
        prepared.signature, runtime.predict_outputs(rows), len(rows), prepared.details
    )
    expected = model.predict_proba(rows)
    for row, label, probabilities in zip(served, model.predict(rows), expected, strict=True):
        assert row["label"] == label.item()
        assert list(row["probabilities"]) == [str(c) for c in classes]
        assert list(row["probabilities"].values()) == pytest.approx(probabilities, abs=1e-5)


def test_the_registry_task_makes_an_onnx_model_a_classifier() -> None:
    features, labels = classification_data()
    model = LogisticRegression().fit(features, labels)
    data = to_onnx(model, features[:1].astype(np.float32)).SerializeToString()

    assert prepare_upload(data, task="classification").signature.task == "classification"
    assert prepare_upload(data, task="regression").signature.task == "regression"
