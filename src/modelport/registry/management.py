"""Changing the registry on a user's behalf: create, edit, soft-delete, restore, move aliases.

Every function checks the caller may change the model (its owner or an admin) and answers 404,
not 403, for models the caller cannot see, so their existence is not revealed."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from modelport.auth.principal import Principal
from modelport.changes import Change, ChangeHub, Topic
from modelport.errors import ConflictError, ForbiddenError, InvalidInputError, NotFoundError
from modelport.ingest.preparation import PreparedModel, prepare_upload
from modelport.ingest.safety import ModelBudgets, pickles_allowed
from modelport.registry import service
from modelport.registry.schemas import VersionForm
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
        memory_bytes=prepared.memory_bytes,
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


@dataclass(frozen=True)
class LimitBounds:
    """How far a model's own inference limits may go: up to the server's defaults for its
    owner, up to the server's maximums for an administrator."""

    timeout_default: float = 10.0
    timeout_max: float = 60.0
    concurrency_default: int = 1
    concurrency_max: int = 1

    def check(self, editor: Principal, limits: Mapping[str, float | int | None]) -> None:
        timeout = limits.get("inference_timeout_seconds")
        if timeout is not None:
            most = self.timeout_max if editor.is_admin else self.timeout_default
            _within(timeout, most, "inference_timeout_seconds", " s", editor.is_admin)
        threads = limits.get("max_concurrency")
        if threads is not None:
            most = self.concurrency_max if editor.is_admin else self.concurrency_default
            _within(threads, most, "max_concurrency", " threads", editor.is_admin)


def _within(value: float, most: float, field: str, unit: str, admin: bool) -> None:
    if value <= most:
        return
    who = (
        "the server's maximum" if admin else "the server's default; an administrator may allow more"
    )
    message = f"{field} may be at most {most:g}{unit} ({who})"
    raise InvalidInputError(
        message, [{"loc": ["body", field], "msg": message, "type": "less_than_equal"}]
    )


# Concurrent uploads to one model may pick the same next version number; the loser's insert
# fails on the (model, version) key and its unit of work is run again with the next number.
VERSION_NUMBER_ATTEMPTS = 5


