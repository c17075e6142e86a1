"""modelport side by side with the bare floor and Seldon MLServer: one table from one run.

    make bench                       # the full run, ~10 s per cell, a flame graph at the end
    make bench BENCH_ARGS=--quick    # a few seconds per cell, for development
    make profile                     # only the flame graph of a production worker at c=64

Every server gets the same wine RandomForest (modelport trains it with `modelport builtins
install`; this script trains the same one, checks that the sha256 of its ONNX file equals the one
modelport registered, gives that file to the floor and the fitted scikit-learn model to MLServer)
and the same load from `wrk`. See benchmarks/README.md for how to read the output.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import load
import numpy as np
import orjson
import servers
from load import Body, Cell, LoadError
from servers import Server, ServerError

from modelport.builtin.wine_data import WineDataUnavailableError

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
PROFILES = HERE / "profiles"
MLSERVER_VENV = HERE / ".mlserver-venv"
BATCH_ROWS = 1000
PREDICTION_PATH = re.compile(r"^(/predict|/api/v1/models/[^/]+(/versions/\d+)?/predict)$")
LABELS = {
    "floor-1": "floor: FastAPI + ONNX Runtime, 1 worker",
    "floor-2": "floor: FastAPI + ONNX Runtime, 2 workers",
    "modelport-make-run": "modelport as `make run` starts it: SQLite, anonymous",
    "modelport-production": "modelport in production: 2 workers, PostgreSQL, Redis, API key",
    "mlserver": f"Seldon MLServer {servers.MLSERVER_VERSION}",
    "mlserver-batched": f"Seldon MLServer {servers.MLSERVER_VERSION}, adaptive batching 32 / 5 ms",
}
SERVER_KEYS = list(LABELS)


@dataclass
class Durations:
    cell: float  # seconds per single-row or image cell
    batch: float  # seconds of repeated 1,000-row requests
    warmup: float


@dataclass
class Outcome:
    """What one server gave: its cells, or why it has none."""

    key: str
    label: str
    cells: list[Cell] = field(default_factory=list)
    rss: list[dict[str, object]] = field(default_factory=list)
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    def cell(self, load_name: str) -> Cell | None:
        return next((cell for cell in self.cells if cell.load == load_name), None)

    def as_json(self) -> dict[str, object]:
        return {
            "key": self.key,
            "label": self.label,
            "problem": self.problem,
            "notes": self.notes,
            "rss": self.rss,
            "cells": [cell.as_json() for cell in self.cells],
        }


@dataclass
class Inputs:
    """Everything the servers are given: model files and request bodies."""

    onnx: Path
    onnx_sha256: str
    sklearn_model: Path | None
    sklearn_version: str
    sklearn_problem: str | None
    features: list[str]
    datasets_dir: Path
    rows: Body
    batch: Body
    tensor_rows: Body
    tensor_batch: Body
    image: Body
    image_bytes: bytes


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds per cell")
    parser.add_argument("--seconds", type=float, help="seconds per cell (default 10, quick 3)")
    parser.add_argument(
        "--servers",
        default=",".join(SERVER_KEYS),
        help=f"comma-separated subset of {','.join(SERVER_KEYS)}",
    )
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--profile", action="store_true", help="also record a flame graph")
    profile.add_argument(
        "--profile-only", action="store_true", help="only the production flame graph"
    )
    parser.add_argument(
        "--postgres",
        default=os.environ.get(
            "BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL URL allowed to CREATE DATABASE (a scratch bench_* is made and dropped)",
    )
    parser.add_argument(
        "--redis",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        help="Redis URL for the production set-up",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (server logs)")
    args = parser.parse_args()
    args.servers = [key.strip() for key in args.servers.split(",") if key.strip()]
    unknown = set(args.servers) - set(SERVER_KEYS)
    if unknown:
        parser.error(f"unknown servers {sorted(unknown)}; choose from {SERVER_KEYS}")
    if args.profile_only:
        args.servers = ["modelport-production"]
    return args


# --- the machine ----------------------------------------------------------------------------


def machine() -> dict[str, object]:
    import onnxruntime

    cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    memory = re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.MULTILINE)
    commit = subprocess.run(
        ["git", "-C", str(HERE), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu": model.group(1).strip() if model else platform.processor() or "unknown",
        "memory_gib": round(int(memory.group(1)) / 1024**2, 1) if memory else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "wrk": load.wrk_version(),
        "modelport_commit": commit or "unknown",
        "load_average_at_start": os.getloadavg()[0],
    }


# --- what every server is given -------------------------------------------------------------


def prepare(work: Path) -> Inputs:
    """Train the wine model as modelport does, fit the same forest for MLServer, write bodies."""
    import joblib
    import onnxruntime as ort
    import sklearn
    from PIL import Image
    from skimage import data as skimage_data
    from sklearn.ensemble import RandomForestRegressor

    from modelport.builtin.wine import FEATURE_NAMES, read_wine_csv, train_wine
    from modelport.builtin.wine_data import locate_wine_csv
    from modelport.settings import Settings
    from modelport.storage.protocol import sha256_hex

    csv = locate_wine_csv(Settings(var_dir=work / "var"))
    wine = read_wine_csv(csv)
    trained = train_wine(wine)
    onnx = work / "wine.onnx"
    onnx.write_bytes(trained.onnx_bytes)

    # MLServer serves scikit-learn: the same forest (train_wine's estimator and split), checked
    # against the ONNX file on every row.
    forest = RandomForestRegressor(n_estimators=100, random_state=42, n_jobs=-1)
    forest.fit(wine.features[trained.train_index], wine.quality[trained.train_index])
    session = ort.InferenceSession(trained.onnx_bytes, providers=["CPUExecutionProvider"])
    (from_onnx,) = session.run(None, {"features": wine.features.astype(np.float32)})
    difference = float(
        np.max(np.abs(np.asarray(from_onnx).ravel() - forest.predict(wine.features)))
    )
    sklearn_model: Path | None = work / "wine.joblib"
    problem = None
    if difference > 1e-4:
        sklearn_model, problem = None, f"the refitted forest differs from the ONNX by {difference}"
    else:
        # One thread per prediction, as ONNX Runtime runs everywhere else (intra-op 1): with
        # n_jobs=-1 every single-row call would start a thread pool.
        forest.set_params(n_jobs=1)
        joblib.dump(forest, sklearn_model)

    rows = [dict(zip(FEATURE_NAMES, row, strict=True)) for row in wine.features.tolist()]
    single = work / "rows.jsonl"
    single.write_bytes(b"\n".join(orjson.dumps(row) for row in rows) + b"\n")
    batch = work / "batch.json"
    batch.write_bytes(orjson.dumps({"inputs": rows[:BATCH_ROWS]}))

    def tensor(values: list[list[float]]) -> bytes:
        flat = [value for row in values for value in row]
        shape = [len(values), len(FEATURE_NAMES)]
        return orjson.dumps(
            {"inputs": [{"name": "features", "shape": shape, "datatype": "FP64", "data": flat}]}
        )

    table = wine.features.tolist()
    tensor_rows = work / "tensor-rows.jsonl"
    tensor_rows.write_bytes(b"\n".join(tensor([row]) for row in table) + b"\n")
    tensor_batch = work / "tensor-batch.json"
    tensor_batch.write_bytes(tensor(table[:BATCH_ROWS]))

    # The cat photo the image tests use (scikit-image's "chelsea", 451x300), as a form upload.
    photo = work / "chelsea.jpg"
    Image.fromarray(skimage_data.chelsea()).save(photo, "JPEG")
    boundary = "benchmarkboundary7d1c"
    upload = work / "image.multipart"
    upload.write_bytes(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="chelsea.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n".encode()
        + photo.read_bytes()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return Inputs(
        onnx=onnx,
        onnx_sha256=sha256_hex(trained.onnx_bytes),
        sklearn_model=sklearn_model,
        sklearn_version=sklearn.__version__,
        sklearn_problem=problem,
        features=FEATURE_NAMES,
        datasets_dir=csv.parent,
        rows=Body(single, lines=True),
        batch=Body(batch, items=BATCH_ROWS),
        tensor_rows=Body(tensor_rows, lines=True),
        tensor_batch=Body(tensor_batch, items=BATCH_ROWS),
        image=Body(upload, content_type=f"multipart/form-data; boundary={boundary}"),
        image_bytes=photo.read_bytes(),
    )


# --- measuring one server -------------------------------------------------------------------


def measure(server: Server, inputs: Inputs, durations: Durations, outcome: Outcome) -> None:
    """Warm up, then c=1/16/64 single rows, 1,000-row requests and, if served, images at c=16."""
    rows, batch = (
        (inputs.tensor_rows, inputs.tensor_batch)
        if server.api.tensors
        else (inputs.rows, inputs.batch)
    )

    def wrk(path: str, body: Body, name: str, concurrency: int, seconds: float) -> Cell:
        load.settle(server.process.pid)
        processes = load.process_tree(server.process.pid)
        cpu_before = sum(load.cpu_seconds(pid) for pid in processes)
        cell = load.run_wrk(
            server.url + path,
            body,
            load=name,
            concurrency=concurrency,
            seconds=seconds,
            headers=server.headers,
        )
        cpu = sum(load.cpu_seconds(pid) for pid in processes) - cpu_before
        cell.server_cpu_percent = round(100 * cpu / cell.seconds, 1) if cell.seconds else None
        return cell

    say(f"  warming up {server.key} ...")
    wrk(server.api.single, rows, "warm-up", 16, durations.warmup)
    wrk(server.api.batch, batch, "warm-up", 1, 1)
    for concurrency in (1, 16, 64):
        say(f"  {server.key}: single rows at c={concurrency}")
        outcome.cells.append(
            wrk(server.api.single, rows, f"c={concurrency}", concurrency, durations.cell)
        )
    say(f"  {server.key}: {BATCH_ROWS:,}-row requests")
    outcome.cells.append(wrk(server.api.batch, batch, f"{BATCH_ROWS:,} rows", 1, durations.batch))
    if server.api.image:
        wrk(server.api.image, inputs.image, "warm-up", 2, 1)
        say(f"  {server.key}: images at c=16")
        outcome.cells.append(wrk(server.api.image, inputs.image, "image c=16", 16, durations.cell))
    outcome.rss = server.rss()


def registered_sha256(server: Server, model: str) -> str | None:
    """The sha256 of the version ``production`` points at, from modelport's public API."""
    response = httpx.get(f"{server.url}/api/v1/models/{model}", timeout=30)
    if response.status_code != 200:
        return None
    detail = response.json()
    version = detail.get("aliases", {}).get("production")
    found = [v["sha256"] for v in detail.get("versions", []) if v.get("version") == version]
    return found[0] if found else None


