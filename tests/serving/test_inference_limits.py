"""Runaway models: a run past its time limit is stopped and answered 504, one model uses only
its share of the inference threads, and probes tell a busy process from a stuck one.

The runaway model is a Loop whose trip count comes from its input (about 10^10 iterations for a
wine row), registered straight in the registry as an administrator's tool would: no check of
the file can tell how long it runs, so only the time limit can stop it. Times here are limits
the server is given (a second or so, to keep the tests short); what is asserted is behaviour
(statuses, messages, threads free again), and the other callers' latencies are printed.
"""

from __future__ import annotations

import asyncio
import io
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.linear_model import LinearRegression

from modelport.builtin.wine import FEATURE_NAMES, WINE_SIGNATURE, TrainedWine
from modelport.db.engine import create_engine, create_session_factory
from modelport.registry import service as registry
from modelport.runtimes.onnx import OnnxRuntime
from modelport.serving import batcher as batching
from modelport.serving.batcher import Batcher, BatchPolicy
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from tests.cli.test_serve import (  # the fixtures that run `modelport serve`, reused
    assert_clean_exit,
    start_server,  # noqa: F401 - a fixture
    wine_home,  # noqa: F401 - a fixture
)
from tests.helpers import (
    OPERATOR,
    WINE_ROW,
    admin_headers,
    bearer,
    create_account,
    register_trained,
    run,
    services_of,
    wait_until,
)
from tests.ingest.hostile_onnx import input_driven_loop
from tests.processes import Server, free_port
from tests.registry.support import register_onnx, serve
from tests.serving import gated_model
from tests.serving.test_batching import loaded

HANG_GUARD_SECONDS = 60.0  # waits for a state to be reached; never a performance requirement
LIMIT = 1.0  # the server's time limit per run in these tests
RUNAWAY = "/api/v1/models/runaway/predict"
WINE = "/api/v1/models/wine-quality/predict"
LINEAR = "/api/v1/models/linear/predict"
GATED = "/api/v1/models/gated/predict"
STOPPED = f"the model ran longer than its {LIMIT:g} s limit and was stopped"


def register_native(settings: Settings, name: str, model_bytes: bytes) -> None:
    """A scikit-learn model served by scikit-learn itself (always in the inference pool)."""

    async def register() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                await registry.register_version(
                    session,
                    open_artifact_store(settings),
                    model_name=name,
                    task="regression",
                    artifact=model_bytes,
                    artifact_suffix=".joblib",
                    flavor="sklearn-pickle",
                    signature=WINE_SIGNATURE,
                    metrics={},
                    details={"algorithm": "linear regression"},
                )
                await session.commit()
        finally:
            await engine.dispose()

    run(register())


def linear_model_bytes() -> bytes:
    rng = np.random.default_rng(3)
    features = rng.uniform(0.1, 1.0, size=(64, len(FEATURE_NAMES)))
    model = LinearRegression().fit(features, features @ np.linspace(0.01, 0.1, len(FEATURE_NAMES)))
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


@pytest.fixture
def limited(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> Callable[..., Iterator[TestClient]]:
    """An app with two inference threads, a short run limit, the wine model (ONNX), a linear
    model served by scikit-learn, and the runaway model (owned by alice)."""

    def start(**overrides: Any) -> Iterator[TestClient]:
        values: dict[str, Any] = {
            "inference_pool_threads": 2,
            "inference_timeout_seconds": LIMIT,
            "inference_timeout_max_seconds": 5 * LIMIT,
            **overrides,
        }
        settings = make_settings(**values)
        register_trained(settings, trained_wine)
        register_native(settings, "linear", linear_model_bytes())
        alice = create_account(settings, "alice@example.com")
        register_onnx(settings, input_driven_loop(len(FEATURE_NAMES)), "runaway", owner_id=alice)
        with serve(settings) as client:
            yield client

    return start


@contextmanager
def started(apps: Iterator[TestClient]) -> Iterator[TestClient]:
    """The app ``limited`` started, stopped on leaving."""
    client = next(apps)
    try:
        yield client
    finally:
        next(apps, None)


@pytest.fixture
def client(limited: Callable[..., Iterator[TestClient]]) -> Iterator[TestClient]:
    yield from limited()


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=24, thread_name_prefix="client") as executor:
        yield executor


