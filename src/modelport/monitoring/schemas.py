"""API shapes for the prediction log and health probes."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

PredictionStatus = Literal["success", "invalid_input", "error"]


def _not_a_number(value: Any) -> Any:
    """Pydantic would read ``until=0.5`` as half a second after 1970: only ISO-8601 is meant."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("use an ISO-8601 time such as 2024-05-01T12:00:00Z, not a number")
    return value


def _in_utc(moment: datetime) -> datetime:
    """A time without a zone is read as UTC, like every stored time; a zoned one is converted,
    which for the first or last hours of the calendar leaves the range datetimes can hold."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError("the time is outside the years 1 to 9999 once converted to UTC") from None


# A time filter from a query string: ISO-8601, compared in UTC.
UtcTime = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_in_utc)]


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
    required: bool = Field(
        default=True,
        description="Whether this process cannot serve its loaded models while it is down",
    )
    impact: str | None = Field(
        default=None, description="While it is down: what does not work, and what still does"
    )
    detail: dict[str, Any] = Field(default={}, description="For operators only")


class HealthOut(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="ok: every component is up; degraded: at least one is down"
    )
    ready: bool = Field(
        description="This process can serve its loaded models (what /health/ready answers 200 "
        "or 503 on): every required component is up"
    )
    components: dict[str, ComponentOut]
