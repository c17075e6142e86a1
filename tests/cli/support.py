"""A real ``modelport serve`` process for tests (tests/processes.py) with a wine model
registered, killed (with its workers) at teardown."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from modelport.builtin.wine import TrainedWine
from modelport.db.migrate import upgrade
from modelport.settings import Settings
from tests.helpers import METRICS_TOKEN, register_trained
from tests.processes import Server, environment, kill, launch


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
        env = environment(
            MODELPORT_VAR_DIR=str(wine_home),
            MODELPORT_LOG_FORMAT="text",
            # Only the shutdown flush can write the log rows within this test.
            MODELPORT_PREDICTION_LOG_FLUSH_SECONDS="3600",
            MODELPORT_METRICS_TOKEN=METRICS_TOKEN,  # which models are loaded is for operators
        )
        env.update(extra_env or {})
        log_path = logs_dir / f"serve-{len(servers)}.log"
        server = launch(
            list(args), port=port, cwd=logs_dir, env=env, log_path=log_path, command=command
        )
        servers.append(server)
        return server

    yield start
    for server in servers:
        kill(server)
