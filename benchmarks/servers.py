"""How each server in the benchmark is set up and started: the one place that knows their commands.

Every server runs as a user would run it, from its own command line, in its own process group, on
a free loopback port, with its output in a log file. modelport is started with ``modelport serve``
and configured only through existing MODELPORT_* settings, so changes inside the server need no
change here. Each function is a context manager that yields a ``Server`` once it answers and
stops it (SIGTERM, then SIGKILL after a minute) on the way out.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from load import command_line, process_tree, rss_mb

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
MODELPORT = BIN / "modelport"
READY_TIMEOUT_SECONDS = 180.0
STOP_TIMEOUT_SECONDS = 60.0

WINE = "wine-quality"
IMAGENET = "imagenet-classifier"
MLSERVER_VERSION = "1.7.1"
# MLServer 1.7.1 breaks with uvloop 0.22 and later.
MLSERVER_REQUIREMENTS = [
    f"mlserver=={MLSERVER_VERSION}",
    f"mlserver-sklearn=={MLSERVER_VERSION}",
    "uvloop<0.22",
]


class ServerError(RuntimeError):
    """A server could not be set up or started; the message says why (and where its log is)."""


@dataclass(frozen=True)
class Api:
    """Where a server takes one wine row, a batch of rows and an image."""

    single: str
    batch: str
    image: str | None = None
    tensors: bool = False  # Open Inference Protocol tensors (MLServer) instead of JSON rows


@dataclass
class Server:
    key: str
    label: str
    url: str
    api: Api
    process: subprocess.Popen[bytes]
    log: Path
    headers: dict[str, str] = field(default_factory=dict)
    main_serves: bool = False  # the main process answers HTTP even when it has workers

    def processes(self) -> list[tuple[int, str]]:
        """(pid, role) of the processes that serve: workers, and the main one where it serves."""
        tree = process_tree(self.process.pid)
        workers = [
            pid
            for pid in tree[1:]
            if "multiprocessing" in (cmd := command_line(pid)) and "resource_tracker" not in cmd
        ]
        main = [(self.process.pid, "main")] if self.main_serves or not workers else []
        return [*main, *((pid, "worker") for pid in workers)]

    def rss(self) -> list[dict[str, object]]:
        found = []
        for pid, role in self.processes():
            rss = rss_mb(pid)
            if rss is not None:
                found.append({"pid": pid, "role": role, "rss_mb": round(rss, 1)})
        return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def clean_env(**settings: str) -> dict[str, str]:
    """This environment without any MODELPORT_* variable the caller happens to have, plus ours."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("MODELPORT_")}
    env.update(settings)
    return env


def run_command(
    argv: list[str], *, env: dict[str, str], cwd: Path, log: Path, stdin: str = ""
) -> None:
    """Run a set-up command to completion, its output appended to ``log``."""
    with log.open("ab") as output:
        output.write(f"$ {' '.join(argv)}\n".encode())
        output.flush()
        done = subprocess.run(
            argv, env=env, cwd=cwd, input=stdin.encode(), stdout=output, stderr=subprocess.STDOUT
        )
    if done.returncode != 0:
        raise ServerError(f"`{' '.join(argv[:3])} ...` failed ({done.returncode}); see {log}")


