"""The whole system on 127.0.0.1, with parts that can be taken away and given back.

Two ``modelport serve`` processes answer predictions and a third runs the durable jobs; they
share a fresh PostgreSQL database (reached through a TCP proxy, so connections can be cut), a
private ``redis-server`` (stopped and started again without touching anyone else's Redis) and a
moto S3 server (its state lives in this process, so it survives a stop and start). ``Load``
sends wine predictions with an API key from a few threads and counts the answers.

Used by tests/system/test_faults.py and benchmarks/soak.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from moto.server import ThreadedMotoServer
from sqlalchemy import make_url, text

from modelport.auth import service as auth_service
from modelport.builtin.wine import TrainedWine, register_wine
from modelport.db.engine import create_engine, create_session_factory
from modelport.db.migrate import upgrade
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from tests.helpers import WINE_ROW, wait_until
from tests.monitoring.tcp_proxy import TcpProxy
from tests.processes import Server, environment, free_port, kill, launch, running
from tests.storage.s3_server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY

WINE = "wine-quality"
METRICS_TOKEN = "metrics-token-for-the-system-tests-0123456789"
OPERATOR = {"Authorization": f"Bearer {METRICS_TOKEN}"}
ADMIN_EMAIL = "operator@example.com"
ADMIN_PASSWORD = "correct horse battery staple"
NOTHING_KEPT = ["--save", "", "--appendonly", "no"]  # a Redis that forgets when stopped
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


# Seconds between looks when waiting on the system: each look is a request or a query to it.
LOOK_EVERY = 0.1


# --- the dependencies ------------------------------------------------------------------------


class RedisServer:
    """A private redis-server on its own port: nothing saved, nothing shared."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", *NOTHING_KEPT],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_until(self.answers, "redis-server answering PING", 10, LOOK_EVERY)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)
        self.process = None

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def keys(self) -> int:
        """How many keys Redis holds (the rate limiter's buckets once it uses Redis)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(b"DBSIZE\r\n")
            reply = sock.recv(64)
        return int(reply.strip().lstrip(b":"))


class S3Server:
    """moto's S3 in this process: stop() refuses connections; start() serves again on the same
    port with the same buckets and objects (moto keeps them in this process's memory)."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: ThreadedMotoServer | None = None
        self.bucket = f"modelport-{uuid.uuid4().hex[:12]}"

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per S3 request
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            wsgi_server = getattr(self._server, "_server", None)
            if wsgi_server is not None:
                wsgi_server.server_close()  # refused at once, as with a server that went away
            self._server = None

    def create_bucket(self) -> None:
        import boto3

        boto3.session.Session(
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
            region_name=REGION,
        ).client("s3", endpoint_url=self.endpoint_url).create_bucket(Bucket=self.bucket)


class Database:
    """A fresh PostgreSQL database for one harness, created through ``admin_url``."""

    def __init__(self, admin_url: str) -> None:
        base = make_url(admin_url)
        self.admin_url = admin_url
        self.name = f"{base.database or 'test'}_system_{uuid.uuid4().hex[:8]}"
        self.url = base.set(database=self.name).render_as_string(hide_password=False)

    def create(self) -> None:
        asyncio.run(_autocommit(self.admin_url, f'CREATE DATABASE "{self.name}"'))
        upgrade(self.url)

    def drop(self) -> None:
        asyncio.run(
            _autocommit(self.admin_url, f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        )

    def scalar(self, statement: str, **params: Any) -> Any:
        """One value from the database itself (never through the proxy)."""

        async def query() -> Any:
            engine = create_engine(self.url)
            try:
                async with engine.connect() as connection:
                    return (await connection.execute(text(statement), params)).scalar()
            finally:
                await engine.dispose()

        return asyncio.run(query())

    def logged_successes(self, prefix: str) -> int:
        """Prediction log rows of successful answers whose request id starts with ``prefix``."""
        return int(
            self.scalar(
                "SELECT count(*) FROM predictions WHERE status = 'success' "
                "AND request_id LIKE :pattern",
                pattern=f"{prefix}-%",
            )
        )

    def connections(self) -> int:
        """Open server connections to this database (pg_stat_activity)."""
        return int(
            self.scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = :name", name=self.name
            )
        )


async def _autocommit(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


# --- the system ------------------------------------------------------------------------------


class System:
    """Two API servers and one job runner on the shared dependencies."""

    def __init__(
        self,
        root: Path,
        admin_database_url: str,
        trained_wine: TrainedWine,
        *,
        job_lease_seconds: float = 3.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.root = root
        self.trained_wine = trained_wine
        self.database = Database(admin_database_url)
        self.redis = RedisServer(root / "redis.log")
        self.s3 = S3Server()
        upstream = make_url(self.database.url)
        self.proxy = TcpProxy(upstream.host or "127.0.0.1", upstream.port or 5432)
        self.job_lease_seconds = job_lease_seconds
        self.extra_env = extra_env or {}
        self.ports: dict[str, int] = {}
        self.overrides: dict[str, dict[str, str]] = {}  # settings of one process only
        self.processes: dict[str, Server] = {}
        self.api_key = ""
        self.admin: dict[str, str] = {}
        self.jwt_secret = uuid.uuid4().hex + uuid.uuid4().hex

    # Which process is which: "a" and "b" answer the load, "runner" runs the jobs.
    @property
    def servers(self) -> list[Server]:
        return [self.processes["a"], self.processes["b"]]

    @property
    def runner(self) -> Server:
        return self.processes["runner"]

    def start(self) -> None:
        self.database.create()
        self.proxy.start()
        self.redis.start()
        self.s3.start()
        self.s3.create_bucket()
        self._register_wine_and_admin()
        for name in ("a", "b", "runner"):
            self.ports[name] = free_port()
            self.launch(name)
        for server in self.processes.values():
            server.wait_until_ready()
        self.admin = self._sign_in()
        self.api_key = self._create_api_key()

    def stop(self) -> None:
        for server in self.processes.values():
            with contextlib.suppress(Exception):
                kill(server)
        self.proxy.stop()
        self.redis.stop()
        self.s3.stop()
        with contextlib.suppress(Exception):
            self.database.drop()

    def settings(self, **overrides: Any) -> Settings:
        """What the processes use, for this process (registration, admin account)."""
        values: dict[str, Any] = {
            "var_dir": self.root / "setup",
            "database_url": self.database.url,
            "artifact_store": f"s3://{self.s3.bucket}/models",
            "s3_endpoint_url": self.s3.endpoint_url,
            "s3_access_key_id": ACCESS_KEY_ID,
            "s3_secret_access_key": SECRET_ACCESS_KEY,
            "s3_region": REGION,
        }
        values.update(overrides)
        return Settings(**values)

    def env(self, name: str) -> dict[str, str]:
        proxied = make_url(self.database.url).set(host="127.0.0.1", port=self.proxy.port)
        env = environment(
            MODELPORT_VAR_DIR=str(self.root / name),
            MODELPORT_HOST="127.0.0.1",
            MODELPORT_PORT=str(self.ports[name]),
            MODELPORT_WORKERS="1",
            MODELPORT_DATABASE_URL=proxied.render_as_string(hide_password=False),
            MODELPORT_REDIS_URL=self.redis.url,
            MODELPORT_ARTIFACT_STORE=f"s3://{self.s3.bucket}/models",
            MODELPORT_S3_ENDPOINT_URL=self.s3.endpoint_url,
            MODELPORT_S3_ACCESS_KEY_ID=ACCESS_KEY_ID,
            MODELPORT_S3_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
            MODELPORT_S3_REGION=REGION,
            MODELPORT_S3_CONNECT_TIMEOUT="1",
            MODELPORT_JWT_SECRET=self.jwt_secret,  # a token from one replica works on all
            MODELPORT_METRICS_TOKEN=METRICS_TOKEN,
            MODELPORT_LOG_FORMAT="text",
            MODELPORT_RUN_JOBS="true" if name == "runner" else "false",
            MODELPORT_JOB_POLL_SECONDS="0.2",
            MODELPORT_JOB_LEASE_SECONDS=str(self.job_lease_seconds),
            MODELPORT_HEALTH_CHECK_SECONDS="0.5",
            MODELPORT_SHUTDOWN_FLUSH_SECONDS="5",
            MODELPORT_INFERENCE_POOL_THREADS="2",
            # A few seconds without the database overflow this many log rows to the spool file,
            # so an outage takes the whole way: buffered, spooled, replayed.
            MODELPORT_PREDICTION_LOG_BUFFER="100",
            # The load must not meet the limits; what the limiter does without Redis is tested.
            MODELPORT_RATE_LIMIT_API_KEY_PER_MINUTE="10000000",
            MODELPORT_RATE_LIMIT_USER_PER_MINUTE="10000000",
            MODELPORT_RATE_LIMIT_ANONYMOUS_PER_MINUTE="10000000",
        )
        env.update(self.extra_env)
        env.update(self.overrides.get(name, {}))
        return env

    def launch(self, name: str) -> Server:
        """Start (or start again) process ``name`` on its port and var dir; not yet ready."""
        (self.root / name).mkdir(exist_ok=True)
        server = launch(
            [],
            port=self.ports[name],
            cwd=self.root,
            env=self.env(name),
            log_path=self.root / f"{name}.log",
        )
        self.processes[name] = server
        return server

    def restart(self, name: str, **settings: str) -> Server:
        """Stop process ``name`` (if running) and start it again, with ``settings`` added to
        its environment from now on; back once ready."""
        if settings:
            self.overrides.setdefault(name, {}).update(settings)
        previous = self.processes.get(name)
        if previous is not None and running(previous):
            previous.terminate()
        server = self.launch(name)
        server.wait_until_ready()
        return server

    def _register_wine_and_admin(self) -> None:
        settings = self.settings()

        async def register() -> None:
            engine = create_engine(settings.database_url)
            try:
                async with create_session_factory(engine)() as session:
                    await register_wine(
                        session, open_artifact_store(settings), self.trained_wine, WINE
                    )
                    await auth_service.create_user(
                        session, ADMIN_EMAIL, ADMIN_PASSWORD, role="admin"
                    )
                    await session.commit()
            finally:
                await engine.dispose()

        asyncio.run(register())

    def _sign_in(self) -> dict[str, str]:
        response = httpx.post(
            f"{self.servers[0].base_url}/api/v1/auth/login",
            json={"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD},
            timeout=30,
        )
        response.raise_for_status()
        return {"Authorization": f"Bearer {response.json()['access_token']}"}

    def _create_api_key(self) -> str:
        response = httpx.post(
            f"{self.servers[0].base_url}/api/v1/api-keys",
            json={"name": "load", "scopes": ["predict", "read"]},
            headers=self.admin,
            timeout=30,
        )
        response.raise_for_status()
        return str(response.json()["key"])

    # --- what an operator looks at ---------------------------------------------------------

    def ready(self, server: Server) -> int:
        try:
            return httpx.get(f"{server.base_url}/health/ready", timeout=5).status_code
        except httpx.TransportError:
            return 0

    def health(self, server: Server) -> dict[str, Any]:
        response = httpx.get(f"{server.base_url}/health", headers=OPERATOR, timeout=5)
        components: dict[str, Any] = response.json()["components"]
        return components

    def metric(self, name: str, **labels: str) -> float:
        """The sum of one series over the API servers (each has its own metrics directory)."""
        wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
        pattern = re.compile(rf"^{re.escape(name)}\{{([^}}]*)\}} (\S+)$", re.MULTILINE)
        total = 0.0
        for server in self.servers:
            exposition = httpx.get(f"{server.base_url}/metrics", headers=OPERATOR, timeout=10)
            for found in pattern.finditer(exposition.text):
                series = ",".join(sorted(found.group(1).split(",")))
                if series == wanted:
                    total += float(found.group(2))
        return total


@contextlib.contextmanager
def running_system(
    root: Path, admin_database_url: str, trained_wine: TrainedWine, **options: Any
) -> Iterator[System]:
    system = System(root, admin_database_url, trained_wine, **options)
    try:
        system.start()
        yield system
    finally:
        system.stop()


# --- the load --------------------------------------------------------------------------------


@dataclass
class LoadReport:
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    # (server base URL, status) -> answers
    by_server: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    transport_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    answered_ok: list[str] = field(default_factory=list)  # request ids of the 200 answers
    bodies: dict[int, str] = field(default_factory=dict)  # one body per status, for messages
    retry_after_missing: int = 0  # 503 or 429 answers without Retry-After
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def sent(self) -> int:
        return sum(self.statuses.values()) + sum(self.transport_errors.values())

    @property
    def ok(self) -> int:
        return self.statuses[200]

    def of(self, server: Server) -> dict[int, int]:
        """The answers ``server`` gave, by status."""
        return {status: n for (url, status), n in self.by_server.items() if url == server.base_url}

    def p99_ms(self) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]

    def summary(self) -> str:
        rate = self.sent / self.seconds if self.seconds else 0.0
        return (
            f"sent {self.sent} in {self.seconds:.1f} s ({rate:.0f}/s), "
            f"statuses {dict(sorted(self.statuses.items()))}, "
            f"transport errors {dict(self.transport_errors)}, p99 {self.p99_ms():.1f} ms"
        )


class Load:
    """Wine predictions with an API key from ``threads`` threads, spread over ``servers``, until
    stop() (or ``max_seconds``, a bound). Each request id is ``<prefix>-<thread>-<n>``, so the
    log rows of one run can be counted."""

    def __init__(
        self,
        system: System,
        prefix: str,
        *,
        threads: int = 6,
        servers: list[Server] | None = None,
        max_seconds: float = 120.0,
        anonymous: bool = False,
    ) -> None:
        self.system = system
        self.prefix = prefix
        self.urls = [
            f"{s.base_url}/api/v1/models/{WINE}/predict" for s in servers or system.servers
        ]
        self.threads = threads
        self.max_seconds = max_seconds
        self.anonymous = anonymous  # no API key: the wine model is public
        self.report = LoadReport()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers: list[threading.Thread] = []
        self._started = 0.0

    def start(self) -> Load:
        self._started = time.monotonic()
        for index in range(self.threads):
            worker = threading.Thread(target=self._send, args=(index,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def stop(self) -> LoadReport:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)
        self.report.seconds = time.monotonic() - self._started
        return self.report

    def statuses(self) -> dict[int, int]:
        """The answers so far, by status."""
        with self._lock:
            return dict(self.report.statuses)

    def __enter__(self) -> Load:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _send(self, index: int) -> None:
        headers = {} if self.anonymous else {"X-API-Key": self.system.api_key}
        deadline = self._started + self.max_seconds
        with httpx.Client(timeout=30) as client:
            n = 0
            while not self._stop.is_set() and time.monotonic() < deadline:
                url = self.urls[(index + n) % len(self.urls)]
                request_id = f"{self.prefix}-{index}-{n}"
                n += 1
                started = time.perf_counter()
                try:
                    response = client.post(
                        url, json=WINE_ROW, headers={**headers, "X-Request-ID": request_id}
                    )
                except httpx.TransportError as exc:
                    with self._lock:
                        self.report.transport_errors[type(exc).__name__] += 1
                    time.sleep(0.05)  # a server that is down: do not spin
                    continue
                elapsed = time.perf_counter() - started
                with self._lock:
                    self._count(response, request_id, elapsed)

    def _count(self, response: httpx.Response, request_id: str, elapsed: float) -> None:
        report = self.report
        report.statuses[response.status_code] += 1
        server = f"{response.request.url.scheme}://{response.request.url.netloc.decode()}"
        report.by_server[(server, response.status_code)] += 1
        report.latencies.append(elapsed)
        if response.status_code == 200:
            report.answered_ok.append(request_id)
        else:
            report.bodies.setdefault(response.status_code, response.text[:500])
            if response.status_code in (429, 503) and "retry-after" not in response.headers:
                report.retry_after_missing += 1


def process_figures(pid: int) -> dict[str, int]:
    """RSS (bytes) and open file descriptors of a process and its children, from /proc."""
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(child) for child in children.read_text().split()]
    rss = fds = 0
    for each in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1]) * 1024
            fds += len(os.listdir(f"/proc/{each}/fd"))
    return {"rss_bytes": rss, "open_fds": fds}
