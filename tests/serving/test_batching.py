"""Adaptive batching: concurrent requests for one model version share runtime calls, and no
caller can tell: the same answers and the same errors as alone, 503 past the queue depth,
504 past the deadline.

The batcher is checked on its own with real ONNX Runtime models (many cases, quickly), then
through the real app with a real scikit-learn model that holds a batch at a gate the test
opens (``gated_model``), so queues fill and deadlines pass without any timing assumption.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from prometheus_client import REGISTRY

from modelport.builtin.wine import FEATURE_NAMES, WINE_SIGNATURE, TrainedWine
from modelport.db.engine import create_engine, create_session_factory
from modelport.registry import service as registry
from modelport.registry.service import VersionRef
from modelport.runtimes.onnx import OnnxRuntime
from modelport.serving.batcher import Batcher, BatchPolicy, time_limit
from modelport.serving.model_cache import LoadedModel
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from tests.helpers import OPERATOR, WINE_ROW, run, services_of, wait_until
from tests.registry.support import serve
from tests.serving import gated_model
from tests.serving.v2_support import field_inputs

HANG_GUARD_SECONDS = 30.0  # waits for a state to be reached; never a performance requirement
BOUNDS = [(spec.minimum, spec.maximum) for spec in WINE_SIGNATURE.inputs]
ACIDITY = FEATURE_NAMES.index("fixed_acidity")


def batches_seen(model: str) -> tuple[float, float]:
    """(runtime calls, requests in them) so far for ``model``, from the batch histogram."""
    count = REGISTRY.get_sample_value("modelport_batch_requests_count", {"model": model})
    total = REGISTRY.get_sample_value("modelport_batch_requests_sum", {"model": model})
    return count or 0.0, total or 0.0


# --- the batcher with real ONNX Runtime models ------------------------------------------------


def lookup_onnx() -> bytes:
    """A real ONNX model that fails on some rows: a weighted sum of the features plus a value
    looked up by fixed acidity in a table of five. Acidity 5 or more is out of the table, and
    ONNX Runtime fails the whole call (as a model does on input it cannot take)."""
    weights = np.linspace(0.1, 1.1, len(FEATURE_NAMES), dtype=np.float32).reshape(-1, 1)
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["weighted"]),
        helper.make_node("Gather", ["features", "acidity_column"], ["acidity"], axis=1),
        helper.make_node("Cast", ["acidity"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["looked_up"], axis=0),
        helper.make_node("Add", ["weighted", "looked_up"], ["variable"]),
    ]
    graph = helper.make_graph(
        nodes,
        "lookup",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(FEATURE_NAMES)])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        [
            numpy_helper.from_array(weights, "W"),
            numpy_helper.from_array(np.array(ACIDITY, dtype=np.int64), "acidity_column"),
            numpy_helper.from_array(
                np.array([[0.5], [1.0], [1.5], [2.0], [2.5]], dtype=np.float32), "table"
            ),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def loaded(name: str, runtime: OnnxRuntime) -> LoadedModel:
    ref = VersionRef(
        model_name=name,
        version=1,
        version_id=uuid.uuid4(),
        artifact_uri="file:///not-read",
        sha256="0" * 64,
        flavor="onnx",
        signature=WINE_SIGNATURE,
    )
    return LoadedModel(ref=ref, runtime=runtime)


@st.composite
def feature_rows(draw: st.DrawFn, poisoned: bool) -> list[float]:
    row = [draw(st.floats(low, high)) for low, high in BOUNDS]
    row[ACIDITY] = draw(st.floats(5, 20) if poisoned else st.floats(0, 4.99))
    return row


@st.composite
def requests(draw: st.DrawFn) -> np.ndarray:
    """One request's features: 1 to 6 rows, now and then one the lookup model fails on."""
    count = draw(st.integers(1, 6))
    poisoned = draw(st.integers(0, 3)) == 0
    rows = [draw(feature_rows(poisoned and i == 0)) for i in range(count)]
    return np.array(draw(st.permutations(rows)), dtype=np.float32)


def alone(runtime: OnnxRuntime, features: np.ndarray) -> Any:
    try:
        return runtime.predict_outputs(features)
    except Exception as exc:
        return exc


def greedy_batches(sizes: list[int], max_rows: int) -> int:
    """How many runtime calls requests queued together take: whole requests, in order."""
    calls, rows = 0, 0
    for size in sizes:
        if rows and rows + size > max_rows:
            calls, rows = calls + 1, 0
        rows += size
    return calls + 1


