"""Changing the registry on a user's behalf: create, edit, soft-delete, restore, move aliases.

Every function checks the caller may change the model (its owner or an admin) and answers 404,
not 403, for models the caller cannot see, so their existence is not revealed."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.auth.principal import Principal
from modelport.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError
from modelport.ingest.preparation import PreparedModel
from modelport.registry import service
from modelport.registry.tables import Model, ModelAlias, ModelVersion
from modelport.storage.protocol import ArtifactStore

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
ALIAS_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,63}")


def check_name(name: str, what: str, pattern: re.Pattern[str]) -> None:
    # fullmatch: with match() and "$", "wine-quality\n" would pass as a second wine-quality.
    if not pattern.fullmatch(name):
        message = (
            f"{what} {name!r} is not allowed: use 1-64 lowercase letters, digits, '-', '_' "
            "(and '.' in model names), starting with a letter or digit"
        )
        raise InvalidInputError(
            message,
            [
                {
                    "loc": ["path" if what == "alias" else "body", what.replace(" ", "_")],
                    "msg": message,
                    "type": "string_pattern_mismatch",
                }
            ],
        )


async def changeable_model(
    session: AsyncSession, viewer: Principal, name: str, *, include_deleted: bool = False
) -> Model:
    model = await service.get_visible_model(session, viewer, name, include_deleted=include_deleted)
    if not viewer.can_change(model.owner_id):
        if model.owner_id is None:
            raise ForbiddenError(f"model {name!r} is built in; only administrators may change it")
        raise NotFoundError(f"model {name!r} not found")
    return model


async def create_model(
    session: AsyncSession,
    owner: Principal,
    *,
    name: str,
    description: str,
    task: str,
    public: bool,
) -> Model:
    check_name(name, "model name", NAME_PATTERN)
    existing = await session.scalar(select(Model).where(Model.name == name))
    if existing is not None:
        hint = " (it was deleted; an administrator can restore it)" if existing.deleted_at else ""
        raise ConflictError(f"a model named {name!r} already exists{hint}")
    model = Model(
        name=name, description=description, task=task, public=public, owner_id=owner.user_id
    )
    session.add(model)
    await session.flush()
    return model


async def add_version(
    session: AsyncSession,
    store: ArtifactStore,
    uploader: Principal,
    model: Model,
    prepared: PreparedModel,
    *,
    description: str,
    metrics: dict[str, Any],
) -> ModelVersion:
    """The next version number. The model's first version also becomes ``production`` so the
    model answers by name at once; later ones wait to be promoted with an alias."""
    if model.task != prepared.signature.task:
        raise InvalidInputError(
            f"model {model.name!r} is a {model.task} model but the file is a "
            f"{prepared.signature.task} model",
            [{"loc": ["body", "file"], "msg": "task does not match", "type": "task_mismatch"}],
        )
    has_production = await session.scalar(
        select(func.count())
        .select_from(ModelAlias)
        .where(ModelAlias.model_id == model.id, ModelAlias.alias == service.DEFAULT_ALIAS)
    )
    return await service.register_version(
        session,
        store,
        model_name=model.name,
        task=model.task,
        artifact=prepared.artifact,
        artifact_suffix=prepared.artifact_suffix,
        flavor=prepared.flavor,
        signature=prepared.signature,
        metrics=metrics,
        details={"source_flavor": prepared.source_flavor, **prepared.details},
        alias=None if has_production else service.DEFAULT_ALIAS,
        created_by=uploader.user_id,
        version_description=description,
    )


def soft_delete(target: Model | ModelVersion) -> None:
    if target.deleted_at is None:
        target.deleted_at = datetime.now(UTC)
    if isinstance(target, ModelVersion):
        target.status = "deleted"


def restore(target: Model | ModelVersion) -> None:
    target.deleted_at = None
    if isinstance(target, ModelVersion):
        target.status = "ready"


async def point_alias(session: AsyncSession, model: Model, alias: str, number: int) -> ModelVersion:
    """Point ``alias`` at version ``number`` (promote, or roll back by pointing it back)."""
    check_name(alias, "alias", ALIAS_PATTERN)
    version = service.find_version(model, number)
    await service.set_alias(session, model.id, alias, version.id)
    return version


async def remove_alias(session: AsyncSession, model: Model, alias: str) -> None:
    existing = await session.get(ModelAlias, (model.id, alias))
    if existing is None:
        raise NotFoundError(f"model {model.name!r} has no alias {alias!r}")
    await session.delete(existing)
