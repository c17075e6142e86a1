"""Liveness and readiness for probes (no details); component details and Prometheus metrics
for operators (the metrics token, or an administrator).

Readiness means "can serve the models it has loaded": the database, a loaded model and (when
rate limits fail closed) Redis are required; the artifact store and the prediction log are
reported but not required, since loaded models keep serving and log rows are spooled while
they are away. Readiness also reports how busy inference is (every thread busy: saturated), without
turning 503 for it: a replica that is merely busy still serves.

Liveness answers on the event loop, so a loop held by some work makes the probe time out (as it
should: nothing else is answered either); otherwise it turns 503 only when every inference
thread is stuck far past its run's time limit, which only a restart cures."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from modelport import __version__
from modelport.auth.dependencies import IsOperator, require_operator
from modelport.db.dependencies import get_engine
from modelport.db.engine import database_is_reachable
from modelport.monitoring.dependencies import get_prediction_log
from modelport.monitoring.metrics import exposition
from modelport.monitoring.prediction_log import PredictionLogWriter
from modelport.monitoring.probes import Probe, ProbeResult, redis_probe, store_probe
from modelport.monitoring.schemas import ComponentOut, HealthOut, RootStatusOut
from modelport.settings import Settings

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


class InferenceLoad(Protocol):
    """What health reads of the batcher (serving's): threads, busy, stuck, waiting."""

    def load(self) -> dict[str, int]: ...


@dataclass(frozen=True)
class HealthProbes:
    """The checks kept between requests: the artifact store always, Redis when configured."""

    store: Probe
    redis: Probe | None
    redis_fails_open: bool

    @classmethod
    def of(cls, settings: Settings, redis: Redis | None) -> HealthProbes:
        return cls(
            store_probe(settings),
            redis_probe(redis, settings.health_check_seconds) if redis is not None else None,
            settings.rate_limit_fail_open,
        )


@dataclass(frozen=True)
class HealthParts:
    engine: AsyncEngine
    models: LoadedModels
    prediction_log: PredictionLogWriter
    probes: HealthProbes
    inference: InferenceLoad | None = None


def get_health_probes(request: Request) -> HealthProbes:
    """Made on first use and kept on ``app.state``: a probe remembers its last answer."""
    state = request.app.state
    probes: HealthProbes | None = getattr(state, "health_probes", None)
    if probes is None:
        probes = HealthProbes.of(state.settings, getattr(state, "redis", None))
        state.health_probes = probes
    return probes


def get_health_parts(
    request: Request,
    engine: Annotated[AsyncEngine, Depends(get_engine)],
    prediction_log: Annotated[PredictionLogWriter, Depends(get_prediction_log)],
    probes: Annotated[HealthProbes, Depends(get_health_probes)],
) -> HealthParts:
    return HealthParts(
        engine, request.app.state.models, prediction_log, probes, inference_load(request)
    )


def inference_load(request: Request) -> InferenceLoad | None:
    predictions = getattr(request.app.state, "predictions", None)
    return getattr(predictions, "batcher", None)


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


@router.get(
    "/health/live",
    summary="Liveness: the process can serve",
    description="503 only when every inference thread is stuck far past its run's time limit "
    "(a restart is the cure); a busy process is alive. A held event loop makes this time out.",
    responses={503: {"description": "Every inference thread is stuck"}},
)
async def live(request: Request) -> JSONResponse:
    inference = inference_load(request)
    load = inference.load() if inference is not None else None
    if load is not None and load["stuck"] >= load["threads"]:
        return JSONResponse(
            {
                "status": "stuck",
                "detail": "every inference thread is running a model far past its time limit",
            },
            status_code=503,
        )
    return JSONResponse({"status": "alive"})


@router.get(
    "/health/ready",
    response_model=HealthOut,
    summary="Readiness: 503 only while this process cannot serve its loaded models",
    description="Not ready while the database is unreachable, no model is loaded, or Redis is "
    "down with MODELPORT_RATE_LIMIT_FAIL_OPEN=false. Every component is listed with its state: "
    "one that is down but not required (the artifact store, the prediction log) leaves the "
    "process ready, and its `impact` says what fails meanwhile.",
    responses={503: {"model": HealthOut, "description": "Not ready"}},
)
async def ready(parts: PartsDep) -> JSONResponse:
    # Probes need the verdict, not the details (model names are not everyone's to read).
    report = _without_details(await _health(parts))
    return JSONResponse(report.model_dump(mode="json"), status_code=200 if report.ready else 503)


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
        "database": _component(
            database,
            required=True,
            impact="requests that read the registry or accounts answer 503; predictions for "
            "models in memory are still answered and logged (spooled until it is back)",
        ),
        "models": _component(
            bool(loaded),
            required=True,
            impact="no model is in memory: nothing can be served until one loads",
            detail={
                "loaded": [f"{m.ref.model_name}:{m.ref.version}" for m in loaded],
                "cache": parts.models.stats(),
            },
        ),
        "prediction_log": _component(
            log.last_error is None,
            required=False,
            impact="log rows wait in memory and in the spool file until the database takes them",
            detail={
                "buffered": log.buffered,
                "spooled": log.spooled,
                "written": log.written,
                # The driver's text names hosts and ports: it stays in the server log.
                "last_error": None if log.last_error is None else LOG_WRITE_FAILED,
            },
        ),
    }
    if parts.inference is not None:
        load = parts.inference.load()
        components["inference"] = _component(
            load["busy"] < load["threads"],
            required=False,
            impact="saturated: every inference thread is busy, so new predictions wait in line "
            "(503 past the queue depth, 504 past their deadline); models quick enough to run "
            "on the event loop still answer",
            detail=load,
        )
    store = await parts.probes.store.state()
    components["artifact_store"] = _probed(
        store,
        required=False,
        impact="uploads, and loading a model that is not in memory yet, answer 503 until it "
        "answers; models in memory keep serving",
    )
    if parts.probes.redis is not None:
        fails_open = parts.probes.redis_fails_open
        components["redis"] = _probed(
            await parts.probes.redis.state(),
            required=not fails_open,
            impact="rate limits are not enforced until it answers (MODELPORT_RATE_LIMIT_FAIL_OPEN)"
            if fails_open
            else "requests are refused with 503 until it answers (MODELPORT_RATE_LIMIT_FAIL_OPEN"
            "=false)",
        )
    every_up = all(c.status == "up" for c in components.values())
    ready = all(c.status == "up" for c in components.values() if c.required)
    return HealthOut(status="ok" if every_up else "degraded", ready=ready, components=components)


def _component(
    up: bool, *, required: bool, impact: str, detail: dict[str, Any] | None = None
) -> ComponentOut:
    return ComponentOut(
        status="up" if up else "down",
        required=required,
        impact=None if up else impact,
        detail=detail or {},
    )


def _probed(result: ProbeResult, *, required: bool, impact: str) -> ComponentOut:
    detail = {"checked_seconds_ago": round(result.age(), 1), "problem": result.problem}
    return _component(result.up, required=required, impact=impact, detail=detail)


def _without_details(report: HealthOut) -> HealthOut:
    components = {
        name: c.model_copy(update={"detail": {}}) for name, c in report.components.items()
    }
    return report.model_copy(update={"components": components})
