"""``modelport serve`` as a real process: start it, wait until it is ready, stop it with a signal.

Shared by the CLI tests (tests/cli/test_serve.py), the multi-process harness of the fault tests
and the soak run (benchmarks/soak.py).
"""

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

MODELPORT = Path(sys.executable).with_name("modelport")
STARTUP_DEADLINE_SECONDS = 120.0  # a hang guard, not a performance requirement


class ServerFailed(AssertionError):
    """The server exited or never became ready; the message holds its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(**settings: str) -> dict[str, str]:
    """This process's environment without any MODELPORT_ setting of its own, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env.update(settings)
    return env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    @classmethod
    def launch(
        cls, args: list[str], *, port: int, cwd: Path, env: dict[str, str], log_path: Path
    ) -> Server:
        """``modelport serve <args>`` with its output in ``log_path`` (appended to, so a
        restarted server's log follows the first one's)."""
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [str(MODELPORT), "serve", *args],
                cwd=cwd,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, so teardown reaches workers
            )
        return cls(process, f"http://127.0.0.1:{port}", log_path)

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def wait_until_ready(
        self, deadline_seconds: float = STARTUP_DEADLINE_SECONDS
    ) -> httpx.Response:
        deadline = time.monotonic() + deadline_seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerFailed(
                    f"modelport serve exited with {self.process.returncode}:\n{self.log}"
                )
            try:
                response = httpx.get(f"{self.base_url}/health/ready", timeout=5)
                if response.status_code == 200:
                    return response
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise ServerFailed(f"modelport serve was not ready in time:\n{self.log}")

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def kill(self) -> None:
        """SIGKILL to its whole process group: no shutdown, no flush, as in a crash."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
