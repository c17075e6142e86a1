"""Read the prediction log."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.auth.dependencies import SignedInReader
from modelport.db.dependencies import get_session
from modelport.monitoring import service
from modelport.monitoring.schemas import (
    PredictionPageOut,
    PredictionRecordOut,
    PredictionStatus,
    UtcTime,
)

router = APIRouter(prefix="/api/v1/predictions", tags=["prediction log"])
Session = Annotated[AsyncSession, Depends(get_session)]


@router.get("", response_model=PredictionPageOut, summary="List logged predictions, newest first")
async def list_predictions(
    session: Session,
    viewer: SignedInReader,
    model: Annotated[str | None, Query(max_length=128, description="Model name")] = None,
    status: Annotated[PredictionStatus | None, Query()] = None,
    since: Annotated[UtcTime | None, Query(description="ISO-8601, inclusive")] = None,
    until: Annotated[UtcTime | None, Query(description="ISO-8601, exclusive")] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> PredictionPageOut:
    records, total = await service.list_predictions(
        session,
        viewer,
        model=model,
        status=status,
        since=since,
        until=until,
        offset=offset,
        limit=limit,
    )
    return PredictionPageOut(
        items=[PredictionRecordOut.model_validate(r) for r in records],
        total=total,
        offset=offset,
        limit=limit,
    )


@router.get("/{prediction_id}", response_model=PredictionRecordOut, summary="One prediction")
async def get_prediction(
    prediction_id: uuid.UUID, session: Session, viewer: SignedInReader
) -> PredictionRecordOut:
    record = await service.get_prediction(session, viewer, prediction_id)
    return PredictionRecordOut.model_validate(record)
