"""The format comes from the bytes; a declared flavor is checked, and bad files get a clear 4xx."""

from __future__ import annotations

import io
import pickle
import zipfile

import lightgbm as lgb
import pytest
import skops.io as sio
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from sklearn.linear_model import LinearRegression

from modelport.errors import BadRequestError, ForbiddenError
from modelport.ingest.preparation import detect_flavor, prepare_upload
from tests.ingest.support import regression_data


def _linear() -> LinearRegression:
    features, values = regression_data()
    return LinearRegression().fit(features, values)


def _onnx() -> bytes:
    features, _ = regression_data()
    return bytes(to_onnx(_linear(), features[:1].astype("float32")).SerializeToString())


def _lightgbm() -> bytes:
    features, values = regression_data()
    booster = lgb.LGBMRegressor(n_estimators=3, verbose=-1).fit(features, values).booster_
    return str(booster.model_to_string()).encode()


def _zip_without_schema() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("notes.txt", "hello")
    return buffer.getvalue()


def test_each_format_is_recognised_from_its_bytes() -> None:
    assert detect_flavor(_onnx()) == "onnx"
    assert detect_flavor(sio.dumps(_linear())) == "sklearn"
    assert detect_flavor(pickle.dumps(_linear())) == "sklearn"
    assert detect_flavor(_lightgbm()) == "lightgbm"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not a model at all", "not a model format"),
        (b'{"hello": "world"}', "not a model format"),
        (b"\x80\x09garbage", "unknown protocol"),
        (_zip_without_schema(), "not a skops model"),
        (b"tree\nversion=v4\n", "has no trees"),
    ],
)
def test_unusable_files_are_400(data: bytes, message: str) -> None:
    with pytest.raises(BadRequestError, match=message) as refused:
        prepare_upload(data)

    assert refused.value.status_code == 400


def test_an_unknown_declared_flavor_is_400_listing_the_known_ones() -> None:
    with pytest.raises(BadRequestError, match="unknown model flavor 'tensorflow'") as refused:
        prepare_upload(_onnx(), declared_flavor="tensorflow")

    assert "xgboost" in refused.value.message


@pytest.mark.parametrize(
    ("declared", "data", "message"),
    [
        ("onnx", sio.dumps(_linear()), "declared as ONNX but it is a scikit-learn model"),
        ("skops", pickle.dumps(_linear()), "declared as skops but it is a Python pickle"),
        ("sklearn", _onnx(), "declared as scikit-learn but it is an ONNX model"),
        ("xgboost", _onnx(), "declared as XGBoost"),
        ("lightgbm", sio.dumps(_linear()), "declared as LightGBM"),
        ("xgboost", b"garbage", "not a valid XGBoost model"),
        ("onnx", _onnx()[:40], "not a valid ONNX model"),
    ],
)
def test_a_file_that_is_not_the_declared_flavor_is_400_naming_it(
    declared: str, data: bytes, message: str
) -> None:
    with pytest.raises(BadRequestError, match=message):
        prepare_upload(data, declared_flavor=declared, allow_pickle=True)


def test_a_pickle_declared_as_skops_is_400_not_unpickled_or_403() -> None:
    with pytest.raises(BadRequestError):
        prepare_upload(pickle.dumps(_linear()), declared_flavor="skops")


def test_declared_flavors_ignore_case_and_spaces() -> None:
    assert prepare_upload(sio.dumps(_linear()), declared_flavor=" SKLearn ").flavor == "onnx"
    with pytest.raises(ForbiddenError):
        prepare_upload(pickle.dumps(_linear()), declared_flavor="Pickle")


def _onnx_with(node: helper.NodeProto, opsets: list[tuple[str, int]]) -> bytes:
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
    )
    ids = [helper.make_opsetid(domain, version) for domain, version in opsets]
    return bytes(helper.make_model(graph, opset_imports=ids).SerializeToString())


def test_onnx_with_custom_operators_is_refused() -> None:
    evil = _onnx_with(
        helper.make_node("Evil", ["x"], ["y"], domain="com.attacker"),
        [("", 17), ("com.attacker", 1)],
    )

    with pytest.raises(BadRequestError, match="custom operator"):
        prepare_upload(evil)