@pytest.fixture(autouse=True)
def open_gate() -> Iterator[None]:
    gated_model.GATE.set()
    yield
    gated_model.GATE.set()  # whatever happened, let held requests finish


def load(client: TestClient) -> dict[str, int]:
    return services_of(client).predictions.batcher.load()


def timed_post(client: TestClient, path: str) -> tuple[int, float]:
    started = time.perf_counter()
    status = client.post(path, json=WINE_ROW).status_code
    return status, time.perf_counter() - started


def print_latencies(what: str, seconds: list[float]) -> None:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    print(
        f"\n{what}: {len(ordered)} calls, p50 {statistics.median(ordered) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms"
    )


def other_callers(
    client: TestClient, pool: ThreadPoolExecutor, until: Callable[[], bool]
) -> list[Future[tuple[int, float]]]:
    """Calls to the wine model (ONNX) and the linear one (scikit-learn), two every 20 ms."""
    calls: list[Future[tuple[int, float]]] = []
    while not until():
        calls += [pool.submit(timed_post, client, path) for path in (WINE, LINEAR)]
        time.sleep(0.02)
    return calls


def runaway_calls(client: TestClient, pool: ThreadPoolExecutor, count: int) -> list[Future[Any]]:
    return [pool.submit(client.post, RUNAWAY, json=WINE_ROW) for _ in range(count)]


# --- the attack -------------------------------------------------------------------------------


def test_runaway_runs_are_stopped_at_their_limit_while_other_models_answer(
    client: TestClient, pool: ThreadPoolExecutor
) -> None:
    """More runaway calls than inference threads, while other callers use an ONNX model and a
    scikit-learn model (which always runs in the inference pool): the runaway calls answer 504
    saying the model was stopped, every other call answers 200, and the threads are free again."""
    rounds = iter(range(40))
    quiet = other_callers(client, pool, lambda: next(rounds, None) is None)
    print_latencies("other callers before the attack", [f.result()[1] for f in quiet])
    attack = runaway_calls(client, pool, 12)
    wait_until(lambda: load(client)["busy"] >= 1, "a runaway run holds an inference thread")
    others = other_callers(client, pool, lambda: all(call.done() for call in attack))

    answers = [call.result(timeout=HANG_GUARD_SECONDS) for call in attack]
    assert [answer.status_code for answer in answers] == [504] * len(attack)
    assert {answer.json()["detail"] for answer in answers} == {STOPPED}
    results = [other.result(timeout=HANG_GUARD_SECONDS) for other in others]
    assert [status for status, _ in results] == [200] * len(results)
    print_latencies("other callers during the runaway calls", [s for _, s in results])
    # The runs really ended: no inference thread is busy, and each thread serves again.
    wait_until(lambda: load(client)["busy"] == 0, "every inference thread is free again")
    finished = list(pool.map(lambda _: client.post(LINEAR, json=WINE_ROW).status_code, range(4)))
    assert finished == [200] * 4


def test_a_run_is_stopped_once_every_caller_waiting_for_it_has_gone(
    limited: Callable[..., Iterator[TestClient]],
) -> None:
    """A caller's own deadline (X-Request-Timeout) shorter than the limit: it is answered at
    its deadline, and the run stops then too, rather than at the model's limit."""
    apps = limited(inference_timeout_seconds=60.0, inference_timeout_max_seconds=60.0)
    with started(apps) as client:
        response = client.post(RUNAWAY, json=WINE_ROW, headers={"X-Request-Timeout": "0.5"})

        assert response.status_code == 504
        assert "deadline" in response.json()["detail"]
        wait_until(lambda: load(client)["busy"] == 0, "the run stopped with its last caller")


