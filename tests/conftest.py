"""Shared fixtures: every database test runs on SQLite and on the real PostgreSQL.

PostgreSQL comes from MODELPORT_TEST_DATABASE_URL (default: the local server, database test).
When it is unreachable the PostgreSQL half is skipped locally and *fails* when CI=true.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url, text

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine, read_wine_csv, train_wine
from modelport.db.base import Base
from modelport.db.engine import create_engine
from modelport.db.migrate import upgrade
from modelport.settings import Settings
from tests.helpers import (
    json_log_stream,
    read_json_lines,
    register_trained,
    run,
    settings_for,
    wait_until_ready,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
WINE_CSV = (
    Path(os.environ.get("MODELPORT_DATASETS_DIR", REPO_ROOT.parent / "shared" / "datasets"))
    / "winequality-red.csv"
)
POSTGRES_URL = os.environ.get(
    "MODELPORT_TEST_DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def _postgres_reachable(url: str) -> bool:
    async def probe() -> bool:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                await connection.execute(text("SELECT 1"))
            return True
        except Exception:
            return False
        finally:
            await engine.dispose()

    return bool(run(probe()))


async def _admin_execute(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


async def _empty_tables(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
            if url.startswith("postgresql"):
                await connection.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
            else:
                for table in tables:
                    await connection.execute(text(f"DELETE FROM {table}"))
    finally:
        await engine.dispose()


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A scratch database created through MODELPORT_TEST_DATABASE_URL for this pytest run, so
    concurrent runs on one server never see each other's rows; dropped at the end."""
    if not _postgres_reachable(POSTGRES_URL):
        message = f"PostgreSQL is not reachable at {POSTGRES_URL}"
        if IN_CI:
            pytest.fail(message + " (CI=true: the PostgreSQL half of the suite must run)")
        pytest.skip(message)
    base = make_url(POSTGRES_URL)
    scratch = f"{base.database or 'test'}_{uuid.uuid4().hex[:10]}"
    run(_admin_execute(POSTGRES_URL, f'CREATE DATABASE "{scratch}"'))
    url = base.set(database=scratch).render_as_string(hide_password=False)
    upgrade(url)
    yield url
    run(_admin_execute(POSTGRES_URL, f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('sqlite') / 'modelport.db'}"
    upgrade(url)
    return url


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """A migrated, empty database; parametrized so each test runs on both backends."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    run(_empty_tables(url))
    yield url


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str) -> Callable[..., Settings]:
    def factory(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"var_dir": tmp_path / "var", "database_url": database_url}
        values.update(overrides)
        return settings_for(**values)

    return factory


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture(scope="session")
def wine_csv() -> Path:
    if not WINE_CSV.is_file():
        pytest.fail(f"{WINE_CSV} is missing; set MODELPORT_DATASETS_DIR to the UCI wine folder")
    return WINE_CSV


@pytest.fixture(scope="session")
def trained_wine(wine_csv: Path) -> TrainedWine:
    """The built-in model trained once per session (a few seconds)."""
    return train_wine(read_wine_csv(wine_csv))


@pytest.fixture
def wine_registered(settings: Settings, trained_wine: TrainedWine) -> Settings:
    register_trained(settings, trained_wine)
    return settings


@pytest.fixture
def client(wine_registered: Settings) -> Iterator[TestClient]:
    """The app with the wine model registered, started (lifespan) and preloaded."""
    with TestClient(create_app(wine_registered)) as test_client:
        wait_until_ready(test_client)
        yield test_client


@pytest.fixture
def json_logs() -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """The server's own JSON log lines (the format operators read): yields a reader of the
    lines written since the last read."""
    with json_log_stream() as stream:
        yield lambda: read_json_lines(stream)