@pytest.fixture(scope="module")
def runtimes(trained_wine: TrainedWine) -> dict[str, OnnxRuntime]:
    return {
        "lookup": OnnxRuntime(lookup_onnx()),
        "wine-forest": OnnxRuntime(trained_wine.onnx_bytes),
    }


@pytest.mark.parametrize("name", ["lookup", "wine-forest"])
@settings(max_examples=60, deadline=None)
@given(
    sent=st.lists(requests(), min_size=1, max_size=12),
    max_batch_size=st.integers(1, 16),
    pool_threads=st.integers(1, 2),
)
def test_batched_answers_and_errors_are_those_of_each_request_alone(
    runtimes: dict[str, OnnxRuntime],
    name: str,
    sent: list[np.ndarray],
    max_batch_size: int,
    pool_threads: int,
) -> None:
    runtime = runtimes[name]
    model = loaded(f"batching-{name}", runtime)
    expected = [alone(runtime, features) for features in sent]
    calls_before, requests_before = batches_seen(model.ref.model_name)

    async def together() -> list[Any]:
        batcher = Batcher(BatchPolicy(max_batch_size, 0.0, max_queue=100), pool_threads)
        try:
            runs = (batcher.run(model, features, None) for features in sent)
            return list(await asyncio.gather(*runs, return_exceptions=True))
        finally:
            batcher.close()

    got = asyncio.run(together())

    for answer, wanted in zip(got, expected, strict=True):
        if isinstance(wanted, Exception):
            assert type(answer) is type(wanted) and str(answer) == str(wanted)
        else:
            assert not isinstance(answer, BaseException), answer
            assert answer.keys() == wanted.keys()
            for output, values in wanted.items():
                assert answer[output].dtype == values.dtype
                assert np.array_equal(answer[output], values)
    calls, requests_run = batches_seen(model.ref.model_name)
    assert requests_run - requests_before == len(sent)
    assert calls - calls_before == greedy_batches([len(f) for f in sent], max_batch_size)


@pytest.mark.parametrize(("delay", "calls"), [(0.0, 2), (3600.0, 1)])
def test_a_batch_delay_lets_later_requests_join_until_the_batch_is_full(
    delay: float, calls: int
) -> None:
    """Without a delay the first request runs at once, alone; with one (an hour here) it waits
    for company, and the batch starts as soon as it is full, not when the hour is up."""
    runtime = OnnxRuntime(lookup_onnx())
    model = loaded(f"batching-delay-{delay}", runtime)
    first, second = (np.full((1, len(FEATURE_NAMES)), v, np.float32) for v in (1.0, 2.0))

    async def one_then_another() -> list[Any]:
        batcher = Batcher(BatchPolicy(2, delay, max_queue=10), pool_threads=1)
        try:
            early = asyncio.ensure_future(batcher.run(model, first, None))
            for _ in range(5):  # several turns of the event loop later
                await asyncio.sleep(0)
            late = batcher.run(model, second, None)
            return list(await asyncio.wait_for(asyncio.gather(early, late), HANG_GUARD_SECONDS))
        finally:
            batcher.close()

    before, _ = batches_seen(model.ref.model_name)
    answers = asyncio.run(one_then_another())

    assert batches_seen(model.ref.model_name)[0] - before == calls
    for answer, features in zip(answers, (first, second), strict=True):
        assert np.array_equal(answer["variable"], runtime.predict_outputs(features)["variable"])


@pytest.mark.parametrize(
    ("header", "seconds"), [(None, 30.0), ("2.5", 2.5), ("0.001", 0.001), ("90", 30.0)]
)
def test_a_caller_may_shorten_its_deadline_not_lengthen_it(
    header: str | None, seconds: float
) -> None:
    assert time_limit(header, 30.0) == seconds


# --- through the app: a real model held at a gate ---------------------------------------------

GATED = "/api/v1/models/gated/predict"
GATED_V2 = "/v2/models/gated/infer"


def register_gated(settings: Settings) -> None:
    async def register() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                await registry.register_version(
                    session,
                    open_artifact_store(settings),
                    model_name="gated",
                    task="regression",
                    artifact=gated_model.gated_model_bytes(),
                    artifact_suffix=".joblib",
                    flavor="sklearn-pickle",
                    signature=WINE_SIGNATURE,
                    metrics={},
                    details={"algorithm": "linear regression behind a gate"},
                )
                await session.commit()
        finally:
            await engine.dispose()

    run(register())