class RegistryManager:
    """Every change to the registry as one unit of work: check, write, commit, then announce
    the change (the resolver and other replicas forget what they remembered of the model)."""

    def __init__(
        self,
        sessions: async_sessionmaker[AsyncSession],
        store: ArtifactStore,
        changes: ChangeHub,
        *,
        allow_pickle: bool,
        limit_bounds: LimitBounds | None = None,
        budgets: ModelBudgets | None = None,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._changes = changes
        self._allow_pickle = allow_pickle
        self._limit_bounds = limit_bounds or LimitBounds()
        self._budgets = budgets or ModelBudgets()

    def _announce(self, topic: Topic, model_name: str) -> None:
        self._changes.publish(Change(topic, model_name))

    async def create_model(
        self, owner: Principal, *, name: str, description: str, task: str, public: bool
    ) -> Model:
        if owner.is_anonymous:
            raise ForbiddenError("sign in to create models")
        async with self._sessions() as session:
            await create_model(
                session, owner, name=name, description=description, task=task, public=public
            )
            await session.commit()
            model = await service.get_model(session, name)
        self._announce("model", name)
        return model

    async def update_model(
        self,
        editor: Principal,
        name: str,
        *,
        description: str | None,
        public: bool | None,
        limits: Mapping[str, float | int | None] | None = None,
    ) -> Model:
        """``limits``: the model's inference limits to set (None values reset them)."""
        limits = limits or {}
        async with self._sessions() as session:
            model = await changeable_model(session, editor, name)
            self._limit_bounds.check(editor, limits)
            if description is not None:
                model.description = description
            if public is not None:
                model.public = public
            if "inference_timeout_seconds" in limits:
                timeout = limits["inference_timeout_seconds"]
                model.inference_timeout_seconds = None if timeout is None else float(timeout)
            if "max_concurrency" in limits:
                threads = limits["max_concurrency"]
                model.max_concurrency = None if threads is None else int(threads)
            await session.commit()
            model = await service.get_model(session, name)
        # Visibility and limits are part of what the resolver remembers.
        self._announce("model", name)
        return model

    async def delete_model(self, editor: Principal, name: str) -> None:
        async with self._sessions() as session:
            soft_delete(await changeable_model(session, editor, name))
            await session.commit()
        self._announce("model", name)

    async def restore_model(self, admin: Principal, name: str) -> Model:
        if not admin.is_admin:
            raise ForbiddenError("only administrators may restore deleted models")
        async with self._sessions() as session:
            restore(await service.get_visible_model(session, admin, name, include_deleted=True))
            await session.commit()
            model = await service.get_model(session, name)
        self._announce("model", name)
        return model

    async def check_uploader(self, uploader: Principal, name: str) -> None:
        """Settle who may upload to ``name`` before a byte of the file is read."""
        async with self._sessions() as session:
            await changeable_model(session, uploader, name)

    async def upload_version(
        self, uploader: Principal, name: str, data: bytes, form: VersionForm
    ) -> ModelVersion:
        """Check, convert and verify the file (in a worker thread), store it, and add it as the
        model's next version."""
        signature, metrics = form.signature_spec(), form.metric_values()
        async with self._sessions() as session:
            task = (await changeable_model(session, uploader, name)).task
        allow_pickle = pickles_allowed(self._allow_pickle, uploader.is_admin)
        prepared = await anyio.to_thread.run_sync(
            lambda: prepare_upload(
                data,
                declared_flavor=form.flavor or None,
                signature=signature,
                task=task,
                allow_pickle=allow_pickle,
                budgets=self._budgets,
            )
        )
        for _ in range(VERSION_NUMBER_ATTEMPTS):
            async with self._sessions() as session:
                model = await changeable_model(session, uploader, name)
                try:
                    version = await add_version(
                        session,
                        self._store,
                        uploader,
                        model,
                        prepared,
                        description=form.description,
                        metrics=metrics,
                    )
                    await session.commit()
                except IntegrityError:  # another upload took this number first
                    await session.rollback()
                    continue
            self._announce("version", name)
            return version
        raise ConflictError(
            f"other uploads to model {name!r} were registered at the same moment; try again"
        )

    async def record_budget(
        self,
        model_name: str,
        version_id: uuid.UUID,
        memory_bytes: int | None,
        budget_error: str | None,
    ) -> None:
        """Store what loading a version was measured to need, or why it failed its budget (the
        model cache measures versions stored before budgets existed). A failed version is
        announced, so every replica stops serving it."""
        async with self._sessions() as session:
            await service.record_budget(
                session, version_id, memory_bytes=memory_bytes, budget_error=budget_error
            )
            await session.commit()
        if budget_error is not None:
            self._announce("version", model_name)

    async def update_version(
        self,
        editor: Principal,
        name: str,
        number: int,
        *,
        description: str | None,
        metrics: dict[str, float] | None,
    ) -> ModelVersion:
        async with self._sessions() as session:
            version = service.find_version(await changeable_model(session, editor, name), number)
            if description is not None:
                version.description = description
            if metrics is not None:
                version.metrics = metrics
            await session.commit()
        self._announce("version", name)
        return version

    async def delete_version(self, editor: Principal, name: str, number: int) -> None:
        async with self._sessions() as session:
            model = await changeable_model(session, editor, name)
            soft_delete(service.find_version(model, number))
            await session.commit()
        self._announce("version", name)

    async def restore_version(self, admin: Principal, name: str, number: int) -> ModelVersion:
        if not admin.is_admin:
            raise ForbiddenError("only administrators may restore deleted versions")
        async with self._sessions() as session:
            model = await service.get_visible_model(session, admin, name)
            version = service.find_version(model, number, include_deleted=True)
            restore(version)
            await session.commit()
        self._announce("version", name)
        return version

    async def point_alias(self, editor: Principal, name: str, alias: str, number: int) -> int:
        """Point ``alias`` at version ``number``; the version number it now names."""
        async with self._sessions() as session:
            model = await changeable_model(session, editor, name)
            version = await point_alias(session, model, alias, number)
            await session.commit()
        self._announce("alias", name)
        return version.version

    async def remove_alias(self, editor: Principal, name: str, alias: str) -> None:
        async with self._sessions() as session:
            await remove_alias(session, await changeable_model(session, editor, name), alias)
            await session.commit()
        self._announce("alias", name)
