"""What the worker processes of one ``modelport serve`` share: a fresh directory per run.

With more than one worker, ``serve`` creates it under the var dir (``run/<host name>/``) before
any worker starts and names it in the environment the workers inherit. It holds the Prometheus
multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, so ``/metrics`` sums every worker) and,
without Redis, the rate-limit buckets the workers share. It is removed when the server stops;
one left behind by a server that was killed is removed by the next start on that host.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

RUN_DIR_ENV = "MODELPORT_RUN_DIR"
PROMETHEUS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_PREFIX = "serve-"


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity, within a cgroup v2 CPU quota if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    return max(1, cores)


def run_dir() -> Path | None:
    """This server's shared directory, when it runs several workers."""
    value = os.environ.get(RUN_DIR_ENV)
    return Path(value) if value else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove_stale(parent: Path) -> None:
    for path in parent.glob(f"{_PREFIX}*"):
        pid = path.name.removeprefix(_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def shared_run_dir(var_dir: Path, workers: int) -> Iterator[Path | None]:
    """A fresh directory for the workers of this run, named in the environment they inherit
    (None and nothing set for one worker); removed, and the environment restored, on exit."""
    if workers <= 1:
        yield None
        return
    # Per host: a var dir shared by several hosts (or containers, each with its own process
    # ids) never has one host remove another's directory as stale.
    parent = var_dir / "run" / re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname() or "host")
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    _remove_stale(parent)
    path = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=parent))
    metrics = path / "metrics"
    metrics.mkdir()
    saved = {name: os.environ.get(name) for name in (RUN_DIR_ENV, PROMETHEUS_DIR_ENV)}
    os.environ[RUN_DIR_ENV] = str(path)
    os.environ[PROMETHEUS_DIR_ENV] = str(metrics)  # read when a worker imports the client
    try:
        yield path
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(path, ignore_errors=True)
