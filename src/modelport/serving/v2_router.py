"""Open Inference Protocol (KServe V2) endpoints under /v2, for Triton and KServe clients.

Errors here are protocol-shaped, ``{"error": "..."}``, with 400 for any request the model
cannot use (the REST endpoints answer 422 with field-by-field details instead).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from modelport import __version__
from modelport.auth.dependencies import PREDICTOR_SECURITY, Reader, calls_predictor, predictor
from modelport.auth.principal import Principal
from modelport.db.dependencies import EngineDep, SessionFactoryDep
from modelport.db.engine import database_is_reachable
from modelport.errors import InvalidInputError, ModelportError, UnsupportedMediaTypeError
from modelport.http.errors import log_failure
from modelport.monitoring.logs import request_id_var
from modelport.runtimes.signature import Signature
from modelport.serving.batcher import TIMEOUT_HEADER
from modelport.serving.dependencies import ModelCacheDep, ResolverDep
from modelport.serving.service import PredictionService, Target
from modelport.serving.v2_codec import BINARY_HEADER
from modelport.serving.v2_schemas import (
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ProtocolError,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from modelport.serving.v2_service import EXTENSIONS, InferCall, ModelDirectory, parse_version


def error_response(
    status_code: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    # The protocol's {"error": ...}, plus the request id every error body of ours carries.
    body = {"error": message, "request_id": request_id_var.get() or ""}
    return JSONResponse(body, status_code=status_code, headers=headers)


def protocol_error(exc: ModelportError) -> JSONResponse:
    """The protocol answers every unusable request with 400; other statuses keep their code."""
    log_failure(exc)
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


def _infer_body(example: Signature) -> dict[str, Any]:
    first = [spec.example for spec in example.inputs]
    return {
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
                                        "shape": [1, len(first)],
                                        "datatype": "FP32",
                                        "data": [first],
                                    }
                                ]
                            },
                        },
                        "per feature": {
                            "summary": "One [rows] tensor per feature",
                            "value": {
                                "inputs": [
                                    {"name": s.name, "shape": [1], "datatype": "FP32", "data": [ex]}
                                    for s, ex in zip(example.inputs, first, strict=True)
                                ]
                            },
                        },
                    },
                }
            },
        }
    }


async def get_directory(
    session_factory: SessionFactoryDep, resolver: ResolverDep, models: ModelCacheDep
) -> ModelDirectory:
    return ModelDirectory(session_factory, resolver, models)


DirectoryDep = Annotated[ModelDirectory, Depends(get_directory)]


async def server_metadata() -> ServerMetadata:
    return ServerMetadata(name="modelport", version=__version__, extensions=EXTENSIONS)


async def server_live() -> ServerLive:
    return ServerLive(live=True)


async def server_ready(engine: EngineDep, models: ModelCacheDep) -> Response:
    problems = []
    if not await database_is_reachable(engine):
        problems.append("the database is unreachable")
    if not models.loaded():
        problems.append("no model is loaded")
    if problems:
        return JSONResponse({"ready": False, "error": "; ".join(problems)}, status_code=503)
    return JSONResponse({"ready": True})


async def _model_ready(
    directory: ModelDirectory, caller: Principal, name: str, version: int | None
) -> Response:
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


async def model_metadata(name: ModelName, directory: DirectoryDep, caller: Reader) -> ModelMetadata:
    return await directory.metadata(caller, name, None)


async def version_metadata(
    name: ModelName, version: VersionPath, directory: DirectoryDep, caller: Reader
) -> ModelMetadata:
    return await directory.metadata(caller, name, parse_version(name, version))


async def model_ready(name: ModelName, directory: DirectoryDep, caller: Reader) -> Response:
    return await _model_ready(directory, caller, name, None)


async def version_ready(
    name: ModelName, version: VersionPath, directory: DirectoryDep, caller: Reader
) -> Response:
    return await _model_ready(directory, caller, name, parse_version(name, version))


async def _infer(request: Request, target: Target) -> Response:
    """Both infer routes. No FastAPI dependencies on this path: each costs more than the work
    it stands for."""
    caller = await predictor(request)
    state = request.app.state
    predictions: PredictionService = state.predictions
    max_rows = state.settings.max_batch_rows
    call = InferCall(state.models, max_rows, request.headers.get(BINARY_HEADER))
    result = await predictions.predict_with(
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


@calls_predictor
async def infer(name: ModelName, request: Request) -> Response:
    return await _infer(request, Target(name))


@calls_predictor
async def infer_version(
    name: ModelName,
    version: VersionPath,
    request: Request,
) -> Response:
    return await _infer(request, Target(name, parse_version(name, version)))


def create_router(example: Signature) -> APIRouter:
    """The V2 routes; the infer routes' docs show a row of ``example`` as tensors."""
    router = APIRouter(
        prefix="/v2", tags=["open inference protocol (v2)"], route_class=ProtocolRoute
    )
    infer_body = {**_infer_body(example), **PREDICTOR_SECURITY}
    router.add_api_route(
        "",
        server_metadata,
        methods=["GET"],
        response_model=ServerMetadata,
        summary="Server metadata",
    )
    router.add_api_route(
        "/health/live",
        server_live,
        methods=["GET"],
        response_model=ServerLive,
        summary="Liveness: the process answers",
    )
    router.add_api_route(
        "/health/ready",
        server_ready,
        methods=["GET"],
        response_model=ServerReady,
        summary="Readiness: 503 while the database is unreachable or no model is loaded",
        responses={503: {"description": "Not ready; `error` says why"}},
    )
    router.add_api_route(
        "/models/{name}",
        model_metadata,
        methods=["GET"],
        response_model=ModelMetadata,
        summary="Model metadata: versions, platform, input and output tensors",
        responses=_ERRORS,
    )
    router.add_api_route(
        "/models/{name}/versions/{version}",
        version_metadata,
        methods=["GET"],
        response_model=ModelMetadata,
        summary="Metadata of one version",
        responses=_ERRORS,
    )
    router.add_api_route(
        "/models/{name}/ready",
        model_ready,
        methods=["GET"],
        response_model=ModelReady,
        summary="Model readiness: 200 once its production version is loaded, else 503",
        responses=_ERRORS,
    )
    router.add_api_route(
        "/models/{name}/versions/{version}/ready",
        version_ready,
        methods=["GET"],
        response_model=ModelReady,
        summary="Readiness of one version",
        responses=_ERRORS,
    )
    router.add_api_route(
        "/models/{name}/infer",
        infer,
        methods=["POST"],
        response_model=InferenceResponse,
        summary="Inference with the production version",
        openapi_extra=infer_body,
        responses=_ERRORS,
    )
    router.add_api_route(
        "/models/{name}/versions/{version}/infer",
        infer_version,
        methods=["POST"],
        response_model=InferenceResponse,
        summary="Inference with one specific version",
        openapi_extra=infer_body,
        responses=_ERRORS,
    )
    return router