def test_an_onnx_model_that_runs_inline_and_turns_slow_is_moved_off_the_event_loop() -> None:
    """An ONNX model measured quick runs on the event loop; an input that makes its Loop long
    must not hold the loop: the run is stopped after a moment and goes to the pool, where its
    time limit stops it. Other coroutines keep their turns meanwhile."""
    runtime = OnnxRuntime(input_driven_loop(len(FEATURE_NAMES)))
    model = loaded("inline-runaway", runtime)
    quick = np.zeros((1, len(FEATURE_NAMES)), np.float32)  # a Loop of 0 iterations
    slow = np.full((1, len(FEATURE_NAMES)), 7.4, np.float32)

    async def attack() -> tuple[Any, int]:
        policy = BatchPolicy(64, 0.0, max_queue=10, run_seconds=LIMIT, max_concurrency=1)
        batcher = Batcher(policy, pool_threads=1, inline_seconds=1.0)  # anything runs inline
        turns = 0
        running = True

        async def other_coroutine() -> None:
            nonlocal turns
            while running:
                await asyncio.sleep(0.01)
                turns += 1

        try:
            await batcher.run(model, quick, None)  # measured: quick enough to run inline
            await batcher.run(model, quick, None)
            other = asyncio.ensure_future(other_coroutine())
            await asyncio.sleep(0)
            outcome = await asyncio.gather(batcher.run(model, slow, None), return_exceptions=True)
            running = False
            await other
            return outcome[0], turns
        finally:
            batcher.close()

    outcome, turns = asyncio.run(asyncio.wait_for(attack(), HANG_GUARD_SECONDS))

    assert str(outcome) == STOPPED
    assert turns > 0  # the event loop was not held for the run


# --- limits per model -------------------------------------------------------------------------


def test_an_owner_lowers_the_time_limit_and_an_administrator_may_raise_it(
    client: TestClient,
) -> None:
    alice = bearer(client, "alice@example.com")
    admin = admin_headers(client)

    lowered = client.patch(
        "/api/v1/models/runaway", json={"inference_timeout_seconds": 0.5}, headers=alice
    )
    stopped = client.post(RUNAWAY, json=WINE_ROW)
    raised = client.patch(
        "/api/v1/models/runaway", json={"inference_timeout_seconds": 2 * LIMIT}, headers=alice
    )
    too_far = client.patch(
        "/api/v1/models/runaway", json={"inference_timeout_seconds": 6 * LIMIT}, headers=admin
    )
    by_admin = client.patch(
        "/api/v1/models/runaway", json={"inference_timeout_seconds": 2 * LIMIT}, headers=admin
    )

    assert lowered.status_code == 200
    assert lowered.json()["inference_timeout_seconds"] == 0.5
    assert (stopped.status_code, stopped.json()["detail"]) == (
        504,
        "the model ran longer than its 0.5 s limit and was stopped",
    )
    assert raised.status_code == 422
    assert raised.json()["detail"][0]["loc"] == ["body", "inference_timeout_seconds"]
    assert "at most 1 s" in raised.json()["detail"][0]["msg"]
    assert "administrator" in raised.json()["detail"][0]["msg"]
    assert too_far.status_code == 422
    assert "at most 5 s (the server's maximum)" in too_far.json()["detail"][0]["msg"]
    assert by_admin.status_code == 200
    assert client.post(RUNAWAY, json=WINE_ROW).json()["detail"] == (
        f"the model ran longer than its {2 * LIMIT:g} s limit and was stopped"
    )
    reset = client.patch(
        "/api/v1/models/runaway", json={"inference_timeout_seconds": None}, headers=alice
    )
    assert reset.json()["inference_timeout_seconds"] is None
    assert client.post(RUNAWAY, json=WINE_ROW).json()["detail"] == STOPPED


@pytest.mark.parametrize(
    "body",
    [
        {"inference_timeout_seconds": 0},
        {"inference_timeout_seconds": -1},
        {"inference_timeout_seconds": "soon"},
        {"max_concurrency": 0},
        {"max_concurrency": 1.5},
    ],
)
def test_unusable_limits_are_422_naming_the_field(client: TestClient, body: dict[str, Any]) -> None:
    response = client.patch("/api/v1/models/runaway", json=body, headers=admin_headers(client))

    assert response.status_code == 422
    assert next(iter(body)) in str(response.json())


