"""``modelport serve`` as a user runs it: a real process, real HTTP, a real SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from prometheus_client.multiprocess import MultiProcessCollector

from modelport.builtin.wine import FEATURE_NAMES, TrainedWine
from modelport.workers import usable_cores
from tests.cli.support import make_wine_home, serve_processes
from tests.helpers import OPERATOR, WINE_ROW
from tests.processes import STARTUP_DEADLINE_SECONDS, Server, free_port


@pytest.fixture
def wine_home(tmp_path: Path, trained_wine: TrainedWine) -> Path:
    return make_wine_home(tmp_path / "var", trained_wine)


@pytest.fixture
def start_server(tmp_path: Path, wine_home: Path) -> Iterator[Callable[..., Server]]:
    yield from serve_processes(tmp_path, wine_home)


def logged_predictions(var: Path) -> list[tuple[str, str, str | None, str]]:
    with sqlite3.connect(var / "modelport.db") as connection:
        rows = connection.execute(
            "SELECT request_id, model_name, model_version, status FROM predictions"
        ).fetchall()
    return [tuple(row) for row in rows]


def expected_quality(trained_wine: TrainedWine) -> float:
    session = ort.InferenceSession(trained_wine.onnx_bytes, providers=["CPUExecutionProvider"])
    features = np.array([[WINE_ROW[name] for name in FEATURE_NAMES]], dtype=np.float32)
    (result,) = session.run(None, {session.get_inputs()[0].name: features})
    return float(np.asarray(result).ravel()[0])


def assert_clean_exit(server: Server, returncode: int) -> None:
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete, so a clean stop is
    # either exit status 0 or "terminated by SIGTERM" - never a crash or a forced kill.
    assert returncode in (0, -signal.SIGTERM), server.log
    assert "Application shutdown complete" in server.log
    assert "Traceback" not in server.log


def test_serve_predicts_and_flushes_the_log_on_sigterm(
    start_server: Callable[..., Server], wine_home: Path, trained_wine: TrainedWine
) -> None:
    port = free_port()
    # One worker: with several, each listens on its own socket and /health may reach one still
    # preloading its models (the two-worker test covers that set-up).
    server = start_server("--workers", "1", "--port", str(port), port=port)

    server.wait_until_ready()
    health = httpx.get(f"{server.base_url}/health", headers=OPERATOR, timeout=5)
    assert health.json()["components"]["models"]["detail"]["loaded"] == ["wine-quality:1"]

    response = httpx.post(
        f"{server.base_url}/predict", json=WINE_ROW, headers={"X-Request-ID": "sigterm-test-1"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_version"] == "1"
    assert body["predicted_quality"] == pytest.approx(expected_quality(trained_wine), abs=1e-5)

    refused = httpx.post(f"{server.base_url}/predict", json={**WINE_ROW, "ph": 14.0})
    assert refused.status_code == 422

    assert logged_predictions(wine_home) == []  # still buffered: flush interval is an hour
    assert_clean_exit(server, server.terminate())

    rows = logged_predictions(wine_home)
    assert ("sigterm-test-1", "wine-quality", "1", "success") in rows
    assert len(rows) == 2
    assert not (wine_home / "prediction-log-spool.jsonl").exists()


def test_serve_takes_the_port_from_the_environment_and_runs_two_workers(
    start_server: Callable[..., Server], wine_home: Path
) -> None:
    port = free_port()
    server = start_server("--workers", "2", port=port, extra_env={"MODELPORT_PORT": str(port)})

    server.wait_until_ready()
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        for _ in range(8):
            response = client.post("/predict", json=WINE_ROW)
            assert response.status_code == 200, response.text
            assert 0 <= response.json()["predicted_quality"] <= 10

    assert_clean_exit(server, server.terminate())
    assert server.log.count("Application shutdown complete") == 2  # both workers stopped
    rows = logged_predictions(wine_home)
    assert len(rows) == 8
    assert {row[1:] for row in rows} == {("wine-quality", "1", "success")}


def anonymous_reads(server: Server, forwarded_for: list[str]) -> list[int]:
    """GET /api/v1/models once per X-Forwarded-For value, from this machine (127.0.0.1)."""
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        return [
            client.get("/api/v1/models", headers={"X-Forwarded-For": value}).status_code
            for value in forwarded_for
        ]


def test_serve_believes_forwarded_addresses_only_from_trusted_proxies(
    start_server: Callable[..., Server],
) -> None:
    limited = {"MODELPORT_RATE_LIMIT_ANONYMOUS_PER_MINUTE": "2"}
    spoofed = ["198.51.100.1", "198.51.100.2", "198.51.100.3"]

    # No trusted proxy: a client on the same host cannot pick a fresh address per request.
    port = free_port()
    direct = start_server("--port", str(port), port=port, extra_env=limited)
    direct.wait_until_ready()
    assert anonymous_reads(direct, spoofed) == [200, 200, 429]
    direct.terminate()

    # 127.0.0.1 named as the proxy: the client it names is the one counted.
    port = free_port()
    proxied = start_server(
        "--port",
        str(port),
        port=port,
        extra_env={**limited, "MODELPORT_TRUSTED_PROXIES": "127.0.0.1"},
    )
    proxied.wait_until_ready()
    assert anonymous_reads(proxied, spoofed) == [200, 200, 200]
    assert anonymous_reads(proxied, ["198.51.100.9"] * 3) == [200, 200, 429]
    proxied.terminate()


PREDICTED = re.compile(
    r'^modelport_predictions_total\{model="wine-quality",status="success"\} (\S+)$', re.MULTILINE
)


def spread(requests: list[Callable[[httpx.Client], int]]) -> list[int]:
    """Send each request on a connection of its own, 32 at a time, so both workers take some."""

    def send(request: Callable[[httpx.Client], int]) -> int:
        with httpx.Client(timeout=30) as client:
            return request(client)

    with ThreadPoolExecutor(32) as pool:
        return list(pool.map(send, requests))


def workers_that_predicted(run_root: Path) -> int:
    """How many worker processes counted a prediction (each writes its own metrics file)."""
    [metrics] = run_root.glob("*/serve-*/metrics")  # run/<host>/serve-<pid>-...
    counted = 0
    for path in metrics.glob("counter_*.db"):
        for metric in MultiProcessCollector.merge([str(path)]):
            if metric.name == "modelport_predictions" and any(
                sample.value > 0 for sample in metric.samples
            ):
                counted += 1
    return counted


def test_two_workers_share_metrics_and_rate_limits(
    start_server: Callable[..., Server], wine_home: Path
) -> None:
    port = free_port()
    server = start_server(
        "--workers",
        "2",
        "--port",
        str(port),
        port=port,
        extra_env={
            # Each X-Forwarded-For address has its own anonymous bucket of 5 a minute.
            "MODELPORT_TRUSTED_PROXIES": "127.0.0.1",
            "MODELPORT_RATE_LIMIT_ANONYMOUS_PER_MINUTE": "5",
        },
    )
    server.wait_until_ready()
    url = f"{server.base_url}/predict"

    def predict_as(address: str) -> Callable[[httpx.Client], int]:
        return lambda client: (
            client.post(url, json=WINE_ROW, headers={"X-Forwarded-For": address}).status_code
        )

    # Rounds of 80 predictions from 16 fresh addresses, 5 each: all within their limits. A
    # worker still loading its models takes no connections, so send rounds until both served
    # some: only then does the sum across workers mean something.
    sent = 0
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while sent == 0 or workers_that_predicted(wine_home / "run") < 2:
        assert time.monotonic() < deadline, "the second worker never served a prediction"
        addresses = [f"198.51.{100 + sent // 80}.{n % 16}" for n in range(80)]
        assert spread([predict_as(address) for address in addresses]) == [200] * 80
        sent += 80

    # Each worker listens on a socket of its own (the kernel spreads connections over them),
    # and the main process on none.
    assert listening_sockets(port) == 2

    # Every scrape, whichever worker answers it, counts the predictions of both.
    def scrape(client: httpx.Client) -> int:
        text = client.get(f"{server.base_url}/metrics", headers=OPERATOR).text
        found = PREDICTED.search(text)
        return int(float(found.group(1))) if found else 0

    assert spread([scrape] * 8) == [sent] * 8

    # One address, 20 requests racing over both workers: one bucket, so exactly 5 pass.
    statuses = spread([predict_as("203.0.113.7")] * 20)
    assert sorted(statuses) == [200] * 5 + [429] * 15

    assert_clean_exit(server, server.terminate())
    assert not list((wine_home / "run").glob("*/serve-*"))  # the run's directory is gone


def listening_sockets(port: int) -> int:
    """Sockets in the LISTEN state on ``port`` (IPv4 loopback), from the kernel's table."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            count += 1
    return count


def test_the_default_is_one_worker_per_usable_core(tmp_path: Path) -> None:
    # Pinned to one CPU, a process on a bigger machine still defaults to one worker.
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "from modelport.settings import Settings; print(Settings().workers)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env["MODELPORT_VAR_DIR"] = str(tmp_path)
    pinned = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert pinned.stdout.strip() == "1"
    code = "from modelport.settings import Settings; print(Settings().workers)"
    free = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert int(free.stdout) == min(usable_cores(), 64)  # the affinity, within any CPU quota