def check_same_model(server: Server, inputs: Inputs, outcome: Outcome) -> None:
    sha = registered_sha256(server, servers.WINE)
    if sha == inputs.onnx_sha256:
        outcome.notes.append(f"serves the same wine ONNX file (sha256 {sha[:12]}...)")
    else:
        outcome.notes.append(
            f"WARNING: serves wine ONNX sha256 {sha}, the floor serves {inputs.onnx_sha256}"
        )


def in_process_image(server: Server, var: Path, inputs: Inputs, seconds: float) -> Outcome:
    """The image classifier's ONNX file (the one modelport registered) in this process: decode,
    preprocess and run one image per call from one thread per core, one intra-op thread each
    (the server's MODELPORT_INFERENCE_THREADS default)."""
    import onnxruntime as ort

    from modelport.builtin.imagenet import PREPROCESSING
    from modelport.images.decoding import to_tensor
    from modelport.settings import Settings

    threads = os.cpu_count() or 1
    outcome = Outcome(
        "in-process-image",
        f"in-process ONNX Runtime, image classifier ({threads} threads, decode + preprocess + run)",
    )
    sha = registered_sha256(server, servers.IMAGENET)
    found = sorted(var.rglob(f"{sha}*")) if sha else []
    if not found:
        outcome.problem = f"the registered image classifier file (sha256 {sha}) was not found"
        return outcome
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(found[0]), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    max_pixels = Settings().max_image_pixels

    def classify() -> object:
        tensor = to_tensor(inputs.image_bytes, PREPROCESSING, max_pixels)
        logits = np.asarray(session.run(None, {name: tensor})[0], dtype=np.float64)[0]
        probabilities = np.exp(logits - logits.max())
        return np.argsort(-probabilities / probabilities.sum())[:5]

    say("  in-process ONNX Runtime: images")
    outcome.cells.append(load.in_process("image c=16", classify, threads, seconds))
    outcome.notes.append(
        f"same ONNX file as modelport serves (sha256 {sha[:12] if sha else ''}...)"
    )
    return outcome


