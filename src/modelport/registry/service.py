"""Registry logic: create versions, move aliases, resolve a name to one servable version."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload
from sqlalchemy.sql.elements import ColumnElement

from modelport.auth.principal import Principal
from modelport.errors import NotFoundError
from modelport.registry.tables import Model, ModelAlias, ModelVersion
from modelport.runtimes.signature import Signature
from modelport.storage.protocol import ArtifactStore

DEFAULT_ALIAS = "production"


@dataclass(frozen=True)
class VersionRef:
    """Everything needed to load and serve one model version, detached from the session."""

    model_name: str
    version: int
    version_id: uuid.UUID
    artifact_uri: str
    sha256: str
    flavor: str
    signature: Signature
    owner_id: uuid.UUID | None = None
    public: bool = True
    # The model's own inference limits (None: the server's settings apply).
    inference_timeout_seconds: float | None = None
    max_concurrency: int | None = None
    size_bytes: int = 0
    # Measured memory of the loaded model and a trial of the largest batch (None: not measured,
    # e.g. stored before budgets existed); why the version failed its budget, if it did.
    memory_bytes: int | None = None
    budget_error: str | None = None
    # Flavor-specific serving facts (e.g. class labels, image preprocessing).
    details: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _ref(model: Model, version: ModelVersion) -> VersionRef:
    return VersionRef(
        model_name=model.name,
        version=version.version,
        version_id=version.id,
        artifact_uri=version.artifact_uri,
        sha256=version.sha256,
        flavor=version.flavor,
        signature=Signature.model_validate(version.signature),
        owner_id=model.owner_id,
        public=model.public,
        inference_timeout_seconds=model.inference_timeout_seconds,
        max_concurrency=model.max_concurrency,
        details=version.details,
        size_bytes=version.size_bytes,
        memory_bytes=version.memory_bytes,
        budget_error=version.budget_error,
    )


async def get_model(session: AsyncSession, name: str) -> Model:
    if "\x00" in name:  # no stored name holds NUL, and PostgreSQL refuses it in a query
        raise NotFoundError(f"model {name!r} not found")
    model = await session.scalar(
        select(Model)
        .where(Model.name == name)
        .options(selectinload(Model.versions), selectinload(Model.aliases))
    )
    if model is None:
        raise NotFoundError(f"model {name!r} not found")
    return model


async def get_visible_model(
    session: AsyncSession, viewer: Principal, name: str, *, include_deleted: bool = False
) -> Model:
    """The model if ``viewer`` may see it; otherwise the same 404 as a missing model. Deleted
    models exist only for admins who ask for them (to restore them)."""
    model = await get_model(session, name)
    hidden = model.deleted_at is not None and not shows_deleted(viewer, include_deleted)
    if hidden or not viewer.can_see(model.owner_id, model.public):
        raise NotFoundError(f"model {name!r} not found")
    return model


def shows_deleted(viewer: Principal, include_deleted: bool) -> bool:
    """``include_deleted`` is an administrator's request; from anyone else it is ignored."""
    return include_deleted and viewer.is_admin


@dataclass(frozen=True)
class ModelQuery:
    task: str | None = None
    search: str | None = None  # part of the name
    mine: bool = False
    include_deleted: bool = False  # admins only
    sort: str = "name"  # name | -name | created_at | -created_at
    offset: int = 0
    limit: int = 100


_SORTS: dict[str, ColumnElement[Any]] = {
    "name": Model.name.asc(),
    "-name": Model.name.desc(),
    "created_at": Model.created_at.asc(),
    "-created_at": Model.created_at.desc(),
}


async def list_models(
    session: AsyncSession, viewer: Principal | None = None, query: ModelQuery | None = None
) -> tuple[list[Model], int]:
    """A page of models and the total: every model for admins (and the CLI); public and own
    ones for everyone else; deleted ones only for admins who ask."""
    query = query or ModelQuery(limit=10_000)
    statement = select(Model)
    if viewer is not None and not viewer.is_admin:
        statement = statement.where(or_(Model.public.is_(True), Model.owner_id == viewer.user_id))
    if not (query.include_deleted and (viewer is None or viewer.is_admin)):
        statement = statement.where(Model.deleted_at.is_(None))
    if query.task is not None:
        statement = statement.where(Model.task == query.task)
    if query.search:
        escaped = query.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        statement = statement.where(Model.name.like(f"%{escaped}%", escape="\\"))
    if query.mine and viewer is not None:
        statement = statement.where(Model.owner_id == viewer.user_id)
    total = await session.scalar(select(func.count()).select_from(statement.subquery()))
    result = await session.scalars(
        statement.order_by(_SORTS[query.sort], Model.id)
        .offset(query.offset)
        .limit(query.limit)
        .options(selectinload(Model.versions), selectinload(Model.aliases))
    )
    return list(result), int(total or 0)


