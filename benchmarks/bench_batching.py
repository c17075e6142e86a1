"""Adaptive batching in-process: what coalescing and running on the event loop buy, and cost.

Run with ``.venv/bin/python benchmarks/bench_batching.py``. It trains the built-in wine model
(a few seconds), then ``c`` concurrent callers on one event loop each validate a one-row
request, run it and post-process the answer, as ``PredictionService`` does, by four routes:

- thread per request: every call hops to a worker thread (what serving did before batching);
- no coalescing: the batcher with max_batch_size 1 (quick ONNX models stay on the loop);
- batched, pool only: coalesced, but every batch hops to the inference pool;
- batched (default): coalesced; batches expected to take under 0.5 ms run on the loop.

Then one 1,000-row request, directly and through the batcher. HTTP, auth and the log are left
out: this isolates the part the batcher changes (``make bench`` measures the whole server).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio
import numpy as np

from modelport.builtin.wine import WINE_SIGNATURE, read_wine_csv, train_wine
from modelport.builtin.wine_data import locate_wine_csv
from modelport.registry.service import VersionRef
from modelport.runtimes.onnx import OnnxRuntime
from modelport.serving.batcher import Batcher, BatchPolicy
from modelport.serving.model_cache import LoadedModel
from modelport.serving.service import postprocess
from modelport.serving.validation import Rows, validate_rows
from modelport.settings import Settings

Route = Callable[[np.ndarray], Awaitable[object]]


def wine_model() -> tuple[LoadedModel, np.ndarray]:
    data = read_wine_csv(locate_wine_csv(Settings()))
    trained = train_wine(data)
    runtime = OnnxRuntime(trained.onnx_bytes)
    ref = VersionRef(
        model_name="wine-quality",
        version=1,
        version_id=uuid.uuid4(),
        artifact_uri="file:///not-read",
        sha256="0" * 64,
        flavor="onnx",
        signature=WINE_SIGNATURE,
    )
    return LoadedModel(ref=ref, runtime=runtime), data.features


async def callers(route: Route, rows: list[dict[str, float]], concurrency: int, seconds: float):
    """Requests/s and p50/p99 ms of ``concurrency`` callers sending one row at a time."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def caller(offset: int) -> None:
        i = offset
        while time.perf_counter() < stop:
            row = rows[i % len(rows)]
            started = time.perf_counter()
            features = validate_rows(WINE_SIGNATURE, Rows([row], ("body",), False), np.float32)
            outputs = await route(features)
            postprocess(WINE_SIGNATURE, outputs, 1)  # type: ignore[arg-type]
            latencies.append(time.perf_counter() - started)
            i += concurrency

    began = time.perf_counter()
    await asyncio.gather(*(caller(k) for k in range(concurrency)))
    elapsed = time.perf_counter() - began
    ordered = sorted(latencies)
    return (
        len(ordered) / elapsed,
        ordered[len(ordered) // 2] * 1000,
        ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
    )


def routes(model: LoadedModel) -> dict[str, Callable[[], tuple[Route, Callable[[], None]]]]:
    def thread_per_request() -> tuple[Route, Callable[[], None]]:
        async def route(features: np.ndarray) -> object:
            return await anyio.to_thread.run_sync(model.runtime.predict_outputs, features)

        return route, lambda: None

    def batcher(max_batch_size: int, inline_seconds: float | None = None):
        def make() -> tuple[Route, Callable[[], None]]:
            policy = BatchPolicy(max_batch_size, 0.0, max_queue=10_000)
            extra = {} if inline_seconds is None else {"inline_seconds": inline_seconds}
            batching = Batcher(policy, pool_threads=2, **extra)

            async def route(features: np.ndarray) -> object:
                return await batching.run(model, features, None)

            return route, batching.close

        return make

    return {
        "thread per request (before)": thread_per_request,
        "no coalescing (size 1)": batcher(1),
        "batched, pool only": batcher(64, inline_seconds=0.0),
        "batched (default)": batcher(64),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    args = parser.parse_args()
    model, features = wine_model()
    names = WINE_SIGNATURE.input_names
    rows = [dict(zip(names, map(float, line), strict=True)) for line in features[:500]]

    print(f"{'route':<28} | {'c':>3} | {'req/s':>8} | {'p50 ms':>7} | {'p99 ms':>7}")
    for label, make in routes(model).items():
        for concurrency in args.concurrency:
            route, close = make()
            try:
                rate, p50, p99 = asyncio.run(callers(route, rows, concurrency, args.seconds))
            finally:
                close()
            print(f"{label:<28} | {concurrency:>3} | {rate:>8,.0f} | {p50:>7.2f} | {p99:>7.2f}")

    big = np.ascontiguousarray(features[:1000], dtype=np.float32)
    direct = [_timed(lambda: model.runtime.predict_outputs(big)) for _ in range(20)]
    route, close = routes(model)["batched (default)"]()

    async def through_batcher() -> list[float]:
        spans = []
        for _ in range(20):
            started = time.perf_counter()
            await route(big)
            spans.append(time.perf_counter() - started)
        return spans

    try:
        batched = asyncio.run(through_batcher())
    finally:
        close()
    print()
    print(
        f"one 1,000-row request: ONNX Runtime directly {1000 / statistics.median(direct):,.0f}"
        f" rows/s, through the batcher {1000 / statistics.median(batched):,.0f} rows/s"
    )


def _timed(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
