"""Open Inference Protocol (KServe V2) endpoints under /v2, for Triton and KServe clients.

Errors here are protocol-shaped, ``{"error": "..."}``, with 400 for any request the model
cannot use (the REST endpoints answer 422 with field-by-field details instead).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from modelport import __version__
from modelport.auth.dependencies import Predictor, Reader
from modelport.auth.principal import Principal
from modelport.builtin.wine import WINE_SIGNATURE
from modelport.db.engine import database_is_reachable
from modelport.dependencies import get_services
from modelport.errors import InvalidInputError, ModelportError, UnsupportedMediaTypeError
from modelport.services import Services
from modelport.serving.batcher import TIMEOUT_HEADER
from modelport.serving.service import Target
from modelport.serving.v2_schemas import (
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ProtocolError,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from modelport.serving.v2_service import (
    BINARY_HEADER,
    EXTENSIONS,
    InferCall,
    ModelDirectory,
    parse_version,
)

logger = logging.getLogger(__name__)


def error_response(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


def protocol_error(exc: ModelportError) -> JSONResponse:
    """The protocol answers every unusable request with 400; other statuses keep their code."""
    if exc.status_code >= 500:
        logger.error("request failed", extra={"kind": exc.kind, "error": exc.message})
    if isinstance(exc, UnsupportedMediaTypeError):  # an image model
        message = (
            f"{exc.message.split(':')[0]}; the V2 protocol here serves tabular models only, "
            "classify images with POST /api/v1/models/{name}/predict"
        )
        return error_response(400, message)
    if isinstance(exc, InvalidInputError):
        return error_response(400, _invalid_input_message(exc))
    return error_response(exc.status_code, exc.message, exc.headers)


def _invalid_input_message(exc: InvalidInputError) -> str:
    """Signature errors name the row and feature the tensors were turned into."""
    first = exc.errors[0]
    loc = first.get("loc", [])
    if len(loc) == 4 and loc[:2] == ["body", "row"]:
        got = first.get("input")
        shown = f" (got {got!r})" if isinstance(got, int | float) else ""
        return f"row {loc[2]}, feature {loc[3]!r}: {first['msg']}{shown}"
    return exc.message


class ProtocolRoute(APIRoute):
    """Answers this router's errors, including auth and path errors, as ``{"error": ...}``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def protocol_errors(request: Request) -> Response:
            try:
                return await handler(request)
            except ModelportError as exc:
                return protocol_error(exc)
            except RequestValidationError as exc:
                error = exc.errors()[0]
                where = ".".join(str(part) for part in error.get("loc", ())) or "request"
                return error_response(400, f"{where}: {error.get('msg', 'invalid')}")

        return protocol_errors


router = APIRouter(prefix="/v2", tags=["open inference protocol (v2)"], route_class=ProtocolRoute)
ServicesDep = Annotated[Services, Depends(get_services)]
ModelName = Annotated[str, Path(max_length=128, description="Model name, e.g. wine-quality")]
VersionPath = Annotated[str, Path(max_length=16, description="Version number, e.g. 1")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ProtocolError, "description": "A request the model cannot use"},
    404: {"model": ProtocolError, "description": "Unknown model or version"},
    413: {"model": ProtocolError, "description": "Too many rows"},
    503: {
        "model": ProtocolError,
        "description": "The model cannot be served right now, or too many requests already "
        "wait for it (then with Retry-After)",
    },
    504: {
        "model": ProtocolError,
        "description": "The deadline (X-Request-Timeout, or the default) passed in line",
    },
}
_FIRST_WINE = [spec.example for spec in WINE_SIGNATURE.inputs]
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "examples": ["FP32"]},
        "data": {"type": "array", "description": "Row-major values, flat or nested"},
        "parameters": {"type": "object"},
    },
}
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": _TENSOR},
                        "outputs": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "parameters": {"type": "object"},
                                },
                            },
                        },
                    },
                },
                "examples": {
                    "2-D tensor": {
                        "summary": "All features in one [rows, features] tensor",
                        "value": {
                            "inputs": [
                                {
                                    "name": "features",
                                    "shape": [1, len(_FIRST_WINE)],
                                    "datatype": "FP32",
                                    "data": [_FIRST_WINE],
                                }
                            ]
                        },
                    },
                    "per feature": {
                        "summary": "One [rows] tensor per feature",
                        "value": {
                            "inputs": [
                                {"name": s.name, "shape": [1], "datatype": "FP32", "data": [ex]}
                                for s, ex in zip(WINE_SIGNATURE.inputs, _FIRST_WINE, strict=True)
                            ]
                        },
                    },
                },
            }
        },
    }
}