class MissingVersionError(NotFoundError):
    """The model exists but not the version or alias asked for. Carries the model's owner and
    visibility: whoever may not see the model must get the plain "not found" instead."""

    def __init__(self, message: str, model: Model) -> None:
        super().__init__(message)
        self.owner_id = model.owner_id
        self.public = model.public


def find_version(model: Model, number: int, *, include_deleted: bool = False) -> ModelVersion:
    for version in model.versions:
        if version.version == number:
            if version.deleted_at is not None and not include_deleted:
                raise MissingVersionError(
                    f"version {number} of model {model.name!r} was deleted", model
                )
            return version
    raise MissingVersionError(f"model {model.name!r} has no version {number}", model)


async def resolve(
    session: AsyncSession, name: str, version: int | None = None, alias: str | None = None
) -> VersionRef:
    """An explicit version wins; otherwise the alias (``production`` by default)."""
    model = await get_model(session, name)
    if model.deleted_at is not None:  # a deleted model is never served
        raise NotFoundError(f"model {name!r} not found")
    if version is not None:
        return _ref(model, find_version(model, version))
    wanted = alias or DEFAULT_ALIAS
    for candidate in model.aliases:
        if candidate.alias == wanted:
            chosen = next(v for v in model.versions if v.id == candidate.version_id)
            if chosen.deleted_at is not None:
                raise MissingVersionError(
                    f"alias {wanted!r} of model {name!r} points at deleted version "
                    f"{chosen.version}; point it at another version",
                    model,
                )
            return _ref(model, chosen)
    raise MissingVersionError(f"model {name!r} has no alias {wanted!r}", model)


async def production_refs(session: AsyncSession) -> list[VersionRef]:
    """The versions every ``production`` alias points at: what start-up preloads. A version
    that failed its budget is never preloaded (asking for it answers why)."""
    rows = await session.execute(
        select(Model, ModelVersion)
        .join(ModelAlias, ModelAlias.model_id == Model.id)
        .join(ModelVersion, ModelVersion.id == ModelAlias.version_id)
        .where(
            ModelAlias.alias == DEFAULT_ALIAS,
            Model.deleted_at.is_(None),
            ModelVersion.deleted_at.is_(None),
            ModelVersion.budget_error.is_(None),
        )
    )
    return [_ref(model, version) for model, version in rows]


async def record_budget(
    session: AsyncSession,
    version_id: uuid.UUID,
    *,
    memory_bytes: int | None = None,
    budget_error: str | None = None,
) -> None:
    """Store what a version was measured to need, or why it failed its budget; the caller
    commits."""
    version = await session.get(ModelVersion, version_id)
    if version is None:
        return
    if memory_bytes is not None:
        version.memory_bytes = memory_bytes
    if budget_error is not None:
        version.budget_error = budget_error


async def register_version(
    session: AsyncSession,
    store: ArtifactStore,
    *,
    model_name: str,
    task: str,
    artifact: bytes,
    artifact_suffix: str,
    flavor: str,
    signature: Signature,
    metrics: dict[str, Any],
    details: dict[str, Any],
    model_description: str = "",
    alias: str | None = DEFAULT_ALIAS,
    owner_id: uuid.UUID | None = None,
    public: bool = True,
    created_by: uuid.UUID | None = None,
    version_description: str = "",
    memory_bytes: int | None = None,
) -> ModelVersion:
    """Store the artifact, add the next version number and optionally point ``alias`` at it."""
    # Artifacts reach hundreds of MB: written (and fsynced) in a worker thread, not on the loop.
    stored = await anyio.to_thread.run_sync(store.put, artifact, artifact_suffix)
    model = await session.scalar(select(Model).where(Model.name == model_name))
    if model is None:
        model = Model(
            name=model_name,
            task=task,
            description=model_description,
            owner_id=owner_id,
            public=public,
        )
        session.add(model)
        await session.flush()
    latest = await session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
    )
    version = ModelVersion(
        model_id=model.id,
        version=(latest or 0) + 1,
        artifact_uri=stored.uri,
        sha256=stored.sha256,
        size_bytes=stored.size_bytes,
        flavor=flavor,
        signature=signature.model_dump(mode="json"),
        metrics=metrics,
        details=details,
        created_by=created_by,
        description=version_description,
        memory_bytes=memory_bytes,
    )
    session.add(version)
    await session.flush()
    if alias:
        await set_alias(session, model.id, alias, version.id)
    return version


async def set_alias(
    session: AsyncSession, model_id: uuid.UUID, alias: str, version_id: uuid.UUID
) -> None:
    target = await session.get(ModelVersion, version_id)
    if target is None or target.model_id != model_id:  # the tables cannot enforce this
        raise NotFoundError(f"alias {alias!r} can only point at a version of its own model")
    existing = await session.get(ModelAlias, (model_id, alias))
    if existing is None:
        session.add(ModelAlias(model_id=model_id, alias=alias, version_id=version_id))
    else:
        existing.version_id = version_id
    await session.flush()