@contextmanager
def launch(
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log: Path,
    ready_url: str,
    is_ready: Callable[[httpx.Response], bool] = lambda response: response.status_code == 200,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``argv`` in its own process group; yield once ``ready_url`` answers as ready."""
    with log.open("ab") as output:
        output.write(f"$ {' '.join(argv)}\n".encode())
        output.flush()
        process = subprocess.Popen(
            argv, env=env, cwd=cwd, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            if process.poll() is not None:
                raise ServerError(f"{argv[0]} exited early ({process.returncode}); see {log}")
            try:
                if is_ready(httpx.get(ready_url, timeout=5)):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{argv[0]} not ready after {READY_TIMEOUT_SECONDS:.0f} s; see {log}"
                )
            time.sleep(0.25)
        yield process
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a graceful shutdown: modelport flushes its prediction log), then SIGKILL."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT_SECONDS)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # whatever of the group is left
    process.wait()


# --- the bare floor -------------------------------------------------------------------------


@contextmanager
def floor(work: Path, onnx: Path, features: list[str], workers: int) -> Iterator[Server]:
    """benchmarks/floor_app.py under uvicorn with uvloop and httptools."""
    port = free_port()
    log = work / f"floor-{workers}.log"
    argv = [
        str(BIN / "python"), "-m", "uvicorn", "floor_app:app", "--app-dir", str(HERE),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    env = clean_env(BENCH_FLOOR_ONNX=str(onnx), BENCH_FLOOR_FEATURES=",".join(features))
    url = f"http://127.0.0.1:{port}"
    with launch(argv, env=env, cwd=work, log=log, ready_url=f"{url}/ready") as process:
        yield Server(
            f"floor-{workers}",
            f"floor: FastAPI + ONNX Runtime, {workers} worker{'s' if workers > 1 else ''}",
            url,
            Api(single="/predict", batch="/predict"),
            process,
            log,
        )


# --- modelport ------------------------------------------------------------------------------

_MODELPORT_API = Api(
    single="/predict",
    batch=f"/api/v1/models/{WINE}/predict",
    image=f"/api/v1/models/{IMAGENET}/predict",
)


def _modelport_ready(response: httpx.Response) -> bool:
    """Ready, with both built-ins loaded (a worker that answers may have loaded only one)."""
    if response.status_code != 200:
        return False
    # Which models are loaded is for operators; each model's own V2 readiness is public.
    base = str(response.url).removesuffix("/health/ready")
    return all(
        httpx.get(f"{base}/v2/models/{name}/ready", timeout=5).status_code == 200
        for name in ("wine-quality", "imagenet-classifier")
    )


@contextmanager
def modelport_make_run(work: Path, datasets_dir: Path) -> Iterator[Server]:
    """What `make run` starts: `modelport builtins install`, then `modelport serve` with default
    settings (SQLite under var/, anonymous predictions, default workers). Only the anonymous rate
    limit is lifted: the whole load comes from one address and would measure the limit."""
    var = work / "make-run"
    var.mkdir(parents=True, exist_ok=True)
    log = work / "modelport-make-run.log"
    env = clean_env(
        MODELPORT_VAR_DIR=str(var),
        MODELPORT_DATASETS_DIR=str(datasets_dir),
        MODELPORT_RATE_LIMIT_ANONYMOUS_PER_MINUTE="1000000000",
    )
    run_command([str(MODELPORT), "builtins", "install"], env=env, cwd=var, log=log)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(MODELPORT), "serve", "--port", str(port)]
    ready = f"{url}/health/ready"
    with launch(argv, env=env, cwd=var, log=log, ready_url=ready, is_ready=_modelport_ready) as p:
        yield Server(
            "modelport-make-run",
            "modelport as `make run` starts it: SQLite, anonymous",
            url,
            _MODELPORT_API,
            p,
            log,
        )


@contextmanager
def scratch_postgres(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL database bench_<random> for one run (dropped afterwards); yields its URL."""
    import asyncpg

    name = f"bench_{secrets.token_hex(4)}"
    admin_url = admin_url.replace("postgresql+asyncpg://", "postgresql://", 1)

    async def admin(statement: str) -> None:
        connection = await asyncpg.connect(admin_url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    try:
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        raise ServerError(f"cannot create a scratch database through {admin_url}: {exc}") from None
    parts = urlsplit(admin_url)
    try:
        yield urlunsplit(parts._replace(scheme="postgresql", path=f"/{name}"))
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextmanager
def modelport_production(
    work: Path, datasets_dir: Path, database_url: str, redis_url: str, workers: int = 2
) -> Iterator[Server]:
    """modelport as run in production: PostgreSQL, Redis, `--workers 2`, a user's API key (whose
    rate limit an administrator raised so the load is not refused), prediction log on. Jobs run
    elsewhere, as in compose.yaml and deploy/k8s (the API replicas do not poll for them)."""
    var = work / "production"
    var.mkdir(parents=True, exist_ok=True)
    log = work / "modelport-production.log"
    env = clean_env(
        MODELPORT_VAR_DIR=str(var),
        MODELPORT_DATASETS_DIR=str(datasets_dir),
        MODELPORT_DATABASE_URL=database_url,
        MODELPORT_REDIS_URL=redis_url,
        MODELPORT_RUN_JOBS="false",
    )
    admin = ("admin@bench.example.com", secrets.token_urlsafe(24))
    user = ("user@bench.example.com", secrets.token_urlsafe(24))
    run_command([str(MODELPORT), "builtins", "install"], env=env, cwd=var, log=log)
    run_command(
        [str(MODELPORT), "users", "create-admin", "--email", admin[0], "--password-stdin"],
        env=env,
        cwd=var,
        log=log,
        stdin=admin[1] + "\n",
    )
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [str(MODELPORT), "serve", "--port", str(port), "--workers", str(workers)]
    ready = f"{url}/health/ready"
    with launch(argv, env=env, cwd=var, log=log, ready_url=ready, is_ready=_modelport_ready) as p:
        key = _api_key(url, admin, user)
        yield Server(
            "modelport-production",
            f"modelport in production: {workers} workers, PostgreSQL, Redis, API key",
            url,
            _MODELPORT_API,
            p,
            log,
            headers={"X-API-Key": key},
        )


def _api_key(url: str, admin: tuple[str, str], user: tuple[str, str]) -> str:
    """A user registers and creates a predict-only key; the administrator raises its limit."""

    def check(response: httpx.Response) -> dict[str, object]:
        if response.is_error:
            raise ServerError(
                f"{response.request.url.path}: {response.status_code} {response.text}"
            )
        body: dict[str, object] = response.json() if response.content else {}
        return body

    def login(client: httpx.Client, email: str, password: str) -> dict[str, str]:
        tokens = check(
            client.post("/api/v1/auth/login", json={"email": email, "password": password})
        )
        return {"Authorization": f"Bearer {tokens['access_token']}"}

    with httpx.Client(base_url=url, timeout=30) as client:
        check(client.post("/api/v1/auth/register", json={"email": user[0], "password": user[1]}))
        created = check(
            client.post(
                "/api/v1/api-keys",
                json={"name": "benchmark", "scopes": ["predict"]},
                headers=login(client, *user),
            )
        )
        check(
            client.patch(
                f"/api/v1/api-keys/{created['id']}",
                json={"rate_limit_per_minute": 1_000_000},
                headers=login(client, *admin),
            )
        )
    return str(created["key"])


# --- Seldon MLServer ------------------------------------------------------------------------


def ensure_mlserver(venv: Path, scikit_learn: str) -> Path:
    """MLServer in its own virtual environment (created once, reused while the pins match), with
    the scikit-learn that fitted the model. Returns its `mlserver` command."""
    wanted = "\n".join([*MLSERVER_REQUIREMENTS, f"scikit-learn=={scikit_learn}"])
    stamp = venv / ".bench-installed"
    command = venv / "bin" / "mlserver"
    if command.exists() and stamp.exists() and stamp.read_text() == wanted:
        return command
    shutil.rmtree(venv, ignore_errors=True)
    created = subprocess.run(
        [sys.executable, "-m", "venv", str(venv)], capture_output=True, text=True
    )
    if created.returncode != 0:
        raise ServerError(f"cannot create {venv}: {created.stderr.strip()[-500:]}")
    installed = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
         *wanted.splitlines()],
        capture_output=True,
        text=True,
    )  # fmt: skip
    if installed.returncode != 0 or not command.exists():
        shutil.rmtree(venv, ignore_errors=True)
        reason = (installed.stderr.strip().splitlines() or ["unknown error"])[-1]
        raise ServerError(f"pip could not install MLServer {MLSERVER_VERSION}: {reason}")
    stamp.write_text(wanted)
    return command


