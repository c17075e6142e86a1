"""The child process of a model's trial: ``python -m modelport.ingest.trial FLAVOR ROWS MEMORY``.

Reads a model file on stdin, limits its own address space to what it holds now plus ``MEMORY``
bytes, loads the file with the runtime that serves ``FLAVOR``, runs one inference of ``ROWS``
rows of zeros (one row for inputs of images or other tensors of more than two dimensions, which
are classified one at a time) and prints one JSON line: the peak resident memory the load and
the run took above what the child held before, or the error. ``ingest.safety.measure_in_child``
starts it, kills it past the time limit, and reads that line.

Only the standard library is imported before the limit is set, and the native libraries'
optional integrations (pandas, scikit-learn, ...) are kept out for XGBoost and LightGBM, so the
child starts in well under a second.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import resource
import sys
import time
from typing import Any

# Optional integrations XGBoost and LightGBM import when present; loading a booster needs none.
_OPTIONAL = ("sklearn", "pandas", "pyarrow", "polars", "dask", "cudf", "cupy", "datatable")
_OUT_OF_MEMORY = ("MemoryError", "bad_alloc", "Cannot allocate memory", "Failed to allocate")
_OUT_OF_MEMORY_TEXT = ("out of memory", "failed to allocate", "allocation failed")


def main(argv: list[str]) -> int:
    flavor, rows, memory = argv[0], int(argv[1]), int(argv[2])
    data = sys.stdin.buffer.read()
    if flavor in ("xgboost", "lightgbm"):
        for name in _OPTIONAL:
            sys.modules[name] = None  # type: ignore[assignment]
    with contextlib.suppress(OSError):
        os.nice(10)  # the trial yields the CPU to the server answering its callers
    import numpy as np

    from modelport.runtimes.loader import load_runtime

    _import_library(flavor)  # the library's own memory is the server's, not the model's
    baseline = _resident_bytes()
    _limit_address_space(memory)
    started = time.monotonic()
    try:
        runtime = load_runtime(flavor, data, 1)
    except BaseException as exc:  # reported to the parent, whatever it is
        return _report_error(exc)
    del data
    try:
        shape, dtype = _batch_shape(runtime, rows)
        runtime.predict_outputs(np.zeros(shape, dtype=dtype))
        run_error = None
    except BaseException as exc:
        if _is_out_of_memory(exc):
            return _report_error(exc)
        # A model may refuse zeros (the server answers that caller 4xx); what it took counts.
        run_error = _text(exc)
    report: dict[str, Any] = {
        "memory_bytes": max(_peak_resident_bytes() - baseline, 0),
        "seconds": round(time.monotonic() - started, 3),
    }
    if run_error:
        report["run_error"] = run_error
    _check_dumps(runtime)
    print(json.dumps(report), flush=True)
    return 0


def _import_library(flavor: str) -> None:
    if flavor in ("xgboost", "lightgbm"):
        importlib.import_module(flavor)
    elif flavor in ("sklearn", "sklearn-pickle"):
        from modelport.ingest.safety import trusted_types

        trusted_types()  # imports scikit-learn's estimators, as loading a skops file does


def _batch_shape(runtime: Any, rows: int) -> tuple[tuple[int, ...], Any]:
    """``(rows, features)`` for tables; one item of a higher-dimensional input (an image)."""
    dtype = getattr(runtime, "input_dtype", None) or "float64"
    n_features = getattr(runtime, "n_features", None)
    if n_features is not None:
        return (rows, int(n_features)), dtype
    session = runtime._session  # the ONNX Runtime session: its input's declared shape
    (model_input,) = session.get_inputs()
    dims = [d if isinstance(d, int) and d > 0 else 1 for d in model_input.shape]
    if len(dims) <= 2:
        dims[0] = rows
    return tuple(dims), dtype


def _check_dumps(runtime: Any) -> None:
    """The conversion to ONNX reads a booster's dump: made here first, since a damaged file can
    crash the library there too (after the memory was measured: the server only converts)."""
    booster = getattr(runtime, "booster", None)
    if runtime.flavor == "xgboost" and booster is not None:
        booster.get_dump(dump_format="json")
    elif runtime.flavor == "lightgbm" and booster is not None:
        booster.dump_model()


def _report_error(exc: BaseException) -> int:
    text = _text(exc)
    print(json.dumps({"error": text, "out_of_memory": _is_out_of_memory(exc)}), flush=True)
    return 1


def _text(exc: BaseException) -> str:
    """The library's own words: a loader's error keeps its cause in ``internal``."""
    internal = getattr(exc, "internal", None)
    text = internal or f"{type(exc).__name__}: {exc}"
    return text.strip().rstrip(":")[:2000]


def _is_out_of_memory(exc: BaseException) -> bool:
    chain: list[BaseException] = [exc]
    if exc.__cause__ is not None:
        chain.append(exc.__cause__)
    for item in chain:
        if isinstance(item, MemoryError):
            return True
        text = f"{type(item).__name__}: {item} {getattr(item, 'internal', '') or ''}"
        if any(mark in text for mark in _OUT_OF_MEMORY) or any(
            mark in text.lower() for mark in _OUT_OF_MEMORY_TEXT
        ):
            return True
    return False


def _limit_address_space(memory: int) -> None:
    """What the child has mapped now, plus the budget: every allocation past that fails."""
    current = _proc_status("VmSize")
    if current is None:  # no /proc (not Linux): RLIMIT_AS is not enforced there anyway
        return
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = current + memory
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _resident_bytes() -> int:
    """Resident memory now, with the peak reset to it where Linux allows, so the peak read
    after the trial is the trial's own (not the imports', nor the parent's: ``ru_maxrss``
    carries a forked parent's peak across exec)."""
    with (
        contextlib.suppress(OSError),
        open("/proc/self/clear_refs", "w", encoding="ascii") as clear,
    ):
        clear.write("5")  # resets VmHWM, the peak resident size
    current = _proc_status("VmRSS")
    return current if current is not None else _peak_resident_bytes()


def _peak_resident_bytes() -> int:
    peak = _proc_status("VmHWM")
    if peak is not None:
        return peak
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(maxrss) if sys.platform == "darwin" else int(maxrss) * 1024  # bytes, or KiB


def _proc_status(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
