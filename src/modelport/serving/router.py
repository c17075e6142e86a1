"""Prediction endpoints. Bodies are read raw so every failure is answered and logged by us."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request

from modelport.auth.dependencies import Predictor
from modelport.auth.principal import Principal
from modelport.builtin.wine import WINE_MODEL_NAME, WINE_SIGNATURE
from modelport.dependencies import get_services
from modelport.http.uploads import is_multipart, read_upload
from modelport.services import Services
from modelport.serving.batcher import TIMEOUT_HEADER
from modelport.serving.schemas import PredictionsOut, WinePredictionOut
from modelport.serving.service import PredictionResult, Target

router = APIRouter(tags=["predict"])
ServicesDep = Annotated[Services, Depends(get_services)]
ModelName = Annotated[str, Path(max_length=128, description="Model name, e.g. wine-quality")]
AliasQuery = Annotated[
    str | None,
    Query(max_length=64, description="Alias to use instead of production, e.g. staging"),
]

_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "Unknown model, version or alias"},
    413: {"description": "Body larger than the limit, or too many rows"},
    422: {"description": "Input breaks the model's signature; `detail` names field and rule"},
    400: {"description": "Unusable request, e.g. an X-Request-Timeout that is not seconds"},
    503: {
        "description": "The model cannot be served right now, or too many requests already "
        "wait for it (then with Retry-After)"
    },
    504: {"description": "The deadline (X-Request-Timeout, or the default) passed in line"},
}

_WINE_ROW_SCHEMA = WINE_SIGNATURE.row_model().model_json_schema()
_WINE_EXAMPLE = WINE_SIGNATURE.example_row()


def _body(schema: dict[str, Any], examples: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "examples": examples}},
        }
    }


_WINE_BODY = _body(_WINE_ROW_SCHEMA, {"first red wine": {"value": _WINE_EXAMPLE}})
_GENERIC_BODY = _body(
    {
        "anyOf": [
            {
                "type": "object",
                "properties": {"inputs": {"type": "array", "items": {"type": "object"}}},
                "required": ["inputs"],
            },
            {"type": "object", "description": "One row of the model's input fields"},
        ]
    },
    {
        "batch": {"summary": "Rows under inputs", "value": {"inputs": [_WINE_EXAMPLE]}},
        "single": {"summary": "One row", "value": _WINE_EXAMPLE},
    },
)
# Image models (e.g. imagenet-classifier) take the photo as a multipart upload instead.
_GENERIC_BODY["requestBody"]["content"]["multipart/form-data"] = {
    "schema": {
        "type": "object",
        "properties": {"file": {"type": "string", "format": "binary"}},
        "required": ["file"],
    }
}


def _request_id(request: Request) -> str:
    return str(request.state.request_id)


async def _classify_upload(
    request: Request, services: Services, caller: Principal, target: Target
) -> PredictionsOut:
    """Image models take a multipart upload (field ``file``) and answer the top 5 at once."""
    upload = await read_upload(request, "image")
    result = await services.images.classify_now(
        caller, target.name, upload.data, _request_id(request), target.version, target.alias
    )
    return PredictionsOut(
        model_name=result.model_name,
        model_version=result.model_version,
        predictions=result.top5,
        processing_time_ms=round(result.latency_ms, 3),
        request_id=_request_id(request),
    )


def _predictions_out(result: PredictionResult) -> PredictionsOut:
    return PredictionsOut(
        model_name=result.model_name,
        model_version=result.model_version,
        predictions=result.predictions,
        processing_time_ms=round(result.processing_time_ms, 3),
        request_id=result.request_id,
    )


@router.post(
    "/predict",
    response_model=WinePredictionOut,
    summary="Predict a wine's quality from its 11 measurements",
    description="The built-in wine-quality model (production alias). Send the features as one "
    "flat JSON object; every field is required and bounded (see the schema).",
    openapi_extra=_WINE_BODY,
    responses=_ERRORS,
)
async def predict_wine(
    request: Request, services: ServicesDep, caller: Predictor
) -> WinePredictionOut:
    result = await services.predictions.predict(
        Target(WINE_MODEL_NAME),
        await request.body(),
        _request_id(request),
        caller,
        allow_batch=False,
        timeout_header=request.headers.get(TIMEOUT_HEADER),
    )
    return WinePredictionOut(
        predicted_quality=result.predictions[0]["predicted_quality"],
        model_version=result.model_version,
        timestamp=result.timestamp,
    )


@router.post(
    "/api/v1/models/{name}/predict",
    response_model=PredictionsOut,
    summary="Predict with a model's production (or another alias's) version",
    openapi_extra=_GENERIC_BODY,
    responses=_ERRORS,
)
async def predict(
    name: ModelName,
    request: Request,
    services: ServicesDep,
    caller: Predictor,
    alias: AliasQuery = None,
) -> PredictionsOut:
    target = Target(name, alias=alias)
    if is_multipart(request):
        return await _classify_upload(request, services, caller, target)
    result = await services.predictions.predict(
        target,
        await request.body(),
        _request_id(request),
        caller,
        timeout_header=request.headers.get(TIMEOUT_HEADER),
    )
    return _predictions_out(result)


@router.post(
    "/api/v1/models/{name}/versions/{version}/predict",
    response_model=PredictionsOut,
    summary="Predict with one specific version",
    openapi_extra=_GENERIC_BODY,
    responses=_ERRORS,
)
async def predict_version(
    name: ModelName,
    version: Annotated[int, Path(ge=1, le=1_000_000)],
    request: Request,
    services: ServicesDep,
    caller: Predictor,
) -> PredictionsOut:
    target = Target(name, version=version)
    if is_multipart(request):
        return await _classify_upload(request, services, caller, target)
    result = await services.predictions.predict(
        target,
        await request.body(),
        _request_id(request),
        caller,
        timeout_header=request.headers.get(TIMEOUT_HEADER),
    )
    return _predictions_out(result)
