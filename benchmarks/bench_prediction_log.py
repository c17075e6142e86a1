"""Prediction-log writer micro-benchmark: rows/s into SQLite and PostgreSQL, and its cost to the
event loop.

    .venv/bin/python benchmarks/bench_prediction_log.py [--rows 20000] [--baseline-rev REV]

For each database it records ``--rows`` wine-sized rows (the 11 inputs and the one output the
serving path logs), then flushes them, and reports:

- ``record us/row``: CPU time the request path spends in ``record()`` per row;
- ``flush rows/s``: rows written per second of wall time by ``flush()``;
- ``flush loop CPU us/row``: CPU time of the event-loop thread per row written by ``flush()``
  (encoding, driver work, anything holding the GIL there); the database's own work and driver
  threads excluded;
- ``total loop CPU us/row``: the two together, what logging one prediction costs the loop;
- ``longest stall ms``: the worst lateness of a 1 ms ticker running on the loop during the
  flush, i.e. the longest time the loop could not answer a request.

``--baseline-rev`` also measures the writer as it was in that git revision (loaded from
``git show``), so the old and new writer run side by side on the same machine. PostgreSQL comes
from ``MODELPORT_BENCH_DATABASE_URL`` (default ``postgresql+asyncpg://postgres@127.0.0.1/test``);
the benchmark works in a scratch database it creates there and drops afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from sqlalchemy import make_url, text

from modelport.db.engine import create_engine, create_session_factory, is_sqlite
from modelport.db.migrate import upgrade

REPO = Path(__file__).resolve().parents[1]
WRITER_PATH = "src/modelport/monitoring/prediction_log.py"
WINE_INPUTS = {
    "fixed_acidity": 7.4,
    "volatile_acidity": 0.7,
    "citric_acid": 0.0,
    "residual_sugar": 1.9,
    "chlorides": 0.076,
    "free_sulfur_dioxide": 11.0,
    "total_sulfur_dioxide": 34.0,
    "density": 0.9978,
    "pH": 3.51,
    "sulphates": 0.56,
    "alcohol": 9.4,
}


@dataclass(frozen=True)
class Result:
    writer: str
    database: str
    record_us: float
    rows_per_second: float
    loop_cpu_us: float
    stall_ms: float


def load_writer(revision: str | None) -> ModuleType:
    """This tree's writer, or the one at ``revision`` as its own module."""
    if revision is None:
        from modelport.monitoring import prediction_log

        return prediction_log
    source = subprocess.run(
        ["git", "show", f"{revision}:{WRITER_PATH}"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout
    folder = Path(tempfile.mkdtemp(prefix="bench-writer-"))
    path = folder / f"prediction_log_{revision.replace('/', '_')}.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


async def empty(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text("DELETE FROM predictions"))
    finally:
        await engine.dispose()


async def ticker(stalls: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0.001)
        stalls.append(loop.time() - before - 0.001)


async def measure_once(module: ModuleType, url: str, rows: int, batch: int, spool: Path) -> Result:
    await empty(url)
    engine = create_engine(url)
    try:
        writer = module.PredictionLogWriter(
            create_session_factory(engine),
            spool_path=spool,
            buffer_size=rows + 1,
            batch_size=batch,
            **({"buffer_bytes": 2 * 1024**3} if hasattr(module, "BUFFERED_BYTES") else {}),
        )
        entries = [
            module.LogEntry(
                request_id=uuid.uuid4().hex,
                model_name="wine-quality",
                model_version="1",
                inputs=dict(WINE_INPUTS),
                outputs=[{"predicted_quality": 5.4321}],
                latency_ms=0.8,
                status="success",
                client_address="127.0.0.1",
            )
            for _ in range(rows)
        ]
        started = time.thread_time()  # CPU time, not wall: the machine may be shared
        for entry in entries:
            writer.record(entry)
        record_seconds = time.thread_time() - started

        stalls: list[float] = []
        stop = asyncio.Event()
        tick = asyncio.create_task(ticker(stalls, stop))
        await asyncio.sleep(0.01)
        cpu, wall = time.thread_time(), time.perf_counter()
        await writer.flush()
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
        stop.set()
        await tick
        assert writer.written == rows, (writer.written, rows)
    finally:
        await engine.dispose()
    return Result(
        writer="",
        database="sqlite" if is_sqlite(url) else "postgresql",
        record_us=record_seconds / rows * 1e6,
        rows_per_second=rows / wall,
        loop_cpu_us=cpu / rows * 1e6,
        stall_ms=max(stalls, default=0.0) * 1000,
    )


def measure(label: str, module: ModuleType, url: str, rows: int, batch: int, repeat: int) -> Result:
    with tempfile.TemporaryDirectory() as folder:
        runs = [
            asyncio.run(measure_once(module, url, rows, batch, Path(folder) / "spool.jsonl"))
            for _ in range(repeat)
        ]
    return Result(
        writer=label,
        database=runs[0].database,
        record_us=statistics.median(r.record_us for r in runs),
        rows_per_second=statistics.median(r.rows_per_second for r in runs),
        loop_cpu_us=statistics.median(r.loop_cpu_us for r in runs),
        stall_ms=statistics.median(r.stall_ms for r in runs),
    )


async def admin(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000, help="rows per measurement")
    parser.add_argument("--batch", type=int, default=500, help="rows per batch")
    parser.add_argument("--repeat", type=int, default=3, help="runs per line (median shown)")
    parser.add_argument("--baseline-rev", help="also measure the writer at this git revision")
    parser.add_argument(
        "--databases", default="sqlite,postgresql", help="comma-separated: sqlite,postgresql"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    writers: list[tuple[str, Any]] = []
    if args.baseline_rev:
        writers.append((f"at {args.baseline_rev}", load_writer(args.baseline_rev)))
    writers.append(("this tree", load_writer(None)))

    results: list[Result] = []
    wanted = args.databases.split(",")
    with tempfile.TemporaryDirectory() as folder:
        if "sqlite" in wanted:
            url = f"sqlite+aiosqlite:///{folder}/bench.db"
            upgrade(url)
            for label, module in writers:
                results.append(measure(label, module, url, args.rows, args.batch, args.repeat))
    if "postgresql" in wanted:
        base = make_url(
            os.environ.get(
                "MODELPORT_BENCH_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
            )
        )
        scratch = f"bench_log_{uuid.uuid4().hex[:8]}"
        asyncio.run(admin(base.render_as_string(False), f'CREATE DATABASE "{scratch}"'))
        url = base.set(database=scratch).render_as_string(hide_password=False)
        try:
            upgrade(url)
            for label, module in writers:
                results.append(measure(label, module, url, args.rows, args.batch, args.repeat))
        finally:
            asyncio.run(
                admin(base.render_as_string(False), f'DROP DATABASE "{scratch}" WITH (FORCE)')
            )

    print(
        f"{args.rows} rows, batches of {args.batch}, median of {args.repeat} runs, "
        f"{os.cpu_count()} CPUs\n"
    )
    print(
        "| writer | database | flush rows/s | record us/row | flush loop CPU us/row "
        "| total loop CPU us/row | longest stall ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.writer} | {r.database} | {r.rows_per_second:,.0f} | {r.record_us:.1f} | "
            f"{r.loop_cpu_us:.1f} | {r.record_us + r.loop_cpu_us:.1f} | {r.stall_ms:.1f} |"
        )


if __name__ == "__main__":
    main()
