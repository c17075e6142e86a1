"""Validation of prediction rows: rows/s of the vectorised checks against the Pydantic-only path.

Run with ``.venv/bin/python benchmarks/bench_validation.py``. Both paths take the same parsed
JSON rows of the wine model and end with the float32 matrix ONNX Runtime is fed:

- before: every row through a strict Pydantic model, then a float64 matrix, then float32;
- after: ``serving.validation.validate_rows`` (numpy checks; Pydantic only words errors).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from pydantic import TypeAdapter

from modelport.builtin.wine import WINE_SIGNATURE
from modelport.serving.validation import Rows, extract_rows, validate_rows

ROW = {spec.name: spec.example for spec in WINE_SIGNATURE.inputs}


ADAPTER = TypeAdapter(list[WINE_SIGNATURE.row_model()])  # type: ignore[misc]


def pydantic_only(rows: Rows) -> np.ndarray:
    """What serving did before: Pydantic validates, then the matrix is built twice."""
    ADAPTER.validate_python(rows.items)
    names = WINE_SIGNATURE.input_names
    matrix = np.array([[row[name] for name in names] for row in rows.items], dtype=np.float64)
    return np.ascontiguousarray(matrix, dtype=np.float32)


def vectorised(rows: Rows) -> np.ndarray:
    return validate_rows(WINE_SIGNATURE, rows, np.float32)


def rows_per_second(check: Callable[[Rows], np.ndarray], rows: Rows, seconds: float) -> float:
    check(rows)  # warm caches (the Pydantic model, the signature's bounds)
    done = 0
    started = time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        for _ in range(max(1, 1000 // len(rows.items))):
            check(rows)
            done += len(rows.items)
    return done / elapsed


def best_of(rounds: int, seconds: float, rows: Rows) -> tuple[float, float]:
    """Best rows/s of each path over alternating rounds: other processes on the machine slow
    some rounds down, and alternating spreads that over both paths."""
    before = after = 0.0
    for _ in range(rounds):
        before = max(before, rows_per_second(pydantic_only, rows, seconds / rounds))
        after = max(after, rows_per_second(vectorised, rows, seconds / rounds))
    return before, after


def body(count: int) -> Any:
    rng = np.random.default_rng(0)
    if count == 1:
        return orjson.loads(orjson.dumps(ROW))  # one flat JSON object
    spread = [  # anywhere within each field's bounds
        {s.name: round(float(rng.uniform(s.minimum, s.maximum)), 4) for s in WINE_SIGNATURE.inputs}
        for _ in range(count)
    ]
    return orjson.loads(orjson.dumps({"inputs": spread}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per line")
    args = parser.parse_args()
    print(f"{'rows per request':>16} | {'before (rows/s)':>16} | {'after (rows/s)':>16} | speed-up")
    for count in (1, 1000):
        rows = extract_rows(body(count), 1000, allow_batch=True)
        assert np.array_equal(pydantic_only(rows), vectorised(rows))
        before, after = best_of(args.rounds, args.seconds, rows)
        print(f"{count:>16} | {before:>16,.0f} | {after:>16,.0f} | {after / before:.1f}x")


if __name__ == "__main__":
    main()