@pytest.fixture(autouse=True)
def open_gate() -> Iterator[None]:
    gated_model.GATE.set()
    gated_model.SEEN.clear()
    yield
    gated_model.GATE.set()  # whatever happened, let held requests finish


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=12, thread_name_prefix="client") as executor:
        yield executor


def gated_app(make_settings: Callable[..., Settings], **overrides: Any) -> Iterator[TestClient]:
    # One inference thread: while the gate holds a batch, every other request waits in line.
    values: dict[str, Any] = {"inference_pool_threads": 1, "max_batch_size": 1000, **overrides}
    settings = make_settings(**values)
    register_gated(settings)
    with serve(settings) as client:
        yield client


@pytest.fixture
def gated_client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    yield from gated_app(make_settings)


@pytest.fixture
def shallow_client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    yield from gated_app(make_settings, max_queue_depth=2)


def waiting(client: TestClient) -> int:
    services = services_of(client)
    ref = client.portal.call(services.resolver.resolve, "gated", None, None)  # type: ignore[union-attr]
    return services.predictions.batcher.waiting(ref.version_id)


def hold_the_model(client: TestClient, pool: ThreadPoolExecutor) -> Future[Any]:
    """A request whose batch is running and stays so until the gate opens."""
    gated_model.GATE.clear()
    gated_model.ENTERED.clear()
    held = pool.submit(client.post, GATED, json=WINE_ROW)
    wait_until(gated_model.ENTERED.is_set, "the first request reaches the model")
    return held


def row(**changes: float) -> dict[str, float]:
    return {**WINE_ROW, **changes}


def seen(sent: dict[str, float]) -> bool:
    values = [sent[name] for name in FEATURE_NAMES]
    return any(np.allclose(values, rows) for rows in gated_model.SEEN)


@st.composite
def wine_rows(draw: st.DrawFn) -> dict[str, float]:
    values = {
        name: round(draw(st.floats(low, high)), 3)
        for name, (low, high) in zip(FEATURE_NAMES, BOUNDS, strict=True)
    }
    if draw(st.integers(0, 4)) == 0:
        values["residual_sugar"] = gated_model.POISON
    return values


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, list[dict[str, float]]]:
    """One request: REST or the V2 protocol (both go through predict_with), 1 to 3 rows."""
    return draw(st.sampled_from(["rest", "v2"])), draw(
        st.lists(wine_rows(), min_size=1, max_size=3)
    )


def answer(client: TestClient, call: tuple[str, list[dict[str, float]]]) -> tuple[int, Any]:
    """What a caller can compare: the status and the predictions or the error."""
    protocol, rows = call
    if protocol == "rest":
        response = client.post(GATED, json={"inputs": rows})
        body = response.json()
        return response.status_code, rounded(body.get("predictions", body.get("detail")))
    response = client.post(GATED_V2, json={"inputs": field_inputs(rows)})
    body = response.json()
    return response.status_code, rounded(body.get("outputs", body.get("error")))