# --- the prediction log ---------------------------------------------------------------------


def answered_predictions(log: Path) -> set[str]:
    """Request ids of 2xx prediction responses, from the server's own access log."""
    answered = set()
    with log.open("rb") as lines:
        for line in lines:
            if b'"modelport.access"' not in line:
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            status = record.get("status")
            ok = isinstance(status, int) and 200 <= status < 300
            if ok and PREDICTION_PATH.match(str(record.get("path", ""))):
                answered.add(str(record.get("request_id")))
    return answered


def logged_predictions(database_url: str) -> tuple[set[str], int]:
    """Request ids of the prediction log's success rows, and how many rows it holds in all."""
    import asyncio

    import asyncpg

    async def query() -> tuple[set[str], int]:
        connection = await asyncpg.connect(database_url)
        try:
            rows = await connection.fetch(
                "SELECT request_id FROM predictions WHERE status = 'success'"
            )
            total = await connection.fetchval("SELECT count(*) FROM predictions")
        finally:
            await connection.close()
        return {row["request_id"] for row in rows}, int(total)

    return asyncio.run(query())


def log_check(server_log: Path, database_url: str, var: Path, cells: list[Cell]) -> dict[str, Any]:
    answered = answered_predictions(server_log)
    logged, total = logged_predictions(database_url)
    spool = var / "prediction-log-spool.jsonl"
    spooled = sum(1 for _ in spool.open("rb")) if spool.exists() else 0
    received = sum(cell.requests - cell.non_2xx for cell in cells)
    return {
        "answered_2xx": len(answered),
        "success_rows": len(logged),
        "rows_total": total,
        "answered_without_row": len(answered - logged),
        "spooled_rows_waiting": spooled,
        "received_2xx_by_wrk_in_measured_cells": received,
    }


