"""ONNX models whose tensors name a file the server can read ("external data"): refused at upload
wherever the tensor sits, and never read by the serving runtime, whatever reaches it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidGraph

from modelport.errors import BadRequestError, ModelUnavailableError
from modelport.ingest.preparation import prepare_upload
from modelport.runtimes.loader import load_runtime
from modelport.runtimes.onnx import session_options
from tests.ingest.hostile_onnx import (
    LEAKED,
    SECRET_MARKER,
    VARIANTS,
    custom_op_in_a_branch,
    external_tensor,
    hostile_onnx,
    plant_secrets,
)

ROWS = np.zeros((2, 3))


@pytest.fixture
def locations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Run from a directory holding a secret, as the server ran from one holding var/."""
    workdir, found = plant_secrets(tmp_path)
    monkeypatch.chdir(workdir)
    return found


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_uploads_with_external_data_anywhere_are_refused_with_how_to_fix(
    variant: str, locations: dict[str, str], subtests: pytest.Subtests
) -> None:
    for kind, location in locations.items():
        with subtests.test(location=kind):
            with pytest.raises(BadRequestError) as refused:
                prepare_upload(hostile_onnx(variant, location))
            assert refused.value.status_code == 400
            assert "external file" in refused.value.message
            assert "save_as_external_data=False" in refused.value.message
            assert location not in refused.value.message


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_serving_runtime_never_returns_bytes_of_a_file(
    variant: str, locations: dict[str, str], subtests: pytest.Subtests
) -> None:
    """A stored artifact that somehow has external data (the upload check bypassed) is not
    loaded: no prediction can carry the file's bytes."""
    for kind, location in locations.items():
        with subtests.test(location=kind):
            try:
                runtime = load_runtime("onnx", hostile_onnx(variant, location))
            except ModelUnavailableError as exc:
                assert "external file" in (exc.internal or "")  # the operator learns why
                assert location not in exc.message and "external" not in exc.message
            else:
                leaked = np.asarray(runtime.predict(ROWS), dtype=np.float32)
                pytest.fail(f"the model loaded and predicted {leaked.ravel().tolist()}")


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_onnx_runtime_itself_resolves_no_external_path_under_the_servers_options(
    variant: str, locations: dict[str, str], subtests: pytest.Subtests
) -> None:
    """Defence in depth: with the model check skipped, ONNX Runtime under the session options
    the server uses still finds no file to read."""
    for kind, location in locations.items():
        with subtests.test(location=kind), pytest.raises((Fail, InvalidGraph)):
            session = ort.InferenceSession(
                hostile_onnx(variant, location),
                session_options(),
                providers=["CPUExecutionProvider"],
            )
            (leaked,) = session.run(None, {"features": ROWS.astype(np.float32)})
            assert SECRET_MARKER not in np.asarray(leaked)


def test_a_custom_operator_inside_a_branch_is_refused() -> None:
    with pytest.raises(BadRequestError, match=r"custom operator domains \['com.attacker'\]"):
        prepare_upload(custom_op_in_a_branch())


def test_external_data_in_a_model_local_function_is_refused(locations: dict[str, str]) -> None:
    """Functions carry nodes of their own; a Constant among them is checked like any other."""
    function = helper.make_function(
        "local",
        "read_secret",
        [],
        ["out"],
        [
            helper.make_node(
                "Constant", [], ["out"], value=external_tensor("value", locations["relative"])
            )
        ],
        [helper.make_opsetid("", 17)],
    )
    graph = helper.make_graph(
        [
            helper.make_node("read_secret", [], [LEAKED], domain="local"),
            helper.make_node("Add", ["features", LEAKED], ["variable"]),
        ],
        "with-function",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
    )
    model = helper.make_model(
        graph,
        functions=[function],
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
    )

    with pytest.raises(BadRequestError, match="external file") as refused:
        prepare_upload(model.SerializeToString())

    assert "function 'read_secret'" in refused.value.message