def test_a_model_uses_only_its_share_of_the_inference_threads(
    client: TestClient, pool: ThreadPoolExecutor
) -> None:
    """Two threads, one per model by default: the runaway calls wait in their own queue and
    never take the second thread; an administrator may give the model both."""
    alice = bearer(client, "alice@example.com")
    admin = admin_headers(client)
    client.patch(  # long enough to look at the threads while the runs go on
        "/api/v1/models/runaway", json={"inference_timeout_seconds": 3 * LIMIT}, headers=admin
    )
    first = runaway_calls(client, pool, 1)
    wait_until(lambda: load(client)["busy"] == 1, "the runaway model runs")
    queued = runaway_calls(client, pool, 3)
    wait_until(lambda: load(client)["waiting"] == 3, "more runaway calls wait in line")

    assert load(client)["busy"] == 1  # the other thread stays for the other models
    assert client.post(LINEAR, json=WINE_ROW).status_code == 200
    for call in first + queued:
        assert call.result(timeout=HANG_GUARD_SECONDS).status_code == 504

    owner_more = client.patch("/api/v1/models/runaway", json={"max_concurrency": 2}, headers=alice)
    admin_more = client.patch("/api/v1/models/runaway", json={"max_concurrency": 2}, headers=admin)
    assert owner_more.status_code == 422
    assert "max_concurrency may be at most 1 threads" in owner_more.json()["detail"][0]["msg"]
    assert admin_more.status_code == 200
    both = runaway_calls(client, pool, 1)
    wait_until(lambda: load(client)["busy"] == 1, "the first runaway run")
    both += runaway_calls(client, pool, 1)
    wait_until(lambda: load(client)["busy"] == 2, "the runaway model runs on both threads")
    assert [call.result(timeout=HANG_GUARD_SECONDS).status_code for call in both] == [504, 504]


def test_past_its_queue_a_busy_model_refuses_at_once_with_retry_after(
    limited: Callable[..., Iterator[TestClient]], pool: ThreadPoolExecutor
) -> None:
    with started(limited(max_queue_depth=2)) as client:
        held = runaway_calls(client, pool, 1)
        wait_until(lambda: load(client)["busy"] == 1, "the runaway model runs")
        queued = runaway_calls(client, pool, 2)
        wait_until(lambda: load(client)["waiting"] == 2, "its queue is full")

        refused = client.post(RUNAWAY, json=WINE_ROW)

        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "waiting already for its 1 inference thread(s)" in refused.json()["detail"]
        assert client.post(WINE, json=WINE_ROW).status_code == 200  # other models still answer
        assert {call.result(timeout=HANG_GUARD_SECONDS).status_code for call in held + queued} == {
            504
        }


# --- probes and shutdown ----------------------------------------------------------------------


def test_liveness_stays_up_and_readiness_reports_saturation_during_the_attack(
    client: TestClient, pool: ThreadPoolExecutor
) -> None:
    client.patch(
        "/api/v1/models/runaway", json={"max_concurrency": 2}, headers=admin_headers(client)
    )
    idle = client.get("/health/ready").json()
    attack = runaway_calls(client, pool, 1)
    wait_until(lambda: load(client)["busy"] == 1, "one runaway run")
    attack += runaway_calls(client, pool, 3)
    wait_until(lambda: load(client)["busy"] == 2, "every inference thread runs the runaway model")

    live = client.get("/health/live")
    ready = client.get("/health/ready")
    detail = client.get("/health", headers={"Authorization": "Bearer " + _metrics_token(client)})

    assert idle["components"]["inference"]["status"] == "up"
    assert live.status_code == 200
    assert ready.status_code == 200  # busy is not unready: the other models still answer
    inference = ready.json()["components"]["inference"]
    assert inference["status"] == "down"
    assert inference["impact"].startswith("saturated")
    assert detail.json()["components"]["inference"]["detail"]["threads"] == 2
    assert detail.json()["components"]["inference"]["detail"]["busy"] == 2
    for call in attack:
        assert call.result(timeout=HANG_GUARD_SECONDS).status_code == 504
    wait_until(lambda: load(client)["busy"] == 0, "the runs ended")
    assert client.get("/health/ready").json()["components"]["inference"]["status"] == "up"


def _metrics_token(client: TestClient) -> str:
    token = services_of(client).settings.metrics_token
    assert token is not None
    return token.get_secret_value()


