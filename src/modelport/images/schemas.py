"""API shapes for image predictions."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ImageStatus = Literal["pending", "completed", "failed"]


class ImageAcceptedOut(BaseModel):
    id: uuid.UUID
    filename: str
    status: ImageStatus
    job_id: uuid.UUID | None
    delete_token: str | None = Field(
        default=None,
        description="Anonymous uploads only, shown only now: send it as X-Delete-Token to "
        "correct or delete this upload. Anyone with the id can read the result.",
    )


class CorrectionOut(BaseModel):
    label: str
    confidence: float
    corrected_by: uuid.UUID | None
    corrected_at: datetime


class ImagePredictionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True, protected_namespaces=())

    id: uuid.UUID
    filename: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    status: ImageStatus
    top_prediction: str | None
    confidence: float | None
    all_predictions: list[dict[str, Any]] | None = Field(
        description="The five most likely labels with probabilities"
    )
    model_name: str
    model_version: str | None
    latency_ms: float | None
    error: str | None
    correction: CorrectionOut | None = None
    created_at: datetime
    completed_at: datetime | None


class ImagePredictionPageOut(BaseModel):
    items: list[ImagePredictionOut]
    total: int
    offset: int
    limit: int


class CorrectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: Annotated[str, Field(min_length=1, max_length=128, examples=["tabby cat"])]
    confidence: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 1.0
