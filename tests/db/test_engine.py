"""The engine behaves the same on both backends: foreign keys hold, reachability is honest."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError

from modelport.db.engine import create_engine, create_session_factory, database_is_reachable
from modelport.registry.tables import Model, ModelVersion
from tests.helpers import run
from tests.processes import free_port


def _version(model_id: uuid.UUID, number: int) -> ModelVersion:
    return ModelVersion(
        model_id=model_id,
        version=number,
        artifact_uri="file:///nowhere.onnx",
        sha256="0" * 64,
        size_bytes=1,
        flavor="onnx",
        signature={},
    )


async def _delete_model_and_count_versions(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        async with create_session_factory(engine)() as session:
            model = Model(name="doomed", task="regression")
            session.add(model)
            await session.flush()
            session.add_all([_version(model.id, 1), _version(model.id, 2)])
            await session.commit()
            before = await session.scalar(select(func.count()).select_from(ModelVersion))
            await session.execute(delete(Model).where(Model.id == model.id))
            await session.commit()
            after = await session.scalar(select(func.count()).select_from(ModelVersion))
            return int(before or 0), int(after or 0)
    finally:
        await engine.dispose()


async def _add_orphan_version(url: str) -> None:
    engine = create_engine(url)
    try:
        async with create_session_factory(engine)() as session:
            session.add(_version(uuid.uuid4(), 1))
            await session.commit()
    finally:
        await engine.dispose()


async def _reachable(url: str) -> bool:
    engine = create_engine(url)
    try:
        return await database_is_reachable(engine)
    finally:
        await engine.dispose()
        # After a failed connect aiosqlite's worker thread still posts its stop result to this
        # loop; let it land before asyncio.run closes the loop (else: a thread warning).
        await asyncio.sleep(0.1)


def test_deleting_a_model_deletes_its_versions(database_url: str) -> None:
    assert run(_delete_model_and_count_versions(database_url)) == (2, 0)


def test_a_version_of_an_unknown_model_is_refused(database_url: str) -> None:
    with pytest.raises(IntegrityError):
        run(_add_orphan_version(database_url))


def test_a_working_database_is_reachable(database_url: str) -> None:
    assert run(_reachable(database_url)) is True


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_an_unusable_database_is_reported_unreachable(backend: str, tmp_path: Path) -> None:
    url = (
        f"sqlite+aiosqlite:///{tmp_path / 'no-such-folder' / 'modelport.db'}"
        if backend == "sqlite"
        else f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/test"
    )
    assert run(_reachable(url)) is False


def test_the_pool_holds_no_more_connections_than_configured(postgres_url: str) -> None:
    # Replicas x workers x (pool + overflow) must fit the server's max_connections: the settings
    # decide how many connections one process may open, and a burst past them waits its turn.
    async def burst() -> int:
        engine = create_engine(postgres_url, pool_size=2, max_overflow=1)
        opened = 0
        most = 0

        async def hold() -> None:
            nonlocal opened, most
            async with engine.connect() as connection:
                opened += 1
                most = max(most, opened)
                await connection.execute(select(1))
                await asyncio.sleep(0.05)
                opened -= 1

        try:
            await asyncio.gather(*(hold() for _ in range(12)))
        finally:
            await engine.dispose()
        return most

    assert run(burst()) == 3  # two pooled plus one overflow, while all twelve were served
