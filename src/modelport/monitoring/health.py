"""Liveness and readiness for probes (no details); component details and Prometheus metrics
for operators (the metrics token, or an administrator)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Protocol

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sqlalchemy.ext.asyncio import AsyncEngine

from modelport import __version__
from modelport.auth.dependencies import IsOperator, require_operator
from modelport.db.dependencies import get_engine
from modelport.db.engine import database_is_reachable
from modelport.monitoring.dependencies import get_prediction_log
from modelport.monitoring.metrics import exposition
from modelport.monitoring.prediction_log import PredictionLogWriter
from modelport.monitoring.schemas import ComponentOut, HealthOut, RootStatusOut

router = APIRouter(tags=["health"])
LOG_WRITE_FAILED = "the last write to the database failed; the server log has the cause"


class _Ref(Protocol):
    model_name: str
    version: int


class _Loaded(Protocol):
    @property
    def ref(self) -> _Ref: ...


class LoadedModels(Protocol):
    """What health reads of the model cache (which lives above this package, in serving)."""

    def loaded(self) -> Sequence[_Loaded]: ...

    def stats(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class HealthParts:
    engine: AsyncEngine
    models: LoadedModels
    prediction_log: PredictionLogWriter


def get_health_parts(
    request: Request,
    engine: Annotated[AsyncEngine, Depends(get_engine)],
    prediction_log: Annotated[PredictionLogWriter, Depends(get_prediction_log)],
) -> HealthParts:
    return HealthParts(engine, request.app.state.models, prediction_log)


PartsDep = Annotated[HealthParts, Depends(get_health_parts)]


@router.get("/", response_model=RootStatusOut, summary="Service status at a glance")
async def root(parts: PartsDep) -> RootStatusOut:
    database = await database_is_reachable(parts.engine)
    model_loaded = bool(parts.models.loaded())
    return RootStatusOut(
        status="ok" if database and model_loaded else "degraded",
        model_loaded=model_loaded,
        database_connected=database,
        version=__version__,
    )


@router.get("/ping", summary="Cheapest possible check that the process answers")
async def ping() -> dict[str, str]:
    return {"ping": "pong"}


@router.get(
    "/health",
    response_model=HealthOut,
    summary="Each component's state; details (loaded models, cache, log) for operators",
    description="Operators (the MODELPORT_METRICS_TOKEN as a Bearer token, or an administrator) "
    "see each component's details; everyone else sees only whether each is up.",
)
async def health(parts: PartsDep, operator: IsOperator) -> HealthOut:
    report = await _health(parts)
    return report if operator else _without_details(report)


@router.get("/health/live", summary="Liveness: the process is running")
async def live() -> dict[str, str]:
    return {"status": "alive"}


@router.get(
    "/health/ready",
    response_model=HealthOut,
    summary="Readiness: 503 while the database is unreachable or no model is loaded",
    responses={503: {"model": HealthOut, "description": "Not ready"}},
)
async def ready(parts: PartsDep) -> JSONResponse:
    # Probes need the verdict, not the details (model names are not everyone's to read).
    report = _without_details(await _health(parts))
    status_code = 200 if report.status == "ok" else 503
    return JSONResponse(report.model_dump(mode="json"), status_code=status_code)


@router.get(
    "/metrics",
    summary="Prometheus metrics (operators)",
    description="Series are labelled with model names, so they are for operators only: send "
    "MODELPORT_METRICS_TOKEN as a Bearer token (Prometheus: `authorization: {credentials: ...}`)"
    " or an administrator's credentials.",
    response_class=Response,
    dependencies=[Depends(require_operator)],
    responses={401: {"description": "No credentials"}, 403: {"description": "Not an operator"}},
)
async def metrics() -> Response:
    # Every worker's values, whichever worker answers (monitoring.metrics).
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


async def _health(parts: HealthParts) -> HealthOut:
    database = await database_is_reachable(parts.engine)
    loaded = parts.models.loaded()
    log = parts.prediction_log
    components = {
        "database": ComponentOut(status="up" if database else "down"),
        "models": ComponentOut(
            status="up" if loaded else "down",
            detail={
                "loaded": [f"{m.ref.model_name}:{m.ref.version}" for m in loaded],
                "cache": parts.models.stats(),
            },
        ),
        "prediction_log": ComponentOut(
            status="up" if log.last_error is None else "down",
            detail={
                "buffered": log.buffered,
                "spooled": log.spooled,
                "written": log.written,
                # The driver's text names hosts and ports: it stays in the server log.
                "last_error": None if log.last_error is None else LOG_WRITE_FAILED,
            },
        ),
    }
    healthy = database and bool(loaded)
    return HealthOut(status="ok" if healthy else "degraded", components=components)


def _without_details(report: HealthOut) -> HealthOut:
    components = {name: ComponentOut(status=c.status) for name, c in report.components.items()}
    return HealthOut(status=report.status, components=components)
