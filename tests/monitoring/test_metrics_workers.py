"""/metrics with several workers: every worker's counters summed, and the live gauges of a
worker that has gone no longer counted (real worker processes writing real metric files)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from modelport.monitoring.metrics import exposition
from modelport.workers import PROMETHEUS_DIR_ENV

WORKER = """
import sys
from modelport.monitoring.prediction_log import BUFFERED_ROWS, WRITTEN_ROWS
BUFFERED_ROWS.set(int(sys.argv[1]))
WRITTEN_ROWS.inc(int(sys.argv[2]))
print("ready", flush=True)
sys.stdin.readline()  # stays alive until told to go
"""


def start_worker(directory: Path, buffered: int, written: int) -> subprocess.Popen[str]:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(buffered), str(written)],
        env={**_env(), PROMETHEUS_DIR_ENV: str(directory)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None and worker.stdout.readline().strip() == "ready"
    return worker


def stop(worker: subprocess.Popen[str]) -> None:
    assert worker.stdin is not None
    worker.stdin.write("\n")
    worker.stdin.close()
    assert worker.wait(timeout=60) == 0


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != PROMETHEUS_DIR_ENV}


def value(text: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_counters_sum_over_workers_and_gone_workers_leave_the_live_gauges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROMETHEUS_DIR_ENV, str(tmp_path))
    first = start_worker(tmp_path, buffered=5, written=3)
    second = start_worker(tmp_path, buffered=7, written=4)
    try:
        text = exposition().decode()
        assert value(text, "modelport_prediction_log_written_rows_total") == 7
        assert value(text, "modelport_prediction_log_buffered_rows") == 12
        stop(first)
        text = exposition().decode()
        # What the stopped worker wrote did happen; what it held in memory is gone with it.
        assert value(text, "modelport_prediction_log_written_rows_total") == 7
        assert value(text, "modelport_prediction_log_buffered_rows") == 7
    finally:
        for worker in (first, second):
            if worker.poll() is None:
                stop(worker)
