"""API shapes for datasets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class DatasetOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    description: str
    columns: list[dict[str, Any]]
    row_count: int
    public: bool
    source: str
    sha256: str
    created_at: datetime


class DatasetListOut(BaseModel):
    items: list[DatasetOut]


class DatasetRowOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    row_index: int
    split: str | None
    values: dict[str, Any]


class DatasetRowsOut(BaseModel):
    dataset: str
    total: int
    offset: int
    limit: int
    rows: list[DatasetRowOut]
