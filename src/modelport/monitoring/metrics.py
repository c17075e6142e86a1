"""Prometheus metrics: what is counted, and the exposition GET /metrics (monitoring.health)
gives operators only, since series are labelled with model names.

With several workers, ``modelport serve`` sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory
per run) before any worker imports the client: each worker then writes its values to files
there, and the exposition merges every worker's files, so a counter is the sum over workers
whichever worker answers the scrape. Gauges say how they merge (``multiprocess_mode``; the
prediction log's are ``livesum``: the sum over the workers alive now).
"""

from __future__ import annotations

import contextlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess

_MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"

PREDICTIONS = Counter(
    "modelport_predictions_total",
    "Prediction requests by model and outcome",
    ["model", "status"],
)
PREDICTION_SECONDS = Histogram(
    "modelport_prediction_seconds",
    "Time to answer a prediction request, validation and inference included",
    ["model"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
BATCH_ROWS = Histogram(
    "modelport_batch_rows",
    "Rows per runtime call, once concurrent requests for a model version are coalesced",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
BATCH_REQUESTS = Histogram(
    "modelport_batch_requests",
    "Requests coalesced into one runtime call",
    ["model"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
BATCH_REFUSALS = Counter(
    "modelport_batch_refusals_total",
    "Requests answered without running: queue full (503) or deadline passed (504)",
    ["model", "reason"],
)


# Labelled series are looked up once per process: ``labels()`` takes a lock and builds a key
# on every call, a cost paid several times on every prediction. Labels are registered model
# names and a few fixed words, so the set stays small.
_SERIES = 4096


@lru_cache(maxsize=_SERIES)
def _prediction_series(model: str, status: str) -> tuple[Any, Any]:
    return PREDICTIONS.labels(model=model, status=status), PREDICTION_SECONDS.labels(model=model)


@lru_cache(maxsize=_SERIES)
def _batch_series(model: str) -> tuple[Any, Any]:
    return BATCH_ROWS.labels(model=model), BATCH_REQUESTS.labels(model=model)


def count_prediction(model: str, status: str, seconds: float) -> None:
    """One prediction request answered (``status``: success, invalid_input or error)."""
    count, duration = _prediction_series(model, status)
    count.inc()
    duration.observe(seconds)


def count_batch(model: str, rows: int, requests: int) -> None:
    """One runtime call of ``rows`` rows from ``requests`` coalesced requests."""
    batch_rows, batch_requests = _batch_series(model)
    batch_rows.observe(rows)
    batch_requests.observe(requests)


def _multiprocess_dir() -> str | None:
    return os.environ.get(_MULTIPROCESS_DIR) or None


def exposition() -> bytes:
    """Every metric in the text format: this process's, or every worker's merged."""
    directory = _multiprocess_dir()
    if directory is None:
        return generate_latest()
    forget_dead_workers(directory)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    return generate_latest(registry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def forget_dead_workers(directory: str) -> None:
    """Drop the live gauges of workers that are gone (stopped, or killed and replaced): the
    server does not tell the app when a worker dies, so a scrape checks. Counters of a dead
    worker stay: what it counted did happen."""
    for path in Path(directory).glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            multiprocess.mark_process_dead(int(pid), directory)


def worker_stopped() -> None:
    """This worker is shutting down: its live gauges no longer count."""
    directory = _multiprocess_dir()
    if directory is not None:
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(os.getpid(), directory)
