"""Loaded models kept in memory: an LRU bounded by count and by the memory the models need.
Each version is loaded once, even when many first requests for it arrive together, and a version
that failed to load is not tried again for a few seconds.

The memory of a version is what its trial measured at upload (``model_versions.memory_bytes``).
A version stored before budgets existed is measured the same way, in a child process, before
this process loads it: one over its budget is never loaded here, and the registry records why
(``budget_error``), so start-up no longer preloads it."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import anyio
from prometheus_client import Counter

from modelport.errors import BadRequestError, ModelportError, ModelUnavailableError
from modelport.ingest.safety import ModelBudgets, Trial, UnsafeToLoadError, measure_in_child
from modelport.registry.service import VersionRef
from modelport.runtimes.loader import Runtime, load_runtime
from modelport.storage.protocol import ArtifactStore

logger = logging.getLogger(__name__)
CACHE_EVENTS = Counter(
    "modelport_model_cache_events_total",
    "Model cache hits, misses, loads, failed loads and evictions",
    ["event"],
)


@cache  # a handful of event names; a hit is counted on every prediction
def _cache_event(event: str) -> Any:
    return CACHE_EVENTS.labels(event=event)


# Flavors a version never measured is measured in before it loads here: not pickles (allowed
# only from administrators), whose code runs wherever they load and may count on this process.
_MEASURED_AT_LOAD = ("onnx", "sklearn", "xgboost", "lightgbm")
# A version never measured is taken to need this many times its file size.
UNMEASURED_MEMORY_FACTOR = 4
_MiB = 1024**2

# (model name, version id, memory bytes, budget error): stores a measure in the registry.
BudgetRecorder = Callable[[str, uuid.UUID, int | None, str | None], Awaitable[None]]

# Measures taken in this process, by artifact: the same bytes measure the same, so a file shared
# by many versions (or registered again) starts one child, not one per version.
_MEASURES: dict[tuple[str, str, ModelBudgets], Trial | UnsafeToLoadError] = {}


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
        budgets: ModelBudgets | None = None,
        record_budget: BudgetRecorder | None = None,
    ) -> None:
        """``max_bytes`` bounds the memory of the loaded models. With ``budgets``, a version
        with no measured memory is measured in a child before it is loaded here, and the
        outcome goes to ``record_budget``."""
        self._store = store
        self._intra_op_threads = intra_op_threads
        self._max_models = max_models
        self._max_bytes = max_bytes
        self._models: OrderedDict[uuid.UUID, LoadedModel] = OrderedDict()
        self._retry_seconds = retry_seconds
        self._loading: dict[uuid.UUID, asyncio.Future[LoadedModel]] = {}
        self._failures: dict[uuid.UUID, _Failure] = {}
        self._budgets = budgets
        self._record_budget = record_budget
        self._measured: dict[uuid.UUID, int] = {}
        self._over_budget: dict[uuid.UUID, str] = {}
        self.hits = self.misses = self.loads = self.evictions = self.failures = 0

    def loaded(self) -> list[LoadedModel]:
        return list(self._models.values())

    @property
    def bytes_loaded(self) -> int:
        """The memory the loaded models need (measured, or estimated from their files)."""
        return sum(self.memory_of(model.ref) for model in self._models.values())

    def memory_of(self, ref: VersionRef) -> int:
        measured = self._measured.get(ref.version_id, ref.memory_bytes)
        return measured if measured is not None else ref.size_bytes * UNMEASURED_MEMORY_FACTOR

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
        self._refuse_over_budget(ref)
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

    def _refuse_over_budget(self, ref: VersionRef) -> None:
        """A version that failed its budget is never loaded; one measured to need more memory
        than the whole cache may hold cannot be kept."""
        failed = self._over_budget.get(ref.version_id) or ref.budget_error
        if failed:
            raise _budget_refusal(ref, failed)
        measured = self._measured.get(ref.version_id, ref.memory_bytes)
        if measured is not None and measured > self._max_bytes:
            raise ModelUnavailableError(
                f"model {ref.model_name!r} version {ref.version} needs {measured // _MiB:,} MiB "
                f"of memory, more than the {self._max_bytes // _MiB:,} MiB this server keeps for "
                "loaded models (MODELPORT_MODEL_CACHE_MAX_BYTES)"
            )

    async def _load_once(self, ref: VersionRef) -> LoadedModel:
        try:
            model = await self._measure_then_load(ref)
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

    async def _measure_then_load(self, ref: VersionRef) -> LoadedModel:
        """Read the artifact and, for a version never measured, measure it in a child (and
        record the measure); load it here only when it is within its budget and fits."""
        try:
            data, trial = await anyio.to_thread.run_sync(self._read_and_measure, ref)
        except UnsafeToLoadError as exc:
            self._over_budget[ref.version_id] = exc.message
            await self._record(ref, None, exc.message)
            raise _budget_refusal(ref, exc.message) from None
        if trial is not None:
            self._measured[ref.version_id] = trial.memory_bytes
            await self._record(ref, trial.memory_bytes, None)
            self._refuse_over_budget(ref)
        runtime = await anyio.to_thread.run_sync(
            load_runtime, ref.flavor, data, self._intra_op_threads
        )
        return LoadedModel(ref=ref, runtime=runtime)

    def _remember_failure(self, ref: VersionRef, error: ModelportError) -> None:
        """A broken artifact is not read and parsed again on every request: the failure is
        answered from memory until the retry time."""
        self._failures[ref.version_id] = _Failure(time.monotonic() + self._retry_seconds, error)
        self._count("failures")

    def _count(self, event: str) -> None:
        setattr(self, event, getattr(self, event) + 1)
        _cache_event(event).inc()

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

    async def _record(self, ref: VersionRef, memory: int | None, error: str | None) -> None:
        if self._record_budget is None:
            return
        try:
            await self._record_budget(ref.model_name, ref.version_id, memory, error)
        except Exception as exc:  # the measure still holds in this process
            logger.warning(
                "could not record a model's measured budget",
                extra={"model": ref.model_name, "version": ref.version, "error": str(exc)},
            )

    def _read_and_measure(self, ref: VersionRef) -> tuple[bytes, Trial | None]:
        data = self._store.open_verified(ref.artifact_uri, ref.sha256)
        return data, self._measure(ref, data)

    def _measure(self, ref: VersionRef, data: bytes) -> Trial | None:
        """The trial of a version never measured (stored before budgets existed, or by a path
        that did not measure it), run in a child before this process loads the file. Raises
        ``UnsafeToLoadError`` when it breaks the budget or kills its loader; a file the library
        merely cannot load goes on to the load here, which says why as it always has."""
        if (
            self._budgets is None
            or ref.memory_bytes is not None
            or ref.flavor not in _MEASURED_AT_LOAD
        ):
            return None
        key = (ref.sha256, ref.flavor, self._budgets)
        known = _MEASURES.get(key)
        if known is None:
            try:
                known = measure_in_child(ref.flavor, data, self._budgets)
            except UnsafeToLoadError as exc:
                known = exc
            except BadRequestError:
                return None
            _MEASURES[key] = known
        if isinstance(known, UnsafeToLoadError):
            raise UnsafeToLoadError(known.message)
        return known


def _budget_refusal(ref: VersionRef, reason: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"model {ref.model_name!r} version {ref.version} is not served: it failed its resource "
        f"budget ({reason}); upload a smaller model, or ask an administrator to raise the limit"
    )
