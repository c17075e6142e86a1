"""The long-lived parts one app process shares: engine, store, caches, log writer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field, fields
from datetime import timedelta
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from modelport.auth.accounts import Accounts
from modelport.auth.callers import Callers
from modelport.auth.context import AuthContext
from modelport.auth.jwt_secret import load_or_create_secret
from modelport.auth.key_usage import KeyUsageRecorder
from modelport.auth.tokens import TokenCodec
from modelport.changes import ChangeHub
from modelport.changes_bridge import ChangeBridge, open_change_bridge
from modelport.db.engine import create_engine, create_session_factory
from modelport.images.service import CLASSIFY_JOB, ImageService
from modelport.ingest.safety import ModelBudgets
from modelport.jobs.runner import JobRunner
from modelport.monitoring.prediction_log import PredictionLogWriter
from modelport.ratelimit.buckets import Limiter
from modelport.ratelimit.factory import build_limiter
from modelport.registry import service as registry
from modelport.registry.management import LimitBounds, RegistryManager
from modelport.serving.batcher import Batcher, BatchPolicy
from modelport.serving.model_cache import ModelCache
from modelport.serving.resolver import VersionResolver
from modelport.serving.service import PredictionService
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from modelport.storage.protocol import ArtifactStore
from modelport.training.budget import TrainingLimits
from modelport.training.service import TRAIN_JOB, TrainingService

logger = logging.getLogger(__name__)
PRELOAD_RETRY_SECONDS = 5.0


@dataclass
class Services:
    settings: Settings
    engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]
    store: ArtifactStore
    models: ModelCache
    resolver: VersionResolver
    changes: ChangeHub
    registry_manager: RegistryManager
    prediction_log: PredictionLogWriter
    predictions: PredictionService
    tokens: TokenCodec
    limiter: Limiter
    key_usage: KeyUsageRecorder
    jobs: JobRunner
    images: ImageService
    training: TrainingService
    auth: AuthContext
    accounts: Accounts
    callers: Callers
    redis: Redis | None = None
    change_bridge: ChangeBridge | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        engine = create_engine(
            settings.database_url,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
        )
        session_factory = create_session_factory(engine)
        store = open_artifact_store(settings)
        resolver = VersionResolver(session_factory, settings.registry_cache_seconds)
        changes = ChangeHub()
        changes.subscribe(lambda change: resolver.forget(change))
        budgets = ModelBudgets.from_settings(settings)
        manager = RegistryManager(
            session_factory,
            store,
            changes,
            allow_pickle=settings.allow_pickle,
            limit_bounds=LimitBounds(
                timeout_default=settings.inference_timeout_seconds,
                timeout_max=max(
                    settings.inference_timeout_seconds, settings.inference_timeout_max_seconds
                ),
                concurrency_default=settings.model_concurrency,
                concurrency_max=settings.inference_pool_threads,
            ),
            budgets=budgets,
        )
        models = ModelCache(
            store,
            settings.inference_threads,
            max_models=settings.model_cache_max_models,
            max_bytes=settings.model_cache_max_bytes,
            retry_seconds=settings.model_load_retry_seconds,
            budgets=budgets,
            record_budget=manager.record_budget,
        )
        log = PredictionLogWriter(
            session_factory,
            spool_path=settings.prediction_log_spool,
            buffer_size=settings.prediction_log_buffer,
            buffer_bytes=settings.prediction_log_buffer_bytes,
            batch_size=settings.prediction_log_batch,
            flush_interval=settings.prediction_log_flush_seconds,
            max_field_bytes=settings.prediction_log_max_field_bytes,
            retention_days=settings.prediction_log_retention_days,
        )
        batcher = Batcher(
            BatchPolicy(
                max_batch_size=settings.max_batch_size,
                max_batch_delay=settings.max_batch_delay_ms / 1000,
                max_queue=settings.max_queue_depth,
                run_seconds=settings.inference_timeout_seconds,
                max_concurrency=settings.model_concurrency,
            ),
            pool_threads=settings.inference_pool_threads,
        )
        predictions = PredictionService(
            resolver,
            models,
            log,
            settings.max_batch_rows,
            batcher,
            request_timeout=settings.request_timeout_seconds,
        )
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        tokens = TokenCodec(
            load_or_create_secret(secret, settings.var_dir),
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            access_ttl=timedelta(minutes=settings.access_token_minutes),
            refresh_ttl=timedelta(days=settings.refresh_token_days),
        )
        redis = (
            Redis.from_url(settings.redis_url.get_secret_value(), socket_timeout=0.5)
            if settings.redis_url is not None
            else None
        )
        runner = JobRunner(
            session_factory,
            poll_seconds=settings.job_poll_seconds,
            lease_seconds=settings.job_lease_seconds,
            jobs_per_owner=settings.jobs_per_owner,
        )
        images = ImageService(
            session_factory, store, resolver, models, log, runner, settings.max_image_pixels
        )
        # Each job kind is registered here, once, by the part that assembles the process; each
        # lane runs its own jobs, so a photo is never classified behind a training.
        runner.register(
            CLASSIFY_JOB, images.handle_job, on_give_up=images.job_given_up, lane="images"
        )
        training = TrainingService(
            session_factory,
            store,
            runner,
            TrainingLimits(
                max_cost=settings.training_max_cost,
                time_limit_seconds=settings.training_time_limit_seconds,
                memory_limit_bytes=settings.training_memory_limit_bytes,
                max_artifact_bytes=settings.training_max_artifact_bytes,
            ),
        )
        runner.register(TRAIN_JOB, training.handle_job, lane="training")
        limiter = build_limiter(settings, redis)
        key_usage = KeyUsageRecorder(session_factory)
        callers = Callers(session_factory, settings.auth_cache_seconds)
        changes.subscribe(callers.forget)
        auth = AuthContext(settings, session_factory, tokens, limiter, key_usage, callers)

        def expire_caches() -> None:
            callers.expire_all()
            resolver.expire_all()

        bridge = open_change_bridge(
            changes,
            expire_caches,
            redis_url=settings.redis_url.get_secret_value() if settings.redis_url else None,
            engine=engine,
        )
        accounts = Accounts(
            session_factory,
            tokens,
            changes,
            allow_registration=settings.allow_registration,
            default_key_rate_limit=settings.rate_limit_api_key_per_minute,
        )
        return cls(
            settings,
            engine,
            session_factory,
            store,
            models,
            resolver,
            changes,
            manager,
            log,
            predictions,
            tokens=tokens,
            limiter=limiter,
            key_usage=key_usage,
            jobs=runner,
            images=images,
            training=training,
            auth=auth,
            accounts=accounts,
            callers=callers,
            redis=redis,
            change_bridge=bridge,
        )

    def install(self, state: Any) -> None:
        """Put each shared part on ``app.state`` under its own name, where the domains'
        dependency providers (``serving.dependencies``, ``db.dependencies``, ...) find it."""
        state.services = self
        for part in fields(self):
            if not part.name.startswith("_"):
                setattr(state, part.name, getattr(self, part.name))

    async def start(self) -> None:
        if self.change_bridge is not None:
            self.change_bridge.start()
        self.prediction_log.start()
        self.predictions.batcher.wind_down_on_signals()
        self.key_usage.start()
        self.limiter.start()
        if self.settings.run_jobs:
            self.jobs.start()
        self._tasks.append(asyncio.create_task(self._preload_production(), name="preload"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.change_bridge is not None:
            await self.change_bridge.stop()
        await self.jobs.close()
        await self.key_usage.close()
        self.predictions.close()
        await self.prediction_log.close(self.settings.shutdown_flush_seconds)
        await self.limiter.close()  # unused leased tokens go back to Redis
        if self.redis is not None:
            await self.redis.aclose()
        await self.engine.dispose()

    async def _preload_production(self) -> None:
        """Load every ``production`` version; retry while the database or store is away."""
        while True:
            try:
                async with self.session_factory() as session:
                    refs = await registry.production_refs(session)
            except Exception as exc:
                logger.warning("preloading models failed; retrying", extra={"error": str(exc)})
                await asyncio.sleep(PRELOAD_RETRY_SECONDS)
                continue
            for ref in refs:
                self.resolver.remember(ref, registry.DEFAULT_ALIAS)
                try:
                    await self.models.get(ref)
                except Exception as exc:  # one broken model must not keep the others out
                    logger.error(
                        "could not load model",
                        extra={
                            "model": ref.model_name,
                            "version": ref.version,
                            "error": str(exc),
                            "internal": getattr(exc, "internal", None),  # the cause, for us
                        },
                    )
            logger.info("preloaded production models", extra={"models": len(self.models.loaded())})
            return
