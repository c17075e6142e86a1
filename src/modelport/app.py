"""create_app(settings) -> FastAPI: routers, middleware, lifespan; nothing else."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from modelport import __version__
from modelport.auth.router import router as auth_router
from modelport.builtin.wine import WINE_SIGNATURE
from modelport.builtin.wine_api import router as wine_router
from modelport.datasets.router import router as datasets_router
from modelport.http.errors import install_error_handlers
from modelport.http.middleware import RequestContextMiddleware
from modelport.http.openapi import document_common_responses
from modelport.http.proxies import TrustedProxies, parse_networks
from modelport.images.router import router as images_router
from modelport.jobs.router import router as jobs_router
from modelport.monitoring.health import router as health_router
from modelport.monitoring.logs import configure_logging
from modelport.monitoring.metrics import worker_stopped
from modelport.monitoring.router import router as predictions_router
from modelport.registry.router import router as registry_router
from modelport.services import Services
from modelport.serving import router as serving_routes
from modelport.serving import v2_router as v2_routes
from modelport.settings import Settings, load_settings
from modelport.training.router import router as training_router


def _freeze_what_start_up_built() -> None:
    """Imports, the app and the loaded models live as long as the process. Left in the garbage
    collector's view, each full collection walks all of them: with the built-ins loaded that
    is a pause of about 180 ms for every request in flight, the whole of the tail latency.
    Frozen, a collection walks only what requests create."""
    gc.collect()
    gc.freeze()


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.build(settings)
        services.install(app.state)
        await services.start()
        _freeze_what_start_up_built()
        try:
            yield
        finally:
            await services.stop()
            worker_stopped()

    app = FastAPI(
        title="modelport",
        version=__version__,
        description="Serve trained models: validated REST predictions, a model registry and "
        "an audit log of every prediction.",
        lifespan=lifespan,
        # Prometheus metrics and JSON logs are modelport's own; OpenTelemetry when asked for.
        telemetry=None
        if settings.opentelemetry
        else {"tracing": False, "metrics": False, "logs": False},
    )
    # Added last runs first: the request context wraps everything (and adds the headers every
    # response carries); CORS, only when origins are configured, answers preflights inside it.
    if settings.cors_allow_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_allow_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "X-Request-ID",
                "X-Delete-Token",
            ],
            expose_headers=[
                "X-Request-ID",
                "X-RateLimit-Limit",
                "X-RateLimit-Remaining",
                "X-RateLimit-Reset",
                "Retry-After",
            ],
        )
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_request_bytes,
        max_upload_bytes=settings.max_upload_bytes,
        max_model_upload_bytes=settings.max_model_upload_bytes,
        trusted_proxies=TrustedProxies(
            parse_networks(settings.trusted_proxies), settings.proxy_header
        ),
        max_header_count=settings.max_header_count,
        body_timeout_seconds=settings.body_timeout_seconds,
    )
    install_error_handlers(app, settings.max_validation_errors)
    for router in (
        # Prediction routes first: a request is matched against the routes in this order, and
        # predictions are most of the traffic. No other route matches their paths.
        wine_router,
        # The generic routes' docs show a wine row: the built-in every install has.
        serving_routes.create_router(example=WINE_SIGNATURE),
        v2_routes.create_router(example=WINE_SIGNATURE),
        health_router,
        auth_router,
        registry_router,
        datasets_router,
        predictions_router,
        images_router,
        jobs_router,
        training_router,
    ):
        app.include_router(router)
    document_common_responses(app, settings)
    return app


def create_app_from_env() -> FastAPI:
    """Entry point for ``uvicorn --factory`` (each worker process builds its own app)."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
