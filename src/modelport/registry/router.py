"""Registry endpoints: models, uploaded versions, aliases (promotion and rollback)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response, status

from modelport.auth.dependencies import Manager, Reader, priced
from modelport.db.dependencies import SessionDep as Session
from modelport.http.uploads import form_fields, multipart_body, read_upload
from modelport.registry import service
from modelport.registry.dependencies import ManagerDep
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
    VersionForm,
    VersionOut,
    VersionUpdateIn,
)

router = APIRouter(prefix="/api/v1/models", tags=["registry"])
ModelName = Annotated[str, Path(max_length=128, description="Model name, e.g. wine-quality")]
VersionNumber = Annotated[int, Path(ge=1)]
AliasName = Annotated[
    str,
    Path(
        max_length=64,
        description="e.g. production, staging",
        # Documented only: management.check_name enforces it with a message naming the rule.
        json_schema_extra={"pattern": "^[a-z][a-z0-9_-]{0,63}$"},
    ),
]


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
    responses={409: {"description": "A model of that name exists"}},
)
async def create_model(body: ModelCreateIn, manager: ManagerDep, owner: Manager) -> ModelOut:
    model = await manager.create_model(
        owner, name=body.name, description=body.description, task=body.task, public=body.public
    )
    return ModelOut.of(model)


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


@router.patch(
    "/{name}",
    response_model=ModelDetailOut,
    summary="Change description, visibility or inference limits",
    description="`inference_timeout_seconds` and `max_concurrency` set the model's own limits "
    "(null: back to the server's). Owners may set them up to the server's defaults; "
    "administrators up to the server's maximum (MODELPORT_INFERENCE_TIMEOUT_MAX_SECONDS, every "
    "inference thread).",
    responses={422: {"description": "A limit out of range; the message says the range"}},
)
async def update_model(
    name: ModelName,
    body: ModelUpdateIn,
    manager: ManagerDep,
    editor: Manager,
) -> ModelDetailOut:
    model = await manager.update_model(
        editor, name, description=body.description, public=body.public, limits=body.limits()
    )
    return ModelDetailOut.of(model)


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a model (soft: never served again, an admin can restore it)",
)
async def delete_model(name: ModelName, manager: ManagerDep, editor: Manager) -> Response:
    await manager.delete_model(editor, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{name}/restore", response_model=ModelDetailOut, summary="Restore (admins)")
async def restore_model(name: ModelName, manager: ManagerDep, admin: Manager) -> ModelDetailOut:
    return ModelDetailOut.of(await manager.restore_model(admin, name))


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
    manager: ManagerDep,
    uploader: Manager,
) -> VersionOut:
    # Who may upload here is settled before a byte of the file is read (and again after).
    await manager.check_uploader(uploader, name)
    upload = await read_upload(request, "model file", kind="model")
    form = form_fields(VersionForm, upload)
    return VersionOut.of(await manager.upload_version(uploader, name, upload.data, form))


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
    manager: ManagerDep,
    editor: Manager,
) -> VersionOut:
    found = await manager.update_version(
        editor, name, version, description=body.description, metrics=body.metrics
    )
    return VersionOut.of(found)


@router.delete(
    "/{name}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a version (soft: never served again, an admin can restore it)",
)
async def delete_version(
    name: ModelName,
    version: VersionNumber,
    manager: ManagerDep,
    editor: Manager,
) -> Response:
    await manager.delete_version(editor, name, version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{name}/versions/{version}/restore",
    response_model=VersionOut,
    summary="Restore a deleted version (admins)",
)
async def restore_version(
    name: ModelName,
    version: VersionNumber,
    manager: ManagerDep,
    admin: Manager,
) -> VersionOut:
    return VersionOut.of(await manager.restore_version(admin, name, version))


@router.put(
    "/{name}/aliases/{alias}",
    response_model=AliasOut,
    summary="Point an alias at a version (promote, or roll back)",
)
async def put_alias(
    name: ModelName,
    alias: AliasName,
    body: AliasIn,
    manager: ManagerDep,
    editor: Manager,
) -> AliasOut:
    number = await manager.point_alias(editor, name, alias, body.version)
    return AliasOut(model=name, alias=alias, version=number)


@router.delete(
    "/{name}/aliases/{alias}", status_code=status.HTTP_204_NO_CONTENT, summary="Remove an alias"
)
async def delete_alias(
    name: ModelName, alias: AliasName, manager: ManagerDep, editor: Manager
) -> Response:
    await manager.remove_alias(editor, name, alias)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