def test_liveness_fails_only_when_every_inference_thread_is_stuck(
    make_settings: Callable[..., Settings],
    pool: ThreadPoolExecutor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A native model cannot be stopped mid-run: its caller is answered at the limit, and the
    thread it holds counts as stuck once far past it (here: at once). With every thread stuck
    the process cannot serve, and liveness says so; once the run ends it is live again."""
    monkeypatch.setattr(batching, "STUCK_GRACE_SECONDS", 0.0)
    settings = make_settings(
        inference_pool_threads=1, inference_timeout_seconds=0.2, allow_pickle=True
    )
    register_native(settings, "gated", gated_model.gated_model_bytes())
    with serve(settings) as client:
        gated_model.GATE.clear()
        gated_model.ENTERED.clear()
        held = pool.submit(client.post, GATED, json=WINE_ROW)
        wait_until(gated_model.ENTERED.is_set, "the native run starts")
        answer = held.result(timeout=HANG_GUARD_SECONDS)
        wait_until(lambda: load(client)["stuck"] == 1, "the run is past its limit")

        stuck = client.get("/health/live")
        gated_model.GATE.set()
        wait_until(lambda: load(client)["busy"] == 0, "the native run ends")
        alive = client.get("/health/live")

    assert answer.status_code == 504
    assert "ran longer than its 0.2 s limit; its answer was abandoned" in answer.json()["detail"]
    assert stuck.status_code == 503
    assert "every inference thread" in stuck.json()["detail"]
    assert alive.status_code == 200


def test_shutting_down_stops_runaway_runs(
    limited: Callable[..., Iterator[TestClient]], pool: ThreadPoolExecutor
) -> None:
    """With runs that would go on for a minute, stopping the app ends them: no inference thread
    is left running the model (today's SIGTERM waited for them)."""
    apps = limited(inference_timeout_seconds=60.0, inference_timeout_max_seconds=60.0)
    client = next(apps)
    client.patch(
        "/api/v1/models/runaway", json={"max_concurrency": 2}, headers=admin_headers(client)
    )
    attack = runaway_calls(client, pool, 1)
    wait_until(lambda: load(client)["busy"] == 1, "one runaway run")
    attack += runaway_calls(client, pool, 1)
    wait_until(lambda: load(client)["busy"] == 2, "both threads run the runaway model")
    started = time.perf_counter()

    with pytest.raises(StopIteration):
        next(apps)  # leaves the app: its shutdown runs
    print(f"\nshutdown with two runaway runs took {time.perf_counter() - started:.2f} s")

    for call in attack:
        call.result(timeout=HANG_GUARD_SECONDS)  # answered (or dropped), never left hanging
    wait_until(
        lambda: not any(t.name.startswith("inference") for t in threading.enumerate()),
        "no inference thread is left",
    )


def test_sigterm_stops_runaway_runs_instead_of_waiting_for_them(
    start_server: Callable[..., Server],  # noqa: F811 - the fixture imported above
    wine_home: Path,  # noqa: F811
) -> None:
    """``modelport serve`` as a user runs it, with a one-minute limit and two runaway calls in
    flight: SIGTERM stops them (their callers get 504 saying why) and the process exits cleanly,
    instead of waiting out the open requests."""
    settings = Settings(
        var_dir=wine_home, database_url=f"sqlite+aiosqlite:///{wine_home / 'modelport.db'}"
    )
    register_onnx(settings, input_driven_loop(len(FEATURE_NAMES)), "runaway")
    port = free_port()
    server = start_server(
        "--port",
        str(port),
        "--workers",
        "1",
        port=port,
        extra_env={
            "MODELPORT_INFERENCE_TIMEOUT_SECONDS": "60",
            "MODELPORT_INFERENCE_POOL_THREADS": "2",
            "MODELPORT_INFERENCE_MAX_CONCURRENCY": "2",
        },
    )
    server.wait_until_ready()

    def busy() -> int:
        health = httpx.get(f"{server.base_url}/health", headers=OPERATOR, timeout=5).json()
        return int(health["components"]["inference"]["detail"]["busy"])

    with ThreadPoolExecutor(max_workers=2) as callers:
        url = f"{server.base_url}{RUNAWAY}"
        # One after the other: two calls that wait together (for the model's first load) would
        # share one run.
        calls = [callers.submit(httpx.post, url, json=WINE_ROW, timeout=120)]
        wait_until(lambda: busy() == 1, "the first runaway call runs")
        calls.append(callers.submit(httpx.post, url, json=WINE_ROW, timeout=120))
        wait_until(lambda: busy() == 2, "both runaway calls run")
        started = time.perf_counter()
        returncode = server.terminate()
        print(f"\nSIGTERM with two runaway runs: exited in {time.perf_counter() - started:.2f} s")
        answers = [call.result(timeout=HANG_GUARD_SECONDS) for call in calls]

    assert_clean_exit(server, returncode)
    assert [answer.status_code for answer in answers] == [504, 504]
    assert all("shutting down" in answer.json()["detail"] for answer in answers)
