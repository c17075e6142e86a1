"""Read-only registry endpoints: models, their versions and aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.auth.dependencies import Reader
from modelport.dependencies import get_session
from modelport.registry import service
from modelport.registry.schemas import ModelDetailOut, ModelListOut, ModelOut, VersionOut

router = APIRouter(prefix="/api/v1/models", tags=["registry"])
Session = Annotated[AsyncSession, Depends(get_session)]
ModelName = Annotated[str, Path(max_length=128, description="Model name, e.g. wine-quality")]


@router.get("", response_model=ModelListOut, summary="List registered models")
async def list_models(session: Session, viewer: Reader) -> ModelListOut:
    models = await service.list_models(session, viewer)
    return ModelListOut(items=[ModelOut.of(m) for m in models])


@router.get("/{name}", response_model=ModelDetailOut, summary="One model with its versions")
async def get_model(name: ModelName, session: Session, viewer: Reader) -> ModelDetailOut:
    return ModelDetailOut.of(await service.get_visible_model(session, viewer, name))


@router.get("/{name}/versions/{version}", response_model=VersionOut, summary="One version")
async def get_version(
    name: ModelName, version: Annotated[int, Path(ge=1)], session: Session, viewer: Reader
) -> VersionOut:
    model = await service.get_visible_model(session, viewer, name)
    return VersionOut.of(service.find_version(model, version))
