"""Soak: the whole system at saturation for a long while, and what it leaves behind.

    make soak                       # 10 minutes (SOAK_SECONDS=600)
    make soak SOAK_SECONDS=120      # a shorter run

Two `modelport serve` processes and a job runner (tests/system/harness.py) on a fresh
PostgreSQL database, a private redis-server and a moto S3 server; threads send wine predictions
with an API key as fast as the servers answer. Reported: answers by status, transport errors,
p99, and per process the RSS (goal: under 10 % growth from the end of the warm-up to the end),
open file descriptors, and the database's connections, before and after; then whether every 200
answer has its prediction log row. Exits 1 when a request failed, a log row is missing or RSS
grew past the goal. Needs PostgreSQL (MODELPORT_TEST_DATABASE_URL, default the local `test`
database, used only to create and drop a scratch database) and redis-server.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the harness lives with the tests

from modelport.builtin.wine import read_wine_csv, train_wine  # noqa: E402
from modelport.builtin.wine_data import locate_wine_csv  # noqa: E402
from modelport.settings import Settings  # noqa: E402
from tests.helpers import wait_until  # noqa: E402
from tests.system.harness import (  # noqa: E402
    Load,
    LoadReport,
    System,
    process_figures,
    running_system,
)

DEFAULT_DATABASE = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
RSS_GROWTH_GOAL = 0.10
SAMPLE_SECONDS = 30.0


def figures(system: System) -> dict[str, Any]:
    processes = {name: process_figures(s.process.pid) for name, s in system.processes.items()}
    return {"processes": processes, "database_connections": system.database.connections()}


def show(label: str, taken: dict[str, Any]) -> None:
    parts = [
        f"{name}: RSS {p['rss_bytes'] / 1_048_576:.1f} MiB, {p['open_fds']} fds"
        for name, p in taken["processes"].items()
    ]
    print(f"{label}: {'; '.join(parts)}; database connections {taken['database_connections']}")


def growth(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    return {
        name: after["processes"][name]["rss_bytes"] / p["rss_bytes"] - 1
        for name, p in before["processes"].items()
        if p["rss_bytes"]
    }


def soak(system: System, seconds: float, warmup: float, threads: int) -> int:
    print(f"warm-up {warmup:g} s with {threads} threads")
    with Load(system, "warmup", threads=threads, max_seconds=warmup + 60):
        time.sleep(warmup)
    before = figures(system)
    show("before", before)

    load = Load(system, "soak", threads=threads, max_seconds=seconds + 60).start()
    started = time.monotonic()
    while (elapsed := time.monotonic() - started) < seconds:
        time.sleep(min(SAMPLE_SECONDS, seconds - elapsed))
        print(f"  {time.monotonic() - started:5.0f} s: {load.statuses()}")
    report: LoadReport = load.stop()
    after = figures(system)
    show("after", after)

    def all_logged() -> bool:
        return system.database.logged_successes("soak") >= report.ok

    wait_until(all_logged, "every 200 answer logged", 120, interval=1.0)
    rows = system.database.logged_successes("soak")
    grew = growth(before, after)
    errors = report.sent - report.ok
    print(f"\nsoak {seconds:g} s: {report.summary()}")
    print("RSS growth: " + ", ".join(f"{name} {value:+.1%}" for name, value in grew.items()))
    print(f"log rows {rows} for {report.ok} answers (lost: {report.ok - rows})")
    print(f"errors (anything but 200): {errors}")
    failed = errors > 0 or rows != report.ok or any(g > RSS_GROWTH_GOAL for g in grew.values())
    print("verdict:", "FAILED" if failed else "ok")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 600)))
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args()

    database = os.environ.get("MODELPORT_TEST_DATABASE_URL", DEFAULT_DATABASE)
    with tempfile.TemporaryDirectory(prefix="modelport-soak-") as root:
        print("training the wine model")
        csv = locate_wine_csv(Settings(var_dir=Path(root) / "data"))
        trained = train_wine(read_wine_csv(csv))
        print(f"starting two servers and a job runner in {root}")
        with running_system(Path(root), database, trained) as system:
            return soak(system, args.seconds, args.warmup, args.threads)


if __name__ == "__main__":
    sys.exit(main())
