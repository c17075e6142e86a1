"""Registry endpoints: models, uploaded versions, aliases (promotion and rollback)."""

from __future__ import annotations

from typing import Annotated, Any

import anyio
import orjson
from fastapi import APIRouter, Depends, Path, Query, Request, Response, status
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.auth.dependencies import Manager, Reader, priced
from modelport.dependencies import get_services, get_session
from modelport.errors import ForbiddenError, InvalidInputError
from modelport.http.uploads import form_fields, multipart_body, read_upload
from modelport.ingest.preparation import prepare_upload
from modelport.ingest.safety import pickles_allowed
from modelport.registry import management, service
from modelport.registry.schemas import (
    AliasIn,
    AliasOut,
    ModelCreateIn,
    ModelDetailOut,
    ModelListOut,
    ModelOut,
    ModelSort,
    ModelUpdateIn,
    Task,
    VersionOut,
    VersionUpdateIn,
)
from modelport.runtimes.signature import Signature
from modelport.services import Services

router = APIRouter(prefix="/api/v1/models", tags=["registry"])
Session = Annotated[AsyncSession, Depends(get_session)]
ServicesDep = Annotated[Services, Depends(get_services)]
ModelName = Annotated[str, Path(max_length=128, description="Model name, e.g. wine-quality")]
VersionNumber = Annotated[int, Path(ge=1)]
AliasName = Annotated[str, Path(max_length=64, description="e.g. production, staging")]


@router.get("", response_model=ModelListOut, summary="List models you can see")
async def list_models(
    session: Session,
    viewer: Reader,
    task: Task | None = None,
    q: Annotated[str | None, Query(max_length=64, description="Part of the name")] = None,
    mine: bool = False,
    include_deleted: Annotated[bool, Query(description="Admins: show deleted models")] = False,
    sort: ModelSort = "name",
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ModelListOut:
    query = service.ModelQuery(task, q, mine, include_deleted, sort, offset, limit)
    models, total = await service.list_models(session, viewer, query)
    return ModelListOut(
        items=[ModelOut.of(m) for m in models], total=total, offset=offset, limit=limit
    )


@router.post(
    "",
    response_model=ModelOut,
    status_code=status.HTTP_201_CREATED,
    summary="Create a model (then upload versions to it)",
)
async def create_model(body: ModelCreateIn, session: Session, owner: Manager) -> ModelOut:
    if owner.is_anonymous:
        raise ForbiddenError("sign in to create models")
    model = await management.create_model(
        session,
        owner,
        name=body.name,
        description=body.description,
        task=body.task,
        public=body.public,
    )
    await session.commit()
    return ModelOut.of(await service.get_model(session, model.name))


@router.get("/{name}", response_model=ModelDetailOut, summary="One model with its versions")
async def get_model(
    name: ModelName,
    session: Session,
    viewer: Reader,
    include_deleted: Annotated[bool, Query(description="Admins: deleted model/versions")] = False,
) -> ModelDetailOut:
    deleted = service.shows_deleted(viewer, include_deleted)
    model = await service.get_visible_model(session, viewer, name, include_deleted=deleted)
    return ModelDetailOut.of(model, include_deleted=deleted)


@router.patch("/{name}", response_model=ModelDetailOut, summary="Change description or visibility")
async def update_model(
    name: ModelName,
    body: ModelUpdateIn,
    session: Session,
    editor: Manager,
    services: ServicesDep,
) -> ModelDetailOut:
    model = await management.changeable_model(session, editor, name)
    if body.description is not None:
        model.description = body.description
    if body.public is not None:
        model.public = body.public
    await session.commit()
    services.resolver.invalidate()  # visibility is part of what the resolver remembers
    return ModelDetailOut.of(await service.get_model(session, name))


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a model (soft: never served again, an admin can restore it)",
)
async def delete_model(
    name: ModelName, session: Session, editor: Manager, services: ServicesDep
) -> Response:
    management.soft_delete(await management.changeable_model(session, editor, name))
    await session.commit()
    services.resolver.invalidate()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/restore", response_model=ModelDetailOut, summary="Restore (admins)")
async def restore_model(
    name: ModelName, session: Session, admin: Manager, services: ServicesDep
) -> ModelDetailOut:
    if not admin.is_admin:
        raise ForbiddenError("only administrators may restore deleted models")
    model = await service.get_visible_model(session, admin, name, include_deleted=True)
    management.restore(model)
    await session.commit()
    services.resolver.invalidate()
    return ModelDetailOut.of(await service.get_model(session, name))


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


def _signature(raw: str | None) -> Signature | None:
    data = _json_field(raw, "signature")
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


def _metrics(raw: str | None) -> dict[str, float]:
    data = _json_field(raw, "metrics") or {}
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


class _VersionForm(BaseModel):
    """The plain fields sent with a model file."""

    flavor: str | None = Field(default=None, max_length=32)
    signature: str | None = None
    description: str = Field(default="", max_length=2000)
    metrics: str | None = None


