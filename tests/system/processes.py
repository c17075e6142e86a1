"""``modelport serve`` processes for the multi-process harness, on the CLI tests' ``Server``
(tests/cli/support.py): started with an environment of our own, killed like a crash."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from tests.cli.support import MODELPORT, Server, free_port

__all__ = ["Server", "environment", "free_port", "kill", "launch", "running"]


def environment(**settings: str) -> dict[str, str]:
    """This process's environment without any MODELPORT_ setting of its own, plus ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env.update(settings)
    return env


def launch(args: list[str], *, port: int, cwd: Path, env: dict[str, str], log_path: Path) -> Server:
    """``modelport serve <args>`` with its output appended to ``log_path`` (a restarted
    server's log follows the first one's); not yet ready."""
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            [str(MODELPORT), "serve", *args],
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
