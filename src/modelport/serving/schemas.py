"""API shapes for predictions."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PredictionsOut(BaseModel):
    model_name: str
    model_version: str
    predictions: list[dict[str, Any]] = Field(
        description="One object per input row, keyed by output name",
        examples=[[{"predicted_quality": 5.4}]],
    )
    processing_time_ms: float
    request_id: str
