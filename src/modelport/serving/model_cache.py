"""Loaded models kept in memory; each version is loaded once, even under concurrent first calls."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import anyio

from modelport.registry.artifacts import ArtifactStore
from modelport.registry.service import VersionRef
from modelport.runtimes.loader import Runtime, load_runtime


@dataclass(frozen=True)
class LoadedModel:
    ref: VersionRef
    runtime: Runtime


class ModelCache:
    def __init__(self, store: ArtifactStore, intra_op_threads: int = 1) -> None:
        self._store = store
        self._intra_op_threads = intra_op_threads
        self._models: dict[uuid.UUID, LoadedModel] = {}
        self._locks: dict[uuid.UUID, asyncio.Lock] = {}
        self.loads = 0

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    async def get(self, ref: VersionRef) -> LoadedModel:
        model = self._models.get(ref.version_id)
        if model is not None:
            return model
        lock = self._locks.setdefault(ref.version_id, asyncio.Lock())
        async with lock:
            model = self._models.get(ref.version_id)
            if model is None:
                model = await anyio.to_thread.run_sync(self._load, ref)
                self._models[ref.version_id] = model
                self.loads += 1
        return model

    def _load(self, ref: VersionRef) -> LoadedModel:
        data = self._store.open_verified(ref.artifact_uri, ref.sha256)
        return LoadedModel(ref=ref, runtime=load_runtime(ref.flavor, data, self._intra_op_threads))
