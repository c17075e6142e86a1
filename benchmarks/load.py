"""Load and measurement: wrk for HTTP, a thread loop for in-process ONNX Runtime, RSS from /proc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk_post.lua"
WRK_TIMEOUT = "10s"  # a slower answer counts as a socket error (timeout), not a latency


class LoadError(RuntimeError):
    """The load generator could not run; the message says why."""


@dataclass(frozen=True)
class Body:
    """What one load sends: a file of bodies (one per line when ``lines``) and its type."""

    path: Path
    content_type: str = "application/json"
    lines: bool = False
    items: int = 1  # rows (or images) per request: throughput is reported in these


@dataclass
class Cell:
    """One load against one server."""

    load: str
    concurrency: int
    items: int
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non_2xx: int
    socket_errors: int
    server_cpu_percent: float | None = None  # CPU the server used during the cell (100 = 1 core)

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def items_per_second(self) -> float:
        return self.per_second * self.items

    def as_json(self) -> dict[str, object]:
        return {
            **asdict(self),
            "requests_per_second": round(self.per_second, 1),
            "items_per_second": round(self.items_per_second, 1),
        }


def wrk_path() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise LoadError(
            "wrk is not installed: `apt-get install -y wrk` on Debian or Ubuntu, "
            "or wrk from your system's packages"
        )
    return found


def wrk_version() -> str:
    try:
        run = subprocess.run([wrk_path(), "-v"], capture_output=True, text=True, timeout=10)
    except (LoadError, OSError):
        return "missing"
    return (run.stdout or run.stderr).split("[", 1)[0].strip() or "unknown"


def run_wrk(
    url: str,
    body: Body,
    *,
    load: str,
    concurrency: int,
    seconds: float,
    headers: dict[str, str] | None = None,
) -> Cell:
    """``concurrency`` keep-alive connections from one wrk thread for ``seconds``."""
    env = dict(os.environ)
    env.update(
        BENCH_BODY=str(body.path),
        BENCH_LINES="1" if body.lines else "0",
        BENCH_TYPE=body.content_type,
        BENCH_HEADERS="\n".join(f"{name}: {value}" for name, value in (headers or {}).items()),
    )
    command = [
        wrk_path(),
        "-t1",  # one client thread: the client shares the 2 cores with the server
        f"-c{concurrency}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={WRK_TIMEOUT}",
        "-s",
        str(LUA),
        url,
    ]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=seconds + 60)
    marker = "BENCH_RESULT "
    lines = [line for line in run.stdout.splitlines() if line.startswith(marker)]
    if run.returncode != 0 or not lines:
        raise LoadError(f"wrk failed ({run.returncode}): {run.stderr.strip() or run.stdout}")
    result = json.loads(lines[-1][len(marker) :])
    return Cell(
        load=load,
        concurrency=concurrency,
        items=body.items,
        requests=int(result["requests"]),
        seconds=result["duration_us"] / 1e6,
        p50_ms=result["p50_us"] / 1000,
        p90_ms=result["p90_us"] / 1000,
        p99_ms=result["p99_us"] / 1000,
        max_ms=result["max_us"] / 1000,
        non_2xx=int(result["status_errors"]),
        socket_errors=int(result["socket_errors"]) + int(result["timeouts"]),
    )


def in_process(load: str, work: Callable[[], object], threads: int, seconds: float) -> Cell:
    """Call ``work`` from ``threads`` threads for ``seconds``: the ceiling without HTTP."""
    for _ in range(3):  # warm-up: first runs allocate
        work()
    latencies: list[float] = []
    lock = threading.Lock()
    until = time.perf_counter() + seconds

    def loop() -> None:
        mine: list[float] = []
        while (started := time.perf_counter()) < until:
            work()
            mine.append((time.perf_counter() - started) * 1000)
        with lock:
            latencies.extend(mine)

    started = time.perf_counter()
    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    latencies.sort()

    def at(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return Cell(
        load=load,
        concurrency=threads,
        items=1,
        requests=len(latencies),
        seconds=elapsed,
        p50_ms=at(0.50),
        p90_ms=at(0.90),
        p99_ms=at(0.99),
        max_ms=latencies[-1] if latencies else 0.0,
        non_2xx=0,
        socket_errors=0,
    )


# --- processes ------------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces: the ppid follows the last ')'.
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, parents first."""
    children, tree, queue = _children(), [], [root]
    while queue:
        pid = queue.pop(0)
        tree.append(pid)
        queue.extend(sorted(children.get(pid, [])))
    return tree


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def settle(root: int, *, idle_percent: float = 10.0, timeout: float = 15.0) -> float:
    """Wait until the server under ``root`` has finished what the last load left queued (its CPU
    use over 0.25 s falls below ``idle_percent`` of a core), so one cell does not pay for the
    last; returns the seconds waited."""
    started = time.monotonic()
    pids = process_tree(root)
    before = sum(cpu_seconds(pid) for pid in pids)
    while time.monotonic() - started < timeout:
        time.sleep(0.25)
        after = sum(cpu_seconds(pid) for pid in pids)
        if (after - before) / 0.25 * 100 < idle_percent:
            break
        before = after
    return time.monotonic() - started
