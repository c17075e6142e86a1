"""Liveness and readiness for probes (no details); component details and Prometheus metrics
for operators (the metrics token, or an administrator)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from modelport import __version__
from modelport.auth.dependencies import IsOperator, require_operator
from modelport.db.engine import database_is_reachable
from modelport.dependencies import get_services
from modelport.monitoring.schemas import ComponentOut, HealthOut, RootStatusOut
from modelport.services import Services

router = APIRouter(tags=["health"])
ServicesDep = Annotated[Services, Depends(get_services)]
LOG_WRITE_FAILED = "the last write to the database failed; the server log has the cause"


@router.get("/", response_model=RootStatusOut, summary="Service status at a glance")
async def root(services: ServicesDep) -> RootStatusOut:
    database = await database_is_reachable(services.engine)
    model_loaded = bool(services.models.loaded())
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
async def health(services: ServicesDep, operator: IsOperator) -> HealthOut:
    report = await _health(services)
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
async def ready(services: ServicesDep) -> JSONResponse:
    # Probes need the verdict, not the details (model names are not everyone's to read).
    report = _without_details(await _health(services))
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
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


async def _health(services: Services) -> HealthOut:
    database = await database_is_reachable(services.engine)
    loaded = services.models.loaded()
    log = services.prediction_log
    components = {
        "database": ComponentOut(status="up" if database else "down"),
        "models": ComponentOut(
            status="up" if loaded else "down",
            detail={
                "loaded": [f"{m.ref.model_name}:{m.ref.version}" for m in loaded],
                "cache": services.models.stats(),
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
