"""Real processes for tests: a free loopback port, ``modelport serve`` started with an
environment of our own, waited for until it answers, and killed like a crash.

Used by the CLI, HTTP and serving tests and by the multi-process harness (tests/system/)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

MODELPORT = Path(sys.executable).with_name("modelport")
STARTUP_DEADLINE_SECONDS = 120.0  # a hang guard, not a performance requirement


def free_port() -> int:
    """A loopback port nothing listens on right now: for a server to take, or for a connection
    that is refused."""
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


def environment(**settings: str) -> dict[str, str]:
    """This process's environment without any MODELPORT_ setting of its own, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env.update(settings)
    return env


def launch(
    args: list[str],
    *,
    port: int,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    command: list[str] | None = None,
) -> Server:
    """``modelport serve <args>`` (``command`` in place of ``modelport``) with its output
    appended to ``log_path`` (a restarted server's log follows the first one's); not yet
    ready."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [*(command or [str(MODELPORT)]), "serve", *args],
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a kill reaches its workers
        )
    return Server(process, f"http://127.0.0.1:{port}", log_path)


def running(server: Server) -> bool:
    return server.process.poll() is None


def kill(server: Server) -> None:
    """SIGKILL to its whole process group: no shutdown, no flush, as in a crash."""
    if running(server):
        os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait()