def _directory(services: Services) -> ModelDirectory:
    return ModelDirectory(services.session_factory, services.resolver, services.models)


@router.get("", response_model=ServerMetadata, summary="Server metadata")
async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="modelport", version=__version__, extensions=EXTENSIONS)


@router.get("/health/live", response_model=ServerLive, summary="Liveness: the process answers")
async def server_live() -> ServerLive:
    return ServerLive(live=True)


@router.get(
    "/health/ready",
    response_model=ServerReady,
    summary="Readiness: 503 while the database is unreachable or no model is loaded",
    responses={503: {"description": "Not ready; `error` says why"}},
)
async def server_ready(services: ServicesDep) -> Response:
    problems = []
    if not await database_is_reachable(services.engine):
        problems.append("the database is unreachable")
    if not services.models.loaded():
        problems.append("no model is loaded")
    if problems:
        return JSONResponse({"ready": False, "error": "; ".join(problems)}, status_code=503)
    return JSONResponse({"ready": True})


async def _model_ready(
    services: Services, caller: Principal, name: str, version: int | None
) -> Response:
    directory = _directory(services)
    ref = await directory.visible(caller, name, version)
    if directory.is_loaded(ref):
        return JSONResponse(ModelReady(name=ref.model_name, ready=True).model_dump())
    return JSONResponse(
        {
            "name": ref.model_name,
            "ready": False,
            "error": f"model {ref.model_name!r} version {ref.version} is not loaded yet",
        },
        status_code=503,
    )


@router.get(
    "/models/{name}",
    response_model=ModelMetadata,
    summary="Model metadata: versions, platform, input and output tensors",
    responses=_ERRORS,
)
async def model_metadata(name: ModelName, services: ServicesDep, caller: Reader) -> ModelMetadata:
    return await _directory(services).metadata(caller, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    summary="Metadata of one version",
    responses=_ERRORS,
)
async def version_metadata(
    name: ModelName, version: VersionPath, services: ServicesDep, caller: Reader
) -> ModelMetadata:
    return await _directory(services).metadata(caller, name, parse_version(name, version))


@router.get(
    "/models/{name}/ready",
    response_model=ModelReady,
    summary="Model readiness: 200 once its production version is loaded, else 503",
    responses=_ERRORS,
)
async def model_ready(name: ModelName, services: ServicesDep, caller: Reader) -> Response:
    return await _model_ready(services, caller, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReady,
    summary="Readiness of one version",
    responses=_ERRORS,
)
async def version_ready(
    name: ModelName, version: VersionPath, services: ServicesDep, caller: Reader
) -> Response:
    return await _model_ready(services, caller, name, parse_version(name, version))


async def _infer(
    request: Request, services: Services, caller: Principal, target: Target
) -> Response:
    call = InferCall(
        services.models, services.settings.max_batch_rows, request.headers.get(BINARY_HEADER)
    )
    result = await services.predictions.predict_with(
        target,
        await request.body(),
        str(request.state.request_id),
        caller,
        parse=call.parse,
        read_rows=call.read_rows,
        timeout_header=request.headers.get(TIMEOUT_HEADER),
    )
    body, headers = call.respond(result)
    return Response(body, headers=headers)


@router.post(
    "/models/{name}/infer",
    response_model=InferenceResponse,
    summary="Inference with the production version",
    openapi_extra=_INFER_BODY,
    responses=_ERRORS,
)
async def infer(
    name: ModelName, request: Request, services: ServicesDep, caller: Predictor
) -> Response:
    return await _infer(request, services, caller, Target(name))


@router.post(
    "/models/{name}/versions/{version}/infer",
    response_model=InferenceResponse,
    summary="Inference with one specific version",
    openapi_extra=_INFER_BODY,
    responses=_ERRORS,
)
async def infer_version(
    name: ModelName,
    version: VersionPath,
    request: Request,
    services: ServicesDep,
    caller: Predictor,
) -> Response:
    return await _infer(request, services, caller, Target(name, parse_version(name, version)))
