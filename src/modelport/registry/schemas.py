"""API shapes for the registry."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel

from modelport.registry.tables import Model, ModelVersion


class VersionOut(BaseModel):
    version: int
    flavor: str
    sha256: str
    size_bytes: int
    status: str
    signature: dict[str, Any]
    metrics: dict[str, Any]
    details: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, version: ModelVersion) -> VersionOut:
        return cls(
            version=version.version,
            flavor=version.flavor,
            sha256=version.sha256,
            size_bytes=version.size_bytes,
            status=version.status,
            signature=version.signature,
            metrics=version.metrics,
            details=version.details,
            created_at=version.created_at,
        )


class ModelOut(BaseModel):
    name: str
    description: str
    task: str
    public: bool
    created_at: datetime
    latest_version: int | None
    aliases: dict[str, int]

    @classmethod
    def of(cls, model: Model) -> ModelOut:
        numbers = {v.id: v.version for v in model.versions}
        return cls(
            name=model.name,
            description=model.description,
            task=model.task,
            public=model.public,
            created_at=model.created_at,
            latest_version=max(numbers.values(), default=None),
            aliases={a.alias: numbers[a.version_id] for a in model.aliases},
        )


class ModelDetailOut(ModelOut):
    versions: list[VersionOut]

    @classmethod
    def of(cls, model: Model) -> ModelDetailOut:
        summary = ModelOut.of(model).model_dump()
        return cls(**summary, versions=[VersionOut.of(v) for v in model.versions])


class ModelListOut(BaseModel):
    items: list[ModelOut]
