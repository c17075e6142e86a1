"""Queries over the prediction log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.auth.principal import Principal
from modelport.errors import NotFoundError
from modelport.monitoring.tables import PredictionRecord

T = TypeVar("T", bound=Any)


def _as_utc(moment: datetime | None) -> datetime | None:
    """A time without a zone (``since=2024-05-01T12:00``) is read as UTC, like every stored time."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _filtered(
    query: Select[T],
    model: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
) -> Select[T]:
    if model is not None:
        # Names are logged with NUL made visible (PostgreSQL text cannot hold it): match that.
        query = query.where(PredictionRecord.model_name == model.replace("\x00", "\ufffd"))
    if status is not None:
        query = query.where(PredictionRecord.status == status)
    since, until = _as_utc(since), _as_utc(until)
    if since is not None:
        query = query.where(PredictionRecord.created_at >= since)
    if until is not None:
        query = query.where(PredictionRecord.created_at < until)
    return query


def _visible_to(query: Select[T], viewer: Principal) -> Select[T]:
    """Admins read the whole log; everyone else the predictions they made themselves."""
    if viewer.is_admin:
        return query
    return query.where(PredictionRecord.user_id == viewer.user_id)


async def list_predictions(
    session: AsyncSession,
    viewer: Principal,
    *,
    model: str | None,
    status: str | None,
    since: datetime | None,
    until: datetime | None,
    offset: int,
    limit: int,
) -> tuple[list[PredictionRecord], int]:
    """Newest first; returns the page and the total matching the filters."""
    count = select(func.count()).select_from(PredictionRecord)
    total = await session.scalar(_visible_to(_filtered(count, model, status, since, until), viewer))
    page = await session.scalars(
        _visible_to(_filtered(select(PredictionRecord), model, status, since, until), viewer)
        .order_by(PredictionRecord.created_at.desc(), PredictionRecord.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return list(page), int(total or 0)


async def get_prediction(
    session: AsyncSession, viewer: Principal, prediction_id: uuid.UUID
) -> PredictionRecord:
    record = await session.get(PredictionRecord, prediction_id)
    if record is None or not (viewer.is_admin or record.user_id == viewer.user_id):
        raise NotFoundError(f"prediction {prediction_id} not found")
    return record
