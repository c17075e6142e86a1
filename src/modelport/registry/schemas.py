"""API shapes for the registry."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelport.registry.tables import Model, ModelVersion

Task = Literal["regression", "classification"]
ModelSort = Literal["name", "-name", "created_at", "-created_at"]


class VersionOut(BaseModel):
    version: int
    flavor: str
    sha256: str
    size_bytes: int
    status: str
    description: str
    signature: dict[str, Any]
    metrics: dict[str, Any]
    details: dict[str, Any]
    created_by: uuid.UUID | None
    created_at: datetime
    deleted_at: datetime | None

    @classmethod
    def of(cls, version: ModelVersion) -> VersionOut:
        return cls(
            version=version.version,
            flavor=version.flavor,
            sha256=version.sha256,
            size_bytes=version.size_bytes,
            status=version.status,
            description=version.description,
            signature=version.signature,
            metrics=version.metrics,
            details=version.details,
            created_by=version.created_by,
            created_at=version.created_at,
            deleted_at=version.deleted_at,
        )


class ModelOut(BaseModel):
    name: str
    description: str
    task: str
    public: bool
    owner_id: uuid.UUID | None
    created_at: datetime
    deleted_at: datetime | None
    latest_version: int | None
    aliases: dict[str, int]

    @classmethod
    def of(cls, model: Model) -> ModelOut:
        numbers = {v.id: v.version for v in model.versions}
        live = [v.version for v in model.versions if v.deleted_at is None]
        return cls(
            name=model.name,
            description=model.description,
            task=model.task,
            public=model.public,
            owner_id=model.owner_id,
            created_at=model.created_at,
            deleted_at=model.deleted_at,
            latest_version=max(live, default=None),
            aliases={a.alias: numbers[a.version_id] for a in model.aliases},
        )


class ModelDetailOut(ModelOut):
    versions: list[VersionOut]

    @classmethod
    def of(cls, model: Model, *, include_deleted: bool = False) -> ModelDetailOut:
        """Deleted versions are listed only when asked for (by an administrator)."""
        summary = ModelOut.of(model).model_dump()
        shown = [v for v in model.versions if include_deleted or v.deleted_at is None]
        return cls(**summary, versions=[VersionOut.of(v) for v in shown])


class ModelListOut(BaseModel):
    items: list[ModelOut]
    total: int
    offset: int
    limit: int


class ModelCreateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=64, examples=["churn-classifier"])]
    description: Annotated[str, Field(max_length=2000)] = ""
    task: Task
    public: bool = False


class ModelUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: Annotated[str | None, Field(max_length=2000)] = None
    public: bool | None = None


class VersionUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: Annotated[str | None, Field(max_length=2000)] = None
    metrics: dict[str, float] | None = None


class AliasIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: Annotated[int, Field(ge=1, le=1_000_000)]


class AliasOut(BaseModel):
    model: str
    alias: str
    version: int
