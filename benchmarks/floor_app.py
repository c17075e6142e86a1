"""The bare floor: one FastAPI route calling ONNX Runtime, nothing else.

No validation, authentication, rate limit, prediction log or middleware: what any server built on
FastAPI + ONNX Runtime costs at least for the same model. It takes modelport's request bodies (one
flat wine row, or ``{"inputs": [rows]}``) so the same load files drive both. Started by
``servers.floor`` with ``BENCH_FLOOR_ONNX`` (the model file) and ``BENCH_FLOOR_FEATURES`` (input
columns in order); imports nothing from modelport, so its memory is the floor's too.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
import orjson
from fastapi import FastAPI, Request, Response

FEATURES = os.environ["BENCH_FLOOR_FEATURES"].split(",")

_options = ort.SessionOptions()
_options.intra_op_num_threads = 1  # as modelport runs it (MODELPORT_INFERENCE_THREADS=1)
_options.inter_op_num_threads = 1
session = ort.InferenceSession(
    os.environ["BENCH_FLOOR_ONNX"], _options, providers=["CPUExecutionProvider"]
)
INPUT = session.get_inputs()[0].name

app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> Response:
    body = orjson.loads(await request.body())
    rows = body.get("inputs", [body])
    features = np.array([[row[name] for name in FEATURES] for row in rows], dtype=np.float32)
    (output,) = session.run(None, {INPUT: features})
    values = np.asarray(output, dtype=np.float64).ravel().tolist()
    return Response(
        orjson.dumps({"predictions": [{"predicted_quality": value} for value in values]}),
        media_type="application/json",
    )


@app.get("/ready")
async def ready() -> dict[str, str]:
    return {"status": "ok"}
