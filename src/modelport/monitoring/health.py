"""Liveness, readiness and the component view behind them."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from modelport import __version__
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


@router.get("/health", response_model=HealthOut, summary="Each component's state")
async def health(services: ServicesDep) -> HealthOut:
    return await _health(services)


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
    report = await _health(services)
    status_code = 200 if report.status == "ok" else 503
    return JSONResponse(report.model_dump(mode="json"), status_code=status_code)


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
