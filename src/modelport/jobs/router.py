"""Job status."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, ConfigDict
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.auth.dependencies import Reader
from modelport.db.dependencies import get_session
from modelport.jobs import service

router = APIRouter(prefix="/api/v1/jobs", tags=["jobs"])


class JobOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    kind: str
    status: str
    attempts: int
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@router.get("/{job_id}", response_model=JobOut, summary="A background job's state")
async def get_job(
    job_id: uuid.UUID,
    viewer: Reader,
    session: Annotated[AsyncSession, Depends(get_session)],
) -> JobOut:
    return JobOut.model_validate(await service.get_visible_job(session, viewer, job_id))
