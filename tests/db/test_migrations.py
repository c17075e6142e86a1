"""Alembic migrations build exactly the schema the ORM expects, on SQLite and PostgreSQL.

These tests run on databases of their own (a fresh SQLite file, a scratch PostgreSQL database)
so the session database other tests use stays migrated at head and empty.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, make_url, text

import modelport.app  # noqa: F401 - registers every table the app uses
from modelport.db.base import Base
from modelport.db.engine import create_engine
from modelport.db.migrate import alembic_config, downgrade, upgrade
from tests.helpers import run


def _app_tables() -> set[str]:
    """Every table the running app uses, as the app itself imports them."""
    return {table.name for table in Base.metadata.sorted_tables}


async def _admin(url: str, statement: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@pytest.fixture
def scratch_postgres_url(postgres_url: str) -> Iterator[str]:
    """An empty database of its own on the test server, dropped afterwards."""
    name = f"modelport_migrations_{uuid.uuid4().hex[:12]}"
    run(_admin(postgres_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    finally:
        run(_admin(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
    url: str = request.getfixturevalue("scratch_postgres_url")
    return url


def _inspect(url: str, look: Any) -> Any:
    async def inspect_database() -> Any:
        engine = create_engine(url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(look)
        finally:
            await engine.dispose()

    return run(inspect_database())


def _schema_differences(connection: Connection) -> list[str]:
    """What autogenerate would put in a new migration, one readable line per change."""
    context = MigrationContext.configure(
        connection, opts={"compare_type": True, "compare_server_default": True}
    )
    lines = []
    for diff in compare_metadata(context, Base.metadata):
        for change in diff if isinstance(diff, list) else [diff]:
            # ("add_table", Table) / ("modify_default", schema, table, column, ...) / ...
            lines.append(" ".join(str(part) for part in change[:4] if part is not None))
    return lines


def _table_names(connection: Connection) -> set[str]:
    return set(inspect(connection).get_table_names())


def _current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _head() -> str:
    head = ScriptDirectory.from_config(alembic_config("unused")).get_current_head()
    assert head is not None
    return head


def test_upgrade_builds_exactly_the_orm_schema(empty_database_url: str) -> None:
    upgrade(empty_database_url)

    assert _inspect(empty_database_url, _schema_differences) == []
    assert _inspect(empty_database_url, _table_names) == _app_tables() | {"alembic_version"}
    assert _inspect(empty_database_url, _current_revision) == _head()


def test_downgrade_to_base_and_upgrade_again(empty_database_url: str) -> None:
    upgrade(empty_database_url)

    downgrade(empty_database_url, "base")
    assert _inspect(empty_database_url, _table_names) == {"alembic_version"}
    assert _inspect(empty_database_url, _current_revision) is None

    upgrade(empty_database_url)
    assert _inspect(empty_database_url, _schema_differences) == []
    assert _inspect(empty_database_url, _current_revision) == _head()


def test_upgrading_twice_changes_nothing(empty_database_url: str) -> None:
    upgrade(empty_database_url)
    upgrade(empty_database_url)

    assert _inspect(empty_database_url, _schema_differences) == []


def test_replicas_migrating_at_once_take_turns(scratch_postgres_url: str, tmp_path: Path) -> None:
    # Three replicas starting together against an empty database: each runs the migrations, one
    # builds the schema and the others find it at head; none fails on a half-built table.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELPORT_")}
    env |= {"MODELPORT_DATABASE_URL": scratch_postgres_url, "MODELPORT_VAR_DIR": str(tmp_path)}
    command = [str(Path(sys.executable).with_name("modelport")), "db", "upgrade"]
    replicas = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(3)
    ]
    outputs = [replica.communicate(timeout=120)[0].decode() for replica in replicas]

    assert [replica.returncode for replica in replicas] == [0, 0, 0], "\n".join(outputs)
    assert _inspect(scratch_postgres_url, _schema_differences) == []
    assert _inspect(scratch_postgres_url, _current_revision) == _head()
