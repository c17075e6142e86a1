"""A real ``modelport serve`` process for tests: started on a free port with a wine model
registered, waited for, and killed (with its workers) at teardown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from modelport.builtin.wine import TrainedWine
from modelport.db.migrate import upgrade
from modelport.settings import Settings
from tests.helpers import METRICS_TOKEN, register_trained

MODELPORT = Path(sys.executable).with_name("modelport")
STARTUP_DEADLINE_SECONDS = 120.0  # a hang guard, not a performance requirement


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def wait_until_ready(self) -> httpx.Response:
        deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"modelport serve exited with {self.process.returncode}:\n{self.log}")
            try:
                response = httpx.get(f"{self.base_url}/health/ready", timeout=5)
                if response.status_code == 200:
                    return response
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        pytest.fail(f"modelport serve was not ready in time:\n{self.log}")

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)


def make_wine_home(var: Path, trained_wine: TrainedWine) -> Path:
    """A var dir whose SQLite registry holds the wine model as production v1."""
    settings = Settings(
        var_dir=var,
        database_url=f"sqlite+aiosqlite:///{var / 'modelport.db'}",
        artifact_store=(var / "artifacts").as_uri(),
    )
    var.mkdir()
    upgrade(settings.database_url)
    register_trained(settings, trained_wine)
    return var


def serve_processes(logs_dir: Path, wine_home: Path) -> Iterator[Callable[..., Server]]:
    """For a fixture: ``start(*args, port=..., extra_env=...)`` runs ``modelport serve`` (or
    ``command`` in place of ``modelport``); every server started is killed when the fixture ends."""
    servers: list[Server] = []

    def start(
        *args: str,
        port: int,
        extra_env: dict[str, str] | None = None,
        command: list[str] | None = None,
    ) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
        env.update(
            MODELPORT_VAR_DIR=str(wine_home),
            MODELPORT_LOG_FORMAT="text",
            # Only the shutdown flush can write the log rows within this test.
            MODELPORT_PREDICTION_LOG_FLUSH_SECONDS="3600",
            MODELPORT_METRICS_TOKEN=METRICS_TOKEN,  # which models are loaded is for operators
        )
        env.update(extra_env or {})
        log_path = logs_dir / f"serve-{len(servers)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [*(command or [str(MODELPORT)]), "serve", *args],
                cwd=logs_dir,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so teardown reaches workers
            )
        server = Server(process, f"http://127.0.0.1:{port}", log_path)
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.process.poll() is None:
            os.killpg(server.process.pid, signal.SIGKILL)
            server.process.wait()
