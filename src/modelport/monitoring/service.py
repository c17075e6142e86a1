"""Queries over the prediction log."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.errors import NotFoundError
from modelport.monitoring.tables import PredictionRecord

T = TypeVar("T", bound=Any)


def _filtered(
    query: Select[T],
    model: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
) -> Select[T]:
    if model is not None:
        query = query.where(PredictionRecord.model_name == model)
    if status is not None:
        query = query.where(PredictionRecord.status == status)
    if since is not None:
        query = query.where(PredictionRecord.created_at >= since)
    if until is not None:
        query = query.where(PredictionRecord.created_at < until)
    return query


async def list_predictions(
    session: AsyncSession,
    *,
    model: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    offset: int,
    limit: int,
) -> tuple[list[PredictionRecord], int]:
    """Newest first; returns the page and the total matching the filters."""
    total = await session.scalar(
        _filtered(select(func.count()).select_from(PredictionRecord), model, status, since, until)
    )
    page = await session.scalars(
        _filtered(select(PredictionRecord), model, status, since, until)
        .order_by(PredictionRecord.created_at.desc(), PredictionRecord.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return list(page), int(total or 0)


async def get_prediction(session: AsyncSession, prediction_id: uuid.UUID) -> PredictionRecord:
    record = await session.get(PredictionRecord, prediction_id)
    if record is None:
        raise NotFoundError(f"prediction {prediction_id} not found")
    return record
