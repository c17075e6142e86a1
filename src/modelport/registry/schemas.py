"""API shapes for the registry."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelport.errors import InvalidInputError
from modelport.registry.tables import Model, ModelVersion
from modelport.runtimes.signature import Signature

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
    memory_bytes: int | None = Field(
        default=None, description="Memory the model needed when loaded and run (measured)."
    )
    budget_error: str | None = Field(
        default=None, description="Why this version failed its budget; it is never served."
    )

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
            memory_bytes=version.memory_bytes,
            budget_error=version.budget_error,
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
    inference_timeout_seconds: float | None = Field(
        default=None, description="The model's own time limit per run; null: the server's"
    )
    max_concurrency: int | None = Field(
        default=None, description="Inference threads the model may use at once; null: the server's"
    )

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
            inference_timeout_seconds=model.inference_timeout_seconds,
            max_concurrency=model.max_concurrency,
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

    name: Annotated[
        str,
        Field(
            min_length=1,
            max_length=64,
            examples=["churn-classifier"],
            # Documented only: management.check_name enforces it with a message naming the rule.
            json_schema_extra={"pattern": "^[a-z0-9][a-z0-9._-]{0,63}$"},
        ),
    ]
    description: Annotated[str, Field(max_length=2000)] = ""
    task: Task
    public: bool = False


class ModelUpdateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: Annotated[str | None, Field(max_length=2000)] = None
    public: bool | None = None
    # Sent as null: back to the server's setting. Owners may lower them below the server's;
    # administrators may raise them up to the server's maximum.
    inference_timeout_seconds: Annotated[
        float | None,
        Field(
            gt=0,
            le=3600,
            description="Seconds one run of the model may take before it is stopped (504)",
        ),
    ] = None
    max_concurrency: Annotated[
        int | None,
        Field(ge=1, le=256, description="Inference threads the model may use at once"),
    ] = None

    def limits(self) -> dict[str, float | int | None]:
        """The inference limits the body names (a null among them resets that one)."""
        names = ("inference_timeout_seconds", "max_concurrency")
        return {name: getattr(self, name) for name in names if name in self.model_fields_set}


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


class VersionForm(BaseModel):
    """The plain fields sent with a model file (multipart form fields are strings)."""

    flavor: str | None = Field(default=None, max_length=32)
    signature: str | None = None
    description: str = Field(default="", max_length=2000)
    metrics: str | None = None

    def signature_spec(self) -> Signature | None:
        data = _json_field(self.signature, "signature")
        if data is None:
            return None
        try:
            return Signature.model_validate(data)
        except ValidationError as exc:
            errors = [
                {"loc": ["body", "signature", *e["loc"]], "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_context=False, include_input=False)
            ]
            raise InvalidInputError(f"signature: {errors[0]['msg']}", errors) from None

    def metric_values(self) -> dict[str, float]:
        data = _json_field(self.metrics, "metrics") or {}
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            for k, v in data.items()
        ):
            raise InvalidInputError(
                'metrics must be a JSON object of numbers, e.g. {"mae": 0.42}',
                [
                    {
                        "loc": ["body", "metrics"],
                        "msg": "object of numbers expected",
                        "type": "dict_type",
                    }
                ],
            )
        return {k: float(v) for k, v in data.items()}


def _json_field(raw: str | None, field: str) -> Any:
    if raw is None or raw == "":
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(
            f"{field}: not valid JSON ({exc})",
            [{"loc": ["body", field], "msg": f"invalid JSON: {exc}", "type": "json_invalid"}],
        ) from None
