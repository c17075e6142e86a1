"""Register CSV datasets and browse them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, status
from pydantic import BaseModel, Field

from modelport.auth.dependencies import Manager, Reader, priced
from modelport.datasets import service
from modelport.datasets.schemas import DatasetListOut, DatasetOut, DatasetRowOut, DatasetRowsOut
from modelport.db.dependencies import SessionDep as Session
from modelport.db.dependencies import SessionFactoryDep
from modelport.errors import ForbiddenError
from modelport.http.dependencies import SettingsDep
from modelport.http.uploads import form_fields, multipart_body, read_upload

router = APIRouter(prefix="/api/v1/datasets", tags=["datasets"])
DatasetName = Annotated[str, Path(max_length=128, description="Dataset name")]


@router.get("", response_model=DatasetListOut, summary="List datasets")
async def list_datasets(session: Session, viewer: Reader) -> DatasetListOut:
    items = [DatasetOut.model_validate(d) for d in await service.list_datasets(session, viewer)]
    return DatasetListOut(items=items)


class _DatasetForm(BaseModel):
    """The plain fields sent with a CSV file."""

    name: str = Field(max_length=64)
    description: str = Field(default="", max_length=2000)
    public: bool = False


_DATASET_BODY = multipart_body(
    "CSV with a header row",
    {
        "name": {"type": "string", "maxLength": 64, "examples": ["churn-2026"]},
        "description": {"type": "string", "maxLength": 2000},
        "public": {"type": "boolean", "default": False},
    },
    required=("name",),
)


@router.post(
    "",
    response_model=DatasetOut,
    status_code=status.HTTP_201_CREATED,
    summary="Register a CSV as a dataset (columns and types inferred, rows stored)",
    responses={
        400: {"description": "Not a usable CSV"},
        409: {"description": "Name taken"},
        413: {"description": "Larger than MODELPORT_MAX_UPLOAD_BYTES"},
    },
    dependencies=[priced("upload")],
    openapi_extra=_DATASET_BODY,
)
async def create_dataset(
    request: Request,
    sessions: SessionFactoryDep,
    owner: Manager,
    settings: SettingsDep,
) -> DatasetOut:
    if owner.is_anonymous:  # settled before a byte of the file is read
        raise ForbiddenError("sign in to register datasets")
    upload = await read_upload(request, "CSV")
    form = form_fields(_DatasetForm, upload)
    csv = service.CsvUpload(form.name, form.description, form.public, upload.filename, upload.data)
    dataset = await service.import_csv(sessions, owner, csv, settings.max_dataset_rows)
    return DatasetOut.model_validate(dataset)


@router.get("/{name}", response_model=DatasetOut, summary="One dataset's schema and size")
async def get_dataset(name: DatasetName, session: Session, viewer: Reader) -> DatasetOut:
    return DatasetOut.model_validate(await service.get_visible_dataset(session, viewer, name))


@router.get("/{name}/rows", response_model=DatasetRowsOut, summary="Page through a dataset's rows")
async def get_rows(
    name: DatasetName,
    session: Session,
    viewer: Reader,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DatasetRowsOut:
    dataset = await service.get_visible_dataset(session, viewer, name)
    rows = await service.get_rows(session, dataset, offset, limit)
    return DatasetRowsOut(
        dataset=dataset.name,
        total=dataset.row_count,
        offset=offset,
        limit=limit,
        rows=[DatasetRowOut.model_validate(r) for r in rows],
    )
