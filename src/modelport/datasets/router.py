"""Browse registered datasets."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.auth.dependencies import Reader
from modelport.datasets import service
from modelport.datasets.schemas import DatasetListOut, DatasetOut, DatasetRowOut, DatasetRowsOut
from modelport.dependencies import get_session

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])
Session = Annotated[AsyncSession, Depends(get_session)]
DatasetName = Annotated[str, Path(max_length=128, description="Dataset name")]


@router.get("", response_model=DatasetListOut, summary="List datasets")
async def list_datasets(session: Session, viewer: Reader) -> DatasetListOut:
    items = [DatasetOut.model_validate(d) for d in await service.list_datasets(session, viewer)]
    return DatasetListOut(items=items)


@router.get("/{name}", response_model=DatasetOut, summary="One dataset's schema and size")
async def get_dataset(name: DatasetName, session: Session, viewer: Reader) -> DatasetOut:
    return DatasetOut.model_validate(await service.get_visible_dataset(session, viewer, name))


@router.get("/{name}/rows", response_model=DatasetRowsOut, summary="Page through a dataset's rows")
async def get_rows(
    name: DatasetName,
    session: Session,
    viewer: Reader,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DatasetRowsOut:
    dataset = await service.get_visible_dataset(session, viewer, name)
    rows = await service.get_rows(session, dataset, offset, limit)
    return DatasetRowsOut(
        dataset=dataset.name,
        total=dataset.row_count,
        offset=offset,
        limit=limit,
        rows=[DatasetRowOut.model_validate(r) for r in rows],
    )