@contextmanager
def mlserver(work: Path, command: Path, model: Path, batching: bool) -> Iterator[Server]:
    """MLServer's scikit-learn runtime on the joblib file; with ``batching``, adaptive batching of
    up to 32 requests or 5 ms. Its defaults otherwise, but debug off (no per-request log lines)."""
    key = f"mlserver{'-batched' if batching else ''}"
    folder = work / key
    model_dir = folder / WINE
    model_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model, model_dir / "model.joblib")
    port = free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "debug": False,
    }
    model_settings: dict[str, object] = {
        "name": WINE,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
    }
    if batching:
        model_settings.update(max_batch_size=32, max_batch_time=0.005)  # seconds
    (folder / "settings.json").write_text(json.dumps(settings, indent=2))
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2))
    log = work / f"{key}.log"
    url = f"http://127.0.0.1:{port}"
    argv = [str(command), "start", str(folder)]
    ready = f"{url}/v2/models/{WINE}/ready"
    label = f"Seldon MLServer {MLSERVER_VERSION}" + (
        ", adaptive batching 32 / 5 ms" if batching else ""
    )
    with launch(argv, env=clean_env(), cwd=folder, log=log, ready_url=ready) as process:
        infer = f"/v2/models/{WINE}/infer"
        yield Server(
            key,
            label,
            url,
            Api(single=infer, batch=infer, tensors=True),
            process,
            log,
            main_serves=True,
        )
