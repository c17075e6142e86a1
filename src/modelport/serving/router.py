"""Prediction endpoints. Bodies are read raw so every failure is answered and logged by us.

The routes serve any registered model; which model's row the interactive docs show as an
example is the app factory's choice (``create_router(example=...)``), so this module knows no
particular model.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request, Response

from modelport.auth.dependencies import PREDICTOR_SECURITY, calls_predictor, predictor
from modelport.auth.principal import Principal
from modelport.http.uploads import is_multipart, read_upload
from modelport.images.service import ImageService
from modelport.runtimes.signature import Signature
from modelport.serving.batcher import TIMEOUT_HEADER
from modelport.serving.schemas import PredictionsOut
from modelport.serving.service import PredictionService, Target

ModelName = Annotated[str, Path(max_length=128, description="Model name, e.g. wine-quality")]
AliasQuery = Annotated[
    str | None,
    Query(max_length=64, description="Alias to use instead of production, e.g. staging"),
]

PREDICT_ERRORS: dict[int | str, dict[str, Any]] = {
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


def json_body(schema: dict[str, Any], examples: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body raw."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": schema, "examples": examples}},
        }
    }


def _generic_body(example: Signature) -> dict[str, Any]:
    row = example.example_row()
    body = json_body(
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
            "batch": {"summary": "Rows under inputs", "value": {"inputs": [row]}},
            "single": {"summary": "One row", "value": row},
        },
    )
    # Image models (e.g. imagenet-classifier) take the photo as a multipart upload instead.
    body["requestBody"]["content"]["multipart/form-data"] = {
        "schema": {
            "type": "object",
            "properties": {"file": {"type": "string", "format": "binary"}},
            "required": ["file"],
        }
    }
    return body


def json_response(content: dict[str, Any]) -> Response:
    """The answer as JSON, encoded once by orjson: the routes keep ``response_model`` for their
    docs, and FastAPI passes a ``Response`` through without validating it again."""
    return Response(orjson.dumps(content, option=orjson.OPT_UTC_Z), media_type="application/json")


def request_id(request: Request) -> str:
    return str(request.state.request_id)


async def _classify_upload(request: Request, caller: Principal, target: Target) -> Response:
    """Image models take a multipart upload (field ``file``) and answer the top 5 at once."""
    images: ImageService = request.app.state.images
    upload = await read_upload(request, "image")
    result = await images.classify_now(
        caller, target.name, upload.data, request_id(request), target.version, target.alias
    )
    return _predictions_out(
        result.model_name, result.model_version, result.top5, result.latency_ms, request
    )


def _predictions_out(
    name: str, version: str, predictions: list[Any], elapsed_ms: float, request: Request
) -> Response:
    """A ``PredictionsOut``, encoded directly."""
    return json_response(
        {
            "model_name": name,
            "model_version": version,
            "predictions": predictions,
            "processing_time_ms": round(elapsed_ms, 3),
            "request_id": request_id(request),
        }
    )


async def _answer(request: Request, target: Target) -> Response:
    """Both predict routes: an image model takes a multipart upload, any other a JSON body.
    No FastAPI dependencies on this path: each costs more than the work it stands for."""
    caller = await predictor(request)
    if is_multipart(request):
        return await _classify_upload(request, caller, target)
    predictions: PredictionService = request.app.state.predictions
    result = await predictions.predict(
        target,
        await request.body(),
        request_id(request),
        caller,
        timeout_header=request.headers.get(TIMEOUT_HEADER),
    )
    return _predictions_out(
        result.model_name,
        result.model_version,
        result.predictions,
        result.processing_time_ms,
        request,
    )


def create_router(example: Signature) -> APIRouter:
    """The generic prediction routes, documented with a row of ``example``."""
    router = APIRouter(tags=["predict"])
    body = {**_generic_body(example), **PREDICTOR_SECURITY}

    @router.post(
        "/api/v1/models/{name}/predict",
        response_model=PredictionsOut,
        summary="Predict with a model's production (or another alias's) version",
        openapi_extra=body,
        responses=PREDICT_ERRORS,
    )
    @calls_predictor
    async def predict(name: ModelName, request: Request, alias: AliasQuery = None) -> Response:
        return await _answer(request, Target(name, alias=alias))

    @router.post(
        "/api/v1/models/{name}/versions/{version}/predict",
        response_model=PredictionsOut,
        summary="Predict with one specific version",
        openapi_extra=body,
        responses=PREDICT_ERRORS,
    )
    @calls_predictor
    async def predict_version(
        name: ModelName,
        version: Annotated[int, Path(ge=1, le=1_000_000)],
        request: Request,
    ) -> Response:
        return await _answer(request, Target(name, version=version))

    return router
