"""FastAPI providers for the serving parts the app factory puts on ``app.state``. Async though
they only read it: FastAPI runs a plain ``def`` dependency in a worker thread, a thread hop on
every request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from modelport.serving.model_cache import ModelCache
from modelport.serving.resolver import VersionResolver
from modelport.serving.service import PredictionService


async def get_prediction_service(request: Request) -> PredictionService:
    predictions: PredictionService = request.app.state.predictions
    return predictions


async def get_resolver(request: Request) -> VersionResolver:
    resolver: VersionResolver = request.app.state.resolver
    return resolver


async def get_model_cache(request: Request) -> ModelCache:
    models: ModelCache = request.app.state.models
    return models


PredictionServiceDep = Annotated[PredictionService, Depends(get_prediction_service)]
ResolverDep = Annotated[VersionResolver, Depends(get_resolver)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
