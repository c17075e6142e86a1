"""API shapes for the prediction log and health probes."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

PredictionStatus = Literal["success", "invalid_input", "error"]


class PredictionRecordOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    request_id: str
    model_name: str
    model_version: str | None
    inputs: Any
    outputs: Any
    latency_ms: float
    status: str
    error: str | None
    created_at: datetime
    user_id: uuid.UUID | None
    api_key_id: uuid.UUID | None
    client_address: str | None


class PredictionPageOut(BaseModel):
    items: list[PredictionRecordOut]
    total: int
    offset: int
    limit: int


class RootStatusOut(BaseModel):
    status: Literal["ok", "degraded"]
    model_loaded: bool
    database_connected: bool
    version: str


class ComponentOut(BaseModel):
    status: Literal["up", "down"]
    detail: dict[str, Any] = {}


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"]
    components: dict[str, ComponentOut]
