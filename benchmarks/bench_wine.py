"""Wine-quality serving throughput: HTTP through ``modelport serve`` vs ONNX Runtime in-process.

Run with ``make bench`` (or ``.venv/bin/python benchmarks/bench_wine.py --help``). It trains the
built-in model into a temporary var dir, starts a real server, and sends single-row predictions
at several concurrency levels from one asyncio client. The in-process line is the ceiling: the
same rows, one row per ``session.run`` call, with the server's intra-op thread count.

The client shares the machine with the server, so at high concurrency part of what is measured
is the client itself; read the numbers as "what this box does end to end", not as a limit of
the server alone. Other MODELPORT_* variables (log level, inference threads) are passed through.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np

from modelport.builtin.wine import (
    FEATURE_NAMES,
    TrainedWine,
    read_wine_csv,
    register_wine,
    train_wine,
)
from modelport.builtin.wine_data import locate_wine_csv
from modelport.db.engine import create_engine, create_session_factory
from modelport.db.migrate import upgrade
from modelport.runtimes.onnx import OnnxRuntime
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store

MODELPORT = Path(sys.executable).with_name("modelport")
READY_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True)
class Measurement:
    label: str
    requests: int
    errors: int
    seconds: float
    latencies_ms: np.ndarray
    server_ms: np.ndarray  # x-process-time-ms: time inside the server; empty in-process

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else 0.0

    def server_p50(self) -> str:
        return f"{np.percentile(self.server_ms, 50):.2f}" if len(self.server_ms) else "-"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each level")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 16, 64],
        help="comma-separated in-flight request counts (default 1,16,64)",
    )
    parser.add_argument("--data", type=Path, help="winequality-red.csv (default: locate it)")
    return parser.parse_args()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def prepare(var: Path, data: Path | None) -> tuple[Settings, TrainedWine]:
    """Train the wine model and register it as production in a fresh SQLite registry."""
    settings = Settings(
        var_dir=var,
        database_url=f"sqlite+aiosqlite:///{var / 'modelport.db'}",
        artifact_store=(var / "artifacts").as_uri(),
    )
    var.mkdir(parents=True, exist_ok=True)
    upgrade(settings.database_url)
    trained = train_wine(read_wine_csv(data or locate_wine_csv(settings)))

    async def register() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                await register_wine(session, open_artifact_store(settings), trained)
                await session.commit()
        finally:
            await engine.dispose()

    asyncio.run(register())
    return settings, trained


@contextmanager
def running_server(settings: Settings, port: int, workers: int, log: Path) -> Iterator[str]:
    env = dict(os.environ)
    env.update(
        MODELPORT_VAR_DIR=str(settings.var_dir),
        MODELPORT_DATABASE_URL=settings.database_url.get_secret_value(),
        MODELPORT_ARTIFACT_STORE=settings.artifact_store,
        # The load comes from one address; the anonymous rate limit would measure itself.
        MODELPORT_RATE_LIMIT_ANONYMOUS_PER_MINUTE=env.get(
            "MODELPORT_RATE_LIMIT_ANONYMOUS_PER_MINUTE", "100000000"
        ),
    )
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(MODELPORT), "serve", "--port", str(port), "--workers", str(workers)],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(process, base_url, log)
        yield base_url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_until_ready(process: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"modelport serve exited early:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(f"{base_url}/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"modelport serve was not ready after {READY_TIMEOUT_SECONDS:.0f} s")


async def http_level(
    base_url: str, rows: list[dict[str, float]], concurrency: int, duration: float, warmup: float
) -> Measurement:
    # One client (one keep-alive connection) per simulated user: a single httpx pool with many
    # connections spends more CPU on its own bookkeeping than the server spends per request.
    tls = ssl.create_default_context()  # unused over http://, but built once, not per client
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=base_url, timeout=30, verify=tls)
            )
            for _ in range(concurrency)
        ]
        latencies: list[float] = []
        server: list[float] = []

        async def user(offset: int, until: float, record: bool) -> int:
            client, errors, index = clients[offset], 0, offset
            while time.perf_counter() < until:
                started = time.perf_counter()
                response = await client.post("/predict", json=rows[index % len(rows)])
                if record:
                    latencies.append((time.perf_counter() - started) * 1000)
                    server.append(float(response.headers.get("x-process-time-ms", "nan")))
                errors += response.status_code != 200
                index += concurrency
            return errors

        warm_until = time.perf_counter() + warmup
        await asyncio.gather(*(user(i, warm_until, False) for i in range(concurrency)))

        started = time.perf_counter()
        until = started + duration
        errors = await asyncio.gather(*(user(i, until, True) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
    return Measurement(
        f"HTTP, concurrency {concurrency}",
        len(latencies),
        sum(errors),
        elapsed,
        np.array(latencies),
        np.array(server),
    )


def in_process_level(trained: TrainedWine, threads: int, duration: float) -> Measurement:
    runtime = OnnxRuntime(trained.onnx_bytes, intra_op_threads=threads)
    rows = [row.reshape(1, -1) for row in trained.data.features.astype(np.float32)]
    for row in rows[:200]:  # warm-up
        runtime.predict(row)
    latencies: list[float] = []
    started = time.perf_counter()
    until = started + duration
    index = 0
    while time.perf_counter() < until:
        call_started = time.perf_counter()
        runtime.predict(rows[index % len(rows)])
        latencies.append((time.perf_counter() - call_started) * 1000)
        index += 1
    elapsed = time.perf_counter() - started
    return Measurement(
        f"in-process ONNX Runtime, {threads} thread(s)",
        len(latencies),
        0,
        elapsed,
        np.array(latencies),
        np.array([]),
    )


def logged_rows(settings: Settings) -> int:
    with sqlite3.connect(settings.var_dir / "modelport.db") as connection:
        (count,) = connection.execute("SELECT count(*) FROM predictions").fetchone()
    return int(count)


def print_table(results: list[Measurement], baseline: Measurement) -> None:
    header = (
        f"{'':<36} {'requests':>9} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'server p50':>10} {'errors':>7} {'HTTP/in-process':>16}"
    )
    print(header)
    print("-" * len(header))
    for result in [*results, baseline]:
        ratio = "" if result is baseline else f"{result.per_second / baseline.per_second:.1%}"
        print(
            f"{result.label:<36} {result.requests:>9} {result.per_second:>9.0f} "
            f"{result.percentile(50):>8.2f} {result.percentile(99):>8.2f} "
            f"{result.server_p50():>10} {result.errors:>7} {ratio:>16}"
        )


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="modelport-bench-") as temporary:
        var = Path(temporary) / "var"
        print("training and registering the wine model ...", flush=True)
        settings, trained = prepare(var, args.data)
        threads = Settings(var_dir=var).inference_threads  # what the server will use
        rows = [
            dict(zip(FEATURE_NAMES, row, strict=True)) for row in trained.data.features.tolist()
        ]
        results: list[Measurement] = []
        port = free_port()
        with running_server(settings, port, args.workers, Path(temporary) / "serve.log") as url:
            for concurrency in args.concurrency:
                print(f"HTTP at concurrency {concurrency} ...", flush=True)
                results.append(
                    asyncio.run(http_level(url, rows, concurrency, args.duration, args.warmup))
                )
        print("in-process ONNX Runtime ...", flush=True)
        baseline = in_process_level(trained, threads, args.duration)

        print()
        print(
            f"modelport wine benchmark: {args.workers} worker(s), {args.duration:g} s per level "
            f"after {args.warmup:g} s warm-up, {os.cpu_count()} CPU(s), single-row requests"
        )
        print_table(results, baseline)
        print(
            "\nserver p50: time inside the server (x-process-time-ms); the rest of a request's "
            "latency is the client and the network stack on the same CPUs."
        )
        print(f"prediction log rows in the database after shutdown: {logged_rows(settings)}")


if __name__ == "__main__":
    main()
