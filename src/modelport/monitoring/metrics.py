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