# --- the flame graph ------------------------------------------------------------------------


def profile(server: Server, inputs: Inputs, durations: Durations, stamp: str) -> dict[str, Any]:
    """Single rows at c=64 while py-spy samples the workers: one to an SVG flame graph, the last
    (the same one if there is only one) to collapsed stacks, summarised in the output. Runs after
    the measured cells, so the sampling does not touch the table's numbers."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        return {"problem": "py-spy is not installed (pip install -r requirements.lock)"}
    workers = [pid for pid, role in server.processes() if role == "worker"] or [server.process.pid]
    PROFILES.mkdir(exist_ok=True)
    svg = PROFILES / f"{stamp}-modelport-production-c64.svg"
    collapsed = Path(tempfile.mkstemp(suffix=".txt")[1])
    seconds = durations.cell

    def traffic(name: str, length: float) -> None:
        load.run_wrk(
            server.url + server.api.single,
            inputs.rows,
            load=name,
            concurrency=64,
            seconds=length,
            headers=server.headers,
        )

    # One load throughout: wrk's connections open before and close after the sampling.
    load.settle(server.process.pid)
    sender = threading.Thread(target=traffic, args=("profile", durations.warmup + seconds + 2))
    sender.start()
    time.sleep(durations.warmup)
    say(f"  profiling {server.key} workers {workers} at c=64 for {seconds:g} s")

    def spy(pid: int, output: Path, *options: str) -> subprocess.Popen[bytes]:
        argv = [str(py_spy), "record", "--nonblocking", "--threads", "--pid", str(pid)]
        argv += ["--duration", str(round(seconds)), "--output", str(output), *options]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    # The flame graph: every thread that is not idle (a thread woken up and waiting for the GIL
    # counts too). The summary: only the thread holding the GIL, i.e. where Python time goes.
    spies = [
        spy(workers[0], svg, "--format", "flamegraph"),
        spy(workers[-1], collapsed, "--format", "raw", "--gil"),
    ]
    errors = [spy.communicate()[1].decode(errors="replace").strip() for spy in spies]
    sender.join()
    summary = summarise(collapsed)
    collapsed.unlink(missing_ok=True)
    if not svg.exists():
        return {"problem": f"py-spy wrote no flame graph: {errors[0][-300:]}", **summary}
    return {"flame_graph": str(svg.relative_to(HERE.parent)), "pids": workers, **summary}


def summarise(collapsed: Path) -> dict[str, Any]:
    """Where a worker holds the GIL: shares of samples by thread, package and function (self)."""
    if not collapsed.exists():
        return {}
    by_thread: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        by_thread[thread_kind(frames[0])] += count
        if len(frames) == 1:  # the GIL held with no Python frame: the event loop's C code, GC
            by_package["native"] += count
            by_function["(no Python frame)"] += count
            continue
        match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frames[-1])
        function, filename = (match.group(1), match.group(2)) if match else (frames[-1], "")
        by_package[package_of(filename)] += count
        by_function[f"{function} ({Path(filename).name})"] += count
    if not total:
        return {}

    def shares(counter: Counter[str]) -> list[list[object]]:
        return [[name, round(count / total, 3)] for name, count in counter.most_common(12)]

    return {
        "samples": total,
        "gil_by_thread": shares(by_thread),
        "gil_self_by_package": shares(by_package),
        "gil_self_by_function": shares(by_function),
    }


def thread_kind(frame: str) -> str:
    """'thread (0x7f..): Thread-21 (_connection_worker_thread)' -> '_connection_worker_thread'."""
    name = frame.split(": ", 1)[-1]
    inner = re.fullmatch(r"Thread-\d+ \((.+)\)", name)
    return inner.group(1) if inner else name


def package_of(filename: str) -> str:
    """The top-level package of a frame's file: py-spy names files by module path
    (asyncpg/connection.py -> asyncpg) or, outside sys.path, in full."""
    parts = Path(filename).parts
    if not parts:
        return "native"
    if parts[0] != "/":
        return parts[0].removesuffix(".py")
    if "site-packages" in parts:
        rest = parts[parts.index("site-packages") + 1 :]
        return rest[0].removesuffix(".py") if rest else filename
    return filename


# --- the table ------------------------------------------------------------------------------


def reference_floor(key: str) -> str | None:
    if key in ("modelport-production", "mlserver", "mlserver-batched"):
        return "floor-2"
    if key in ("modelport-make-run", "floor-2"):
        return "floor-1"
    return None


def throughput(cell: Cell) -> str:
    if cell.items > 1:
        return f"{cell.items_per_second / 1000:,.1f}k rows/s"
    unit = "images/s" if cell.load.startswith("image") else "req/s"
    return f"{cell.per_second:,.0f} {unit}"


def rss_text(rss: list[dict[str, object]]) -> str:
    if not rss:
        return ""
    parts = [f"{entry['role']} {float(str(entry['rss_mb'])):.0f}" for entry in rss]
    return "RSS MB: " + ", ".join(parts)


def table(outcomes: list[Outcome], image_floor: Outcome | None) -> list[str]:
    by_key = {outcome.key: outcome for outcome in outcomes}
    header = (
        f"{'server / load':<36}{'throughput':>17}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'non-2xx':>8}{'sock err':>9}{'srv CPU':>8}{'x floor':>8}{'p50 x':>7}"
    )
    lines = [header, "-" * len(header)]
    for outcome in outcomes:
        lines.append(f"{outcome.label}   {rss_text(outcome.rss)}".rstrip())
        if outcome.problem:
            lines.append(f"  not measured: {outcome.problem}")
            continue
        floor = by_key.get(reference_floor(outcome.key) or "")
        for cell in outcome.cells:
            base, p50 = None, ""
            if cell.load.startswith("image"):
                if image_floor is not None and image_floor is not outcome:
                    base = image_floor.cell(cell.load)
            elif floor is not None:
                base = floor.cell(cell.load)
                if base and base.p50_ms:
                    p50 = f"{cell.p50_ms / base.p50_ms:.1f}"
            ratio = f"{cell.items_per_second / base.items_per_second:.2f}" if base else ""
            cpu = "" if cell.server_cpu_percent is None else f"{cell.server_cpu_percent:.0f}%"
            lines.append(
                f"  {cell.load:<34}{throughput(cell):>17}{cell.p50_ms:>9.2f}{cell.p99_ms:>9.1f}"
                f"{cell.non_2xx:>8}{cell.socket_errors:>9}{cpu:>8}{ratio:>8}{p50:>7}"
            )
    return lines


@dataclass
class Target:
    name: str
    measured: float | None
    limit: float
    at_least: bool
    unit: str = ""

    @property
    def verdict(self) -> str:
        if self.measured is None:
            return "not measured"
        met = self.measured >= self.limit if self.at_least else self.measured <= self.limit
        if met:
            return "met"
        return f"missed by {abs(self.measured - self.limit) / self.limit:.0%}"

    def line(self) -> str:
        if self.measured is None:
            value = "-"
        elif float(self.measured).is_integer() and not self.unit.strip():
            value = f"{self.measured:,.0f}"
        else:
            value = f"{self.measured:,.2f}{self.unit}"
        sign = ">=" if self.at_least else "<="
        return f"  {self.name:<52}{value:>14}   {sign} {self.limit:g}{self.unit:<5}  {self.verdict}"


def targets(
    outcomes: list[Outcome], image_floor: Outcome | None, log: dict[str, Any]
) -> list[Target]:
    by_key = {outcome.key: outcome for outcome in outcomes}

    def cell(key: str, name: str) -> Cell | None:
        outcome = by_key.get(key)
        return outcome.cell(name) if outcome and not outcome.problem else None

    def ratio(a: Cell | None, b: Cell | None, what: Callable[[Cell], float]) -> float | None:
        return what(a) / what(b) if a and b and what(b) else None

    prod64, floor64 = cell("modelport-production", "c=64"), cell("floor-2", "c=64")
    prod1, floor1 = cell("modelport-production", "c=1"), cell("floor-2", "c=1")
    batch = f"{BATCH_ROWS:,} rows"
    prod_rss = [
        float(str(e["rss_mb"])) for e in by_key.get("modelport-production", Outcome("", "")).rss
    ]
    image = image_floor.cell("image c=16") if image_floor else None
    return [
        Target(
            "production c=64 req/s vs 2-worker floor",
            ratio(prod64, floor64, lambda c: c.per_second),
            0.5,
            True,
            "x",
        ),
        Target("production c=64 p99", prod64.p99_ms if prod64 else None, 50, False, " ms"),
        Target(
            "production c=64 errors (non-2xx + socket)",
            prod64.non_2xx + prod64.socket_errors if prod64 else None,
            0,
            False,
        ),
        Target(
            "production c=1 p50 vs 2-worker floor",
            ratio(prod1, floor1, lambda c: c.p50_ms),
            3,
            False,
            "x",
        ),
        Target(
            "production 1,000-row rows/s vs 2-worker floor",
            ratio(
                cell("modelport-production", batch),
                cell("floor-2", batch),
                lambda c: c.items_per_second,
            ),
            0.5,
            True,
            "x",
        ),
        Target(
            "production images/s at c=16 vs in-process",
            ratio(cell("modelport-production", "image c=16"), image, lambda c: c.per_second),
            0.8,
            True,
            "x",
        ),
        Target(
            "`make run` set-up c=64 req/s vs 1-worker floor",
            ratio(
                cell("modelport-make-run", "c=64"), cell("floor-1", "c=64"), lambda c: c.per_second
            ),
            0.5,
            True,
            "x",
        ),
        Target(
            "production RSS per worker, both built-ins loaded",
            max(prod_rss) if prod_rss else None,
            400,
            False,
            " MB",
        ),
        Target("answered predictions without a log row", log.get("answered_without_row"), 0, False),
    ]


# --- the run --------------------------------------------------------------------------------


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Run:
    """One benchmark run: each server in turn, its outcome kept for the table."""

    def __init__(
        self, args: argparse.Namespace, work: Path, inputs: Inputs, durations: Durations, stamp: str
    ) -> None:
        self.args, self.work, self.inputs, self.durations, self.stamp = (
            args,
            work,
            inputs,
            durations,
            stamp,
        )
        self.outcomes: list[Outcome] = []
        self.image_floor: Outcome | None = None
        self.log: dict[str, Any] = {}
        self.profiled: dict[str, Any] = {}

    def server(self, key: str) -> None:
        outcome = Outcome(key, LABELS[key])
        self.outcomes.append(outcome)
        if key.startswith("floor-"):
            workers = int(key.split("-")[1])
            self.measure(
                outcome,
                lambda: servers.floor(self.work, self.inputs.onnx, self.inputs.features, workers),
                lambda server: measure(server, self.inputs, self.durations, outcome),
            )
        elif key == "modelport-make-run":
            self.measure(
                outcome,
                lambda: servers.modelport_make_run(self.work, self.inputs.datasets_dir),
                lambda server: self.during_make_run(server, outcome),
            )
        elif key == "modelport-production":
            self.production(outcome)
        else:
            self.mlserver(outcome, batching=key == "mlserver-batched")

    @staticmethod
    def measure(
        outcome: Outcome,
        start: Callable[[], AbstractContextManager[Server]],
        during: Callable[[Server], None],
    ) -> None:
        """Start, measure, stop; a server that fails is reported in the table, not raised."""
        say(f"{outcome.label} ...")
        try:
            with start() as server:
                during(server)
        except (ServerError, LoadError, httpx.HTTPError, OSError) as exc:
            outcome.problem = str(exc)
            say(f"  FAILED: {exc}")

    def during_make_run(self, server: Server, outcome: Outcome) -> None:
        check_same_model(server, self.inputs, outcome)
        measure(server, self.inputs, self.durations, outcome)
        var = self.work / "make-run"
        self.image_floor = in_process_image(server, var, self.inputs, self.durations.cell)

    def production(self, outcome: Outcome) -> None:
        """In a scratch PostgreSQL database; afterwards, the prediction log is counted."""
        try:
            with servers.scratch_postgres(self.args.postgres) as database:
                self.measure(
                    outcome,
                    lambda: servers.modelport_production(
                        self.work, self.inputs.datasets_dir, database, self.args.redis
                    ),
                    lambda server: self.during_production(server, outcome),
                )
                if not outcome.problem:
                    self.log = log_check(
                        self.work / "modelport-production.log",
                        database,
                        self.work / "production",
                        outcome.cells,
                    )
        except ServerError as exc:
            outcome.problem = str(exc)
            say(f"  FAILED: {exc}")

    def during_production(self, server: Server, outcome: Outcome) -> None:
        check_same_model(server, self.inputs, outcome)
        if not self.args.profile_only:
            measure(server, self.inputs, self.durations, outcome)
        if self.args.profile or self.args.profile_only:
            self.profiled = profile(server, self.inputs, self.durations, self.stamp)

    def mlserver(self, outcome: Outcome, batching: bool) -> None:
        """Both MLServer set-ups share one install; if it cannot be had, the table says why."""
        model = self.inputs.sklearn_model
        try:
            if model is None:
                raise ServerError(self.inputs.sklearn_problem or "no scikit-learn model")
            say("MLServer's virtual environment (installed on first use) ...")
            command = servers.ensure_mlserver(MLSERVER_VENV, self.inputs.sklearn_version)
        except ServerError as exc:
            outcome.problem = str(exc)
            say(f"  not measured: {exc}")
            return
        self.measure(
            outcome,
            lambda: servers.mlserver(self.work, command, model, batching),
            lambda server: measure(server, self.inputs, self.durations, outcome),
        )


def main() -> int:
    args = parse_args()
    seconds = args.seconds or (3.0 if args.quick else 10.0)
    durations = Durations(
        cell=seconds, batch=max(2.0, seconds / 2), warmup=1.0 if args.quick else 2.0
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    started = time.monotonic()
    described = machine()
    work = Path(tempfile.mkdtemp(prefix="modelport-bench-"))
    try:
        say(f"work folder {work}; preparing the models and request bodies ...")
        try:
            inputs = prepare(work)
        except WineDataUnavailableError as exc:
            say(f"modelport benchmark: {exc}")
            return 2
        run = Run(args, work, inputs, durations, stamp)
        for key in args.servers:
            run.server(key)
    finally:
        if args.keep:
            say(f"server logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    described["load_average_at_end"] = os.getloadavg()[0]
    report = render(described, run, time.monotonic() - started)
    print("\n".join(report))
    if not args.profile_only:
        save(described, run, report)
    failed = [o.key for o in run.outcomes if o.problem and not o.key.startswith("mlserver")]
    return 1 if failed else 0


def render(described: dict[str, Any], run: Run, elapsed: float) -> list[str]:
    m, args, durations = described, run.args, run.durations
    lines = [
        "",
        f"modelport benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, one run on one machine "
        f"({elapsed / 60:.1f} min{', --quick' if args.quick else ''})",
        f"machine: {m['cores']} cores, {m['cpu']}, {m['memory_gib']} GiB; {m['os']}; "
        f"Python {m['python']}; onnxruntime {m['onnxruntime']}; {m['wrk']}; "
        f"modelport {m['modelport_commit']}; "
        f"load average (1 min) at start {m['load_average_at_start']:.1f}, "
        f"at end {m['load_average_at_end']:.1f}",
        f"load: wrk, 1 thread, keep-alive connections over loopback; {durations.cell:g} s per "
        f"cell, {durations.batch:g} s of back-to-back {BATCH_ROWS:,}-row requests; the client "
        "shares the cores with the server",
        "",
    ]
    everything = [*run.outcomes, *([run.image_floor] if run.image_floor else [])]
    if not args.profile_only:
        lines += table(everything, run.image_floor)
        lines += [
            "",
            "x floor: throughput / the floor's at the same load (production and MLServer: the "
            "2-worker floor; `make run` and the 2-worker floor: the 1-worker floor; images: "
            "in-process ONNX Runtime). p50 x: p50 latency / the floor's.",
        ]
    for outcome in everything:
        lines += [f"note, {outcome.key}: {note}" for note in outcome.notes]
    log = run.log
    if log:
        lines += [
            "",
            f"prediction log (production): {log['answered_2xx']:,} predictions answered 2xx "
            f"(server access log), {log['success_rows']:,} success rows in PostgreSQL after "
            f"shutdown ({log['rows_total']:,} rows in all), {log['answered_without_row']:,} "
            f"answered without a row, {log['spooled_rows_waiting']:,} rows waiting in the spool "
            f"file; wrk received {log['received_2xx_by_wrk_in_measured_cells']:,} 2xx in the "
            "measured cells",
            "every answered prediction has its log row: "
            + ("yes" if log["answered_without_row"] == 0 else "NO"),
        ]
    if not args.profile_only:
        lines += ["", "targets (issue 10):"]
        lines += [target.line() for target in targets(run.outcomes, run.image_floor, log)]
    profiled = run.profiled
    if profiled:
        lines += ["", "profile of production workers at c=64 (py-spy; not part of the numbers):"]
        if "problem" in profiled:
            lines.append(f"  {profiled['problem']}")
        else:
            lines.append(f"  flame graph of one worker: {profiled['flame_graph']}")
        if profiled.get("gil_by_thread"):

            def shares(key: str, count: int = 12) -> str:
                return ", ".join(f"{name} {share:.0%}" for name, share in profiled[key][:count])

            lines += [
                f"  the other worker, samples holding the GIL ({profiled['samples']:,}):",
                f"    by thread: {shares('gil_by_thread', 6)}",
                f"    by package (self): {shares('gil_self_by_package')}",
                f"    by function (self): {shares('gil_self_by_function', 8)}",
            ]
    return lines


def save(described: dict[str, Any], run: Run, report: list[str]) -> None:
    RESULTS.mkdir(exist_ok=True)
    document = {
        "started": run.stamp,
        "quick": run.args.quick,
        "durations": vars(run.durations),
        "machine": described,
        "servers": [outcome.as_json() for outcome in run.outcomes],
        "in_process_image": run.image_floor.as_json() if run.image_floor else None,
        "prediction_log": run.log,
        "targets": [
            {
                "name": target.name,
                "measured": target.measured,
                "limit": target.limit,
                "at_least": target.at_least,
                "verdict": target.verdict,
            }
            for target in targets(run.outcomes, run.image_floor, run.log)
        ],
        "profile": run.profiled,
        "table": report,
    }
    text = json.dumps(document, indent=2) + "\n"
    path = RESULTS / f"{run.stamp}{'-quick' if run.args.quick else ''}.json"
    path.write_text(text)
    (RESULTS / "latest.json").write_text(text)
    say(f"results written to {path.relative_to(HERE.parent)} and benchmarks/results/latest.json")


if __name__ == "__main__":
    sys.exit(main())