_VERSION_BODY = multipart_body(
    "The model file",
    {
        "flavor": {"type": "string", "maxLength": 32, "description": "Detected if absent"},
        "signature": {"type": "string", "description": "Signature JSON (inferred if absent)"},
        "description": {"type": "string", "maxLength": 2000},
        "metrics": {"type": "string", "description": 'JSON object, e.g. {"mae": 0.4}'},
    },
)


@router.post(
    "/{name}/versions",
    response_model=VersionOut,
    status_code=status.HTTP_201_CREATED,
    summary="Upload a model file as the next version",
    description="ONNX, scikit-learn (skops; joblib/pickle only for admins when allowed), "
    "XGBoost (JSON/UBJ) or LightGBM (text). The flavor is detected from the file unless given. "
    "Models are converted to ONNX where possible and the conversion is checked.",
    responses={
        400: {"description": "Not a model, wrong flavor, unsafe ONNX"},
        403: {"description": "Pickle refused"},
        413: {"description": "File too large"},
    },
    dependencies=[priced("model_upload")],
    openapi_extra=_VERSION_BODY,
)
async def upload_version(
    name: ModelName,
    request: Request,
    session: Session,
    uploader: Manager,
    services: ServicesDep,
) -> VersionOut:
    # Who may upload here is settled before a byte of the file is read; the connection goes
    # back to the pool while the file arrives, and the check is made again afterwards.
    await management.changeable_model(session, uploader, name)
    await session.rollback()
    upload = await read_upload(request, "model file", kind="model")
    form = form_fields(_VersionForm, upload)
    model = await management.changeable_model(session, uploader, name)
    allow_pickle = pickles_allowed(services.settings.allow_pickle, uploader.is_admin)
    given_signature, given_metrics = _signature(form.signature), _metrics(form.metrics)
    prepared = await anyio.to_thread.run_sync(
        lambda: prepare_upload(
            upload.data,
            declared_flavor=form.flavor or None,
            signature=given_signature,
            task=model.task,
            allow_pickle=allow_pickle,
        )
    )
    version = await management.add_version(
        session,
        services.store,
        uploader,
        model,
        prepared,
        description=form.description,
        metrics=given_metrics,
    )
    await session.commit()
    services.resolver.invalidate()
    return VersionOut.of(version)


@router.get("/{name}/versions/{version}", response_model=VersionOut, summary="One version")
async def get_version(
    name: ModelName,
    version: VersionNumber,
    session: Session,
    viewer: Reader,
    include_deleted: Annotated[bool, Query(description="Admins: a deleted version")] = False,
) -> VersionOut:
    model = await service.get_visible_model(session, viewer, name)
    deleted = service.shows_deleted(viewer, include_deleted)
    found = service.find_version(model, version, include_deleted=deleted)
    return VersionOut.of(found)


@router.patch("/{name}/versions/{version}", response_model=VersionOut, summary="Edit a version")
async def update_version(
    name: ModelName,
    version: VersionNumber,
    body: VersionUpdateIn,
    session: Session,
    editor: Manager,
) -> VersionOut:
    model = await management.changeable_model(session, editor, name)
    found = service.find_version(model, version)
    if body.description is not None:
        found.description = body.description
    if body.metrics is not None:
        found.metrics = body.metrics
    await session.commit()
    return VersionOut.of(found)


@router.delete(
    "/{name}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a version (soft: never served again, an admin can restore it)",
)
async def delete_version(
    name: ModelName,
    version: VersionNumber,
    session: Session,
    editor: Manager,
    services: ServicesDep,
) -> Response:
    model = await management.changeable_model(session, editor, name)
    management.soft_delete(service.find_version(model, version))
    await session.commit()
    services.resolver.invalidate()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{name}/versions/{version}/restore",
    response_model=VersionOut,
    summary="Restore a deleted version (admins)",
)
async def restore_version(
    name: ModelName,
    version: VersionNumber,
    session: Session,
    admin: Manager,
    services: ServicesDep,
) -> VersionOut:
    if not admin.is_admin:
        raise ForbiddenError("only administrators may restore deleted versions")
    model = await service.get_visible_model(session, admin, name)
    found = service.find_version(model, version, include_deleted=True)
    management.restore(found)
    await session.commit()
    services.resolver.invalidate()
    return VersionOut.of(found)


@router.put(
    "/{name}/aliases/{alias}",
    response_model=AliasOut,
    summary="Point an alias at a version (promote, or roll back)",
)
async def put_alias(
    name: ModelName,
    alias: AliasName,
    body: AliasIn,
    session: Session,
    editor: Manager,
    services: ServicesDep,
) -> AliasOut:
    model = await management.changeable_model(session, editor, name)
    version = await management.point_alias(session, model, alias, body.version)
    await session.commit()
    services.resolver.invalidate()  # here at once; other replicas within the cache lifetime
    return AliasOut(model=name, alias=alias, version=version.version)


@router.delete(
    "/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove an alias"
)
async def delete_alias(
    name: ModelName, alias: AliasName, session: Session, editor: Manager, services: ServicesDep
) -> Response:
    model = await management.changeable_model(session, editor, name)
    await management.remove_alias(session, model, alias)
    await session.commit()
    services.resolver.invalidate()
    return Response(status_code=status.HTTP_204_NO_CONTENT)
