"""Register datasets and page through their rows."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
from sqlalchemy import insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.auth.principal import Principal
from modelport.datasets.csv_import import parse_csv
from modelport.datasets.tables import Dataset, DatasetRow
from modelport.errors import ConflictError, ForbiddenError, NotFoundError
from modelport.registry.management import NAME_PATTERN, check_name

_INSERT_CHUNK = 1000


async def find_by_sha256(session: AsyncSession, sha256: str) -> Dataset | None:
    return await session.scalar(select(Dataset).where(Dataset.sha256 == sha256).limit(1))


async def register_dataset(
    session: AsyncSession,
    *,
    name: str,
    columns: list[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    splits: Sequence[str | None],
    source: str,
    sha256: str,
    description: str = "",
    public: bool = False,
    owner_id: uuid.UUID | None = None,
) -> Dataset:
    """Store the dataset and all its rows in one transaction (the caller commits)."""
    dataset = Dataset(
        name=name,
        description=description,
        columns=columns,
        row_count=len(rows),
        source=source,
        sha256=sha256,
        public=public,
        owner_id=owner_id,
    )
    session.add(dataset)
    await session.flush()
    payload = [
        {"dataset_id": dataset.id, "row_index": i, "split": split, "values": row}
        for i, (row, split) in enumerate(zip(rows, splits, strict=True))
    ]
    for start in range(0, len(payload), _INSERT_CHUNK):
        await session.execute(insert(DatasetRow), payload[start : start + _INSERT_CHUNK])
    return dataset


async def find_by_name(session: AsyncSession, name: str) -> Dataset | None:
    if "\x00" in name:  # no stored name holds NUL, and PostgreSQL refuses it in a query
        return None
    return await session.scalar(select(Dataset).where(Dataset.name == name))


async def get_dataset(session: AsyncSession, name: str) -> Dataset:
    dataset = await find_by_name(session, name)
    if dataset is None:
        raise NotFoundError(f"dataset {name!r} not found")
    return dataset


async def get_visible_dataset(session: AsyncSession, viewer: Principal, name: str) -> Dataset:
    """The dataset if ``viewer`` may see it; otherwise the same 404 as a missing one."""
    dataset = await get_dataset(session, name)
    if not viewer.can_see(dataset.owner_id, dataset.public):
        raise NotFoundError(f"dataset {name!r} not found")
    return dataset


async def list_datasets(session: AsyncSession, viewer: Principal) -> list[Dataset]:
    query = select(Dataset).order_by(Dataset.name)
    if not viewer.is_admin:
        query = query.where(or_(Dataset.public.is_(True), Dataset.owner_id == viewer.user_id))
    return list(await session.scalars(query))


async def get_rows(
    session: AsyncSession, dataset: Dataset, offset: int, limit: int
) -> list[DatasetRow]:
    result = await session.scalars(
        select(DatasetRow)
        .where(DatasetRow.dataset_id == dataset.id)
        .order_by(DatasetRow.row_index)
        .offset(offset)
        .limit(limit)
    )
    return list(result)


async def import_csv(
    sessions: async_sessionmaker[AsyncSession],
    owner: Principal,
    upload: CsvUpload,
    max_rows: int,
) -> Dataset:
    """Register an uploaded CSV as a dataset owned by ``owner``: one unit of work."""
    if owner.is_anonymous:
        raise ForbiddenError("sign in to register datasets")
    check_name(upload.name, "dataset name", NAME_PATTERN)
    async with sessions() as session:
        if await find_by_name(session, upload.name) is not None:
            raise ConflictError(f"a dataset named {upload.name!r} already exists")
    # Parsing a large CSV takes seconds of CPU: a worker thread, not the event loop.
    parsed = await anyio.to_thread.run_sync(parse_csv, upload.data, max_rows)
    async with sessions() as session:
        dataset = await register_dataset(
            session,
            name=upload.name,
            columns=parsed.columns,
            rows=parsed.rows,
            splits=[None] * len(parsed.rows),
            source=f"upload:{(upload.filename or 'data.csv')[:200]}",
            sha256=parsed.sha256,
            description=upload.description,
            public=upload.public,
            owner_id=owner.user_id,
        )
        await session.commit()
    return dataset


@dataclass(frozen=True)
class CsvUpload:
    name: str
    description: str
    public: bool
    filename: str | None
    data: bytes
