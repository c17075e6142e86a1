"""Loaded models kept in memory: an LRU bounded by count and by artifact bytes. Each version is
loaded once, even when many first requests for it arrive together, and a version that failed to
load is not tried again for a few seconds."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import anyio
from prometheus_client import Counter

from modelport.errors import ModelportError, ModelUnavailableError
from modelport.registry.service import VersionRef
from modelport.runtimes.loader import Runtime, load_runtime
from modelport.storage.protocol import ArtifactStore

logger = logging.getLogger(__name__)
CACHE_EVENTS = Counter(
    "modelport_model_cache_events_total",
    "Model cache hits, misses, loads, failed loads and evictions",
    ["event"],
)


@dataclass(frozen=True)
class _Failure:
    until: float  # monotonic time after which the version may be tried again
    error: ModelportError


@dataclass(frozen=True)
class LoadedModel:
    ref: VersionRef
    runtime: Runtime


class ModelCache:
    def __init__(
        self,
        store: ArtifactStore,
        intra_op_threads: int = 1,
        max_models: int = 32,
        max_bytes: int = 4 * 1024**3,
        retry_seconds: float = 10.0,
    ) -> None:
        self._store = store
        self._intra_op_threads = intra_op_threads
        self._max_models = max_models
        self._max_bytes = max_bytes
        self._models: OrderedDict[uuid.UUID, LoadedModel] = OrderedDict()
        self._retry_seconds = retry_seconds
        self._loading: dict[uuid.UUID, asyncio.Future[LoadedModel]] = {}
        self._failures: dict[uuid.UUID, _Failure] = {}
        self.hits = self.misses = self.loads = self.evictions = self.failures = 0

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    @property
    def bytes_loaded(self) -> int:
        return sum(model.ref.size_bytes for model in self._models.values())

    def stats(self) -> dict[str, int]:
        return {
            "models": len(self._models),
            "bytes": self.bytes_loaded,
            "hits": self.hits,
            "misses": self.misses,
            "loads": self.loads,
            "evictions": self.evictions,
            "failures": self.failures,
        }

    async def get(self, ref: VersionRef) -> LoadedModel:
        model = self._models.get(ref.version_id)
        if model is not None:
            self._models.move_to_end(ref.version_id)
            self._count("hits")
            return model
        self._count("misses")
        failure = self._failures.get(ref.version_id)
        if failure is not None:
            if time.monotonic() < failure.until:
                # Answered from memory: the artifact is not read and parsed again.
                raise copy.copy(failure.error).with_traceback(None)
            del self._failures[ref.version_id]
        loading = self._loading.get(ref.version_id)
        if loading is None:
            loading = asyncio.ensure_future(self._load_once(ref))
            self._loading[ref.version_id] = loading
        # One load per version, shared by every waiter; a waiter that gives up (cancelled)
        # leaves the load running for the others.
        return await asyncio.shield(loading)

    async def _load_once(self, ref: VersionRef) -> LoadedModel:
        try:
            model = await anyio.to_thread.run_sync(self._load, ref)
        except ModelportError as exc:
            self._remember_failure(ref, exc)
            raise
        except Exception as exc:
            error = ModelUnavailableError(
                f"model {ref.model_name!r} version {ref.version} could not be loaded",
                internal=f"{type(exc).__name__}: {exc}",
            )
            self._remember_failure(ref, error)
            raise error from exc
        else:
            self._models[ref.version_id] = model
            self._count("loads")
            self._evict(keep=ref.version_id)
            return model
        finally:
            self._loading.pop(ref.version_id, None)

    def _remember_failure(self, ref: VersionRef, error: ModelportError) -> None:
        """A broken artifact is not read and parsed again on every request: the failure is
        answered from memory until the retry time."""
        self._failures[ref.version_id] = _Failure(time.monotonic() + self._retry_seconds, error)
        self._count("failures")

    def _count(self, event: str) -> None:
        setattr(self, event, getattr(self, event) + 1)
        CACHE_EVENTS.labels(event=event).inc()

    def _evict(self, keep: uuid.UUID) -> None:
        """Drop least recently used models until both bounds hold (never the one just loaded;
        requests still holding an evicted model finish with it)."""
        while len(self._models) > 1 and (
            len(self._models) > self._max_models or self.bytes_loaded > self._max_bytes
        ):
            oldest = next(iter(self._models))
            if oldest == keep:
                break
            evicted = self._models.pop(oldest)
            self._count("evictions")
            logger.info(
                "model evicted from memory",
                extra={"model": evicted.ref.model_name, "version": evicted.ref.version},
            )

    def _load(self, ref: VersionRef) -> LoadedModel:
        data = self._store.open_verified(ref.artifact_uri, ref.sha256)
        return LoadedModel(ref=ref, runtime=load_runtime(ref.flavor, data, self._intra_op_threads))