def rounded(value: Any) -> Any:
    """``value`` with every float to 12 significant digits: BLAS sums a batch of 3 rows in
    another order than a batch of 1, which moves the last bit of a float64, and no caller can
    tell answers apart that differ there."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, list):
        return [rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: rounded(item) for key, item in value.items()}
    return value


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],  # one app for all examples
)
@given(sent=st.lists(calls(), min_size=2, max_size=8))
def test_requests_that_queue_together_share_a_call_and_get_the_answers_they_get_alone(
    gated_client: TestClient, pool: ThreadPoolExecutor, sent: list[Any]
) -> None:
    calls_before, requests_before = batches_seen("gated")
    held = hold_the_model(gated_client, pool)
    queued = [pool.submit(answer, gated_client, call) for call in sent]
    wait_until(lambda: waiting(gated_client) == len(sent), "every request waits in line")
    gated_model.GATE.set()
    together = [future.result(timeout=HANG_GUARD_SECONDS) for future in queued]
    calls, requests_run = batches_seen("gated")

    by_themselves = [answer(gated_client, call) for call in sent]

    assert held.result(timeout=HANG_GUARD_SECONDS).status_code == 200
    assert together == by_themselves
    # The held request ran alone; all the others in one runtime call.
    assert (calls - calls_before, requests_run - requests_before) == (2, 1 + len(sent))
    poisoned = [any(r["residual_sugar"] == gated_model.POISON for r in rows) for _, rows in sent]
    assert [status for status, _ in together] == [503 if bad else 200 for bad in poisoned]


def test_batch_sizes_are_published_in_metrics(
    gated_client: TestClient, pool: ThreadPoolExecutor
) -> None:
    held = hold_the_model(gated_client, pool)
    queued = [
        pool.submit(gated_client.post, GATED, json={"inputs": [WINE_ROW] * count})
        for count in (2, 3)
    ]
    wait_until(lambda: waiting(gated_client) == 2, "both requests wait in line")
    gated_model.GATE.set()
    assert [f.result(timeout=HANG_GUARD_SECONDS).status_code for f in [held, *queued]] == [200] * 3

    text = gated_client.get("/metrics", headers=OPERATOR).text

    assert 'modelport_batch_rows_bucket{le="4.0",model="gated"}' in text
    rows_le_4 = _sample(text, 'modelport_batch_rows_bucket{le="4.0",model="gated"}')
    rows_le_8 = _sample(text, 'modelport_batch_rows_bucket{le="8.0",model="gated"}')
    assert rows_le_8 - rows_le_4 >= 1  # the five rows of two requests went in one call
    assert _sample(text, 'modelport_batch_requests_bucket{le="2.0",model="gated"}') >= 1


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} is not in /metrics")


def test_past_the_queue_depth_a_request_is_refused_at_once_and_never_run(
    shallow_client: TestClient, pool: ThreadPoolExecutor
) -> None:
    held = hold_the_model(shallow_client, pool)
    queued = [pool.submit(shallow_client.post, GATED, json=row(alcohol=a)) for a in (10, 11)]
    wait_until(lambda: waiting(shallow_client) == 2, "two requests wait in line")

    refused = shallow_client.post(GATED, json=row(alcohol=12))
    refused_v2 = shallow_client.post(GATED_V2, json={"inputs": field_inputs([row(alcohol=13)])})

    assert refused.status_code == 503
    assert refused.headers["retry-after"] == "1"
    assert "waiting" in refused.json()["detail"]
    assert refused_v2.status_code == 503
    assert refused_v2.headers["retry-after"] == "1"
    assert "waiting" in refused_v2.json()["error"]
    gated_model.GATE.set()
    assert [f.result(timeout=HANG_GUARD_SECONDS).status_code for f in [held, *queued]] == [200] * 3
    assert seen(row(alcohol=10)) and seen(row(alcohol=11))
    assert not seen(row(alcohol=12)) and not seen(row(alcohol=13))
    assert shallow_client.post(GATED, json=row(alcohol=12)).status_code == 200


@pytest.mark.parametrize("protocol", ["rest", "v2"])
def test_a_request_whose_deadline_passes_in_line_is_answered_504_and_never_run(
    gated_client: TestClient, pool: ThreadPoolExecutor, protocol: str
) -> None:
    held = hold_the_model(gated_client, pool)
    late = row(alcohol=15.5)
    headers = {"X-Request-Timeout": "0.2"}
    if protocol == "rest":
        response = gated_client.post(GATED, json=late, headers=headers)
        message = response.json()["detail"]
    else:
        body = {"inputs": field_inputs([late])}
        response = gated_client.post(GATED_V2, json=body, headers=headers)
        message = response.json()["error"]

    assert response.status_code == 504  # answered while the model is still held
    assert "deadline" in message
    gated_model.GATE.set()
    assert held.result(timeout=HANG_GUARD_SECONDS).status_code == 200
    assert not seen(late)
    assert gated_client.post(GATED, json=late).status_code == 200
    assert seen(late)


@pytest.mark.parametrize("value", ["soon", "0", "-1", "nan", "inf", ""])
def test_an_unusable_timeout_header_is_400_saying_what_it_takes(
    gated_client: TestClient, value: str
) -> None:
    headers = {"X-Request-Timeout": value}

    rest = gated_client.post(GATED, json=WINE_ROW, headers=headers)
    v2 = gated_client.post(GATED_V2, json={"inputs": field_inputs([WINE_ROW])}, headers=headers)

    assert rest.status_code == 400
    assert "X-Request-Timeout" in rest.json()["detail"]
    assert "seconds" in rest.json()["detail"]
    assert v2.status_code == 400
    assert "X-Request-Timeout" in v2.json()["error"]
    assert not gated_model.SEEN
