"""Prometheus metrics: what is counted. GET /metrics (monitoring.health) exposes it to
operators only, since series are labelled with model names."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

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
