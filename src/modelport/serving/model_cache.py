"""Loaded models kept in memory: an LRU bounded by count and by artifact bytes. Each version is
loaded once, even when many first requests for it arrive together."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass

import anyio
from prometheus_client import Counter

from modelport.registry.service import VersionRef
from modelport.runtimes.loader import Runtime, load_runtime
from modelport.storage.protocol import ArtifactStore

logger = logging.getLogger(__name__)
CACHE_EVENTS = Counter(
    "modelport_model_cache_events_total", "Model cache hits, misses, loads and evictions", ["event"]
)


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
    ) -> None:
        self._store = store
        self._intra_op_threads = intra_op_threads
        self._max_models = max_models
        self._max_bytes = max_bytes
        self._models: OrderedDict[uuid.UUID, LoadedModel] = OrderedDict()
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self.hits = self.misses = self.loads = self.evictions = 0

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
        }

    async def get(self, ref: VersionRef) -> LoadedModel:
        model = self._models.get(ref.version_id)
        if model is not None:
            self._models.move_to_end(ref.version_id)
            self._count("hits")
            return model
        self._count("misses")
        lock = self._locks.setdefault(ref.version_id, asyncio.Lock())
        async with lock:
            model = self._models.get(ref.version_id)
            if model is None:
                model = await anyio.to_thread.run_sync(self._load, ref)
                self._models[ref.version_id] = model
                self._count("loads")
                self._evict(keep=ref.version_id)
        self._locks.pop(ref.version_id, None)
        return model

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
