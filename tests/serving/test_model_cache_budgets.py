"""The model cache is bounded by the memory versions need (measured by their trials), not by
their file bytes; a version stored before budgets existed is measured in a child before it is
loaded; one over its budget is never loaded, and never preloaded again at start."""

from __future__ import annotations

import dataclasses
import resource
import uuid
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select

from modelport.builtin.wine import TrainedWine
from modelport.db.engine import create_engine, create_session_factory
from modelport.registry import service as registry
from modelport.registry.service import VersionRef
from modelport.registry.tables import Model, ModelVersion
from modelport.runtimes.signature import Signature
from modelport.serving.model_cache import UNMEASURED_MEMORY_FACTOR, ModelCache
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from tests.helpers import WINE_ROW, register_trained, run, services_of
from tests.ingest.hostile_onnx import huge_at_run
from tests.registry.support import register_onnx, serve

MiB = 1024**2


def versions(settings: Settings, name: str) -> dict[int, tuple[int | None, str | None]]:
    """Each version's recorded memory and budget error."""

    async def read() -> dict[int, tuple[int | None, str | None]]:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                rows = await session.execute(
                    select(
                        ModelVersion.version, ModelVersion.memory_bytes, ModelVersion.budget_error
                    )
                    .join(Model, Model.id == ModelVersion.model_id)
                    .where(Model.name == name)
                )
                return {number: (memory, error) for number, memory, error in rows}
        finally:
            await engine.dispose()

    result: dict[int, tuple[int | None, str | None]] = run(read())
    return result


def record_memory(settings: Settings, name: str, memory: dict[int, int]) -> None:
    """What each version's trial measured at upload."""

    async def write() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                model = await registry.get_model(session, name)
                for number, value in memory.items():
                    version = registry.find_version(model, number)
                    await registry.record_budget(session, version.id, memory_bytes=value)
                await session.commit()
        finally:
            await engine.dispose()

    run(write())


def test_a_cache_of_n_bytes_holds_only_versions_whose_recorded_memory_fits(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    settings = make_settings(model_cache_max_bytes=250 * MiB)
    for _ in range(4):
        register_trained(settings, trained_wine)
    # Four copies of one small file: only their recorded memory tells them apart.
    record_memory(settings, "wine-quality", {1: 100 * MiB, 2: 100 * MiB, 3: 100 * MiB})
    record_memory(settings, "wine-quality", {4: 100 * MiB})
    with serve(settings) as client:
        for number in (1, 2):
            url = f"/api/v1/models/wine-quality/versions/{number}/predict"
            assert client.post(url, json=WINE_ROW).status_code == 200
        cache = services_of(client).models
        loaded = sorted(m.ref.version for m in cache.loaded())
        stats = cache.stats()

    # Preloaded [4]; 1 -> [4, 1]; 2 would make 300 MiB: 4 is evicted.
    assert loaded == [1, 2]
    assert stats["bytes"] == 200 * MiB <= settings.model_cache_max_bytes
    assert stats["evictions"] == 1


def test_a_version_needing_more_memory_than_the_whole_cache_is_refused_with_the_reason(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    settings = make_settings(model_cache_max_bytes=250 * MiB)
    register_trained(settings, trained_wine)
    register_trained(settings, trained_wine)
    record_memory(settings, "wine-quality", {1: 300 * MiB, 2: 50 * MiB})
    with serve(settings) as client:
        answer = client.post("/api/v1/models/wine-quality/versions/1/predict", json=WINE_ROW)
        production = client.post("/api/v1/models/wine-quality/predict", json=WINE_ROW)

    assert answer.status_code == 503
    assert "needs 300 MiB" in answer.json()["detail"]
    assert "MODELPORT_MODEL_CACHE_MAX_BYTES" in answer.json()["detail"]
    assert production.status_code == 200


def test_a_version_never_measured_is_measured_once_at_its_first_load_and_recorded(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    """Built-in models and versions stored before budgets existed have no recorded memory:
    the first load measures it in a child and records it for every later start."""
    settings = make_settings()
    register_trained(settings, trained_wine)
    assert versions(settings, "wine-quality") == {1: (None, None)}

    with serve(settings) as client:
        cache = services_of(client).models
        (model,) = cache.loaded()
        in_cache = cache.memory_of(model.ref)

    ((memory, error),) = versions(settings, "wine-quality").values()
    print(f"\nwine-quality: file {model.ref.size_bytes:,} bytes, memory {memory:,} bytes")
    assert error is None
    assert memory is not None and 0 < memory < settings.model_trial_memory_bytes
    assert in_cache == memory


def test_a_stored_version_over_its_budget_is_never_loaded_nor_preloaded_again(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    """A hostile file stored before budgets existed (its tensors grow to 5 GB on a batch of
    1,000 rows): measured in a child at the first start, recorded as over budget, and skipped
    by every later start; asking for it answers why."""
    settings = make_settings()
    register_trained(settings, trained_wine)
    register_onnx(settings, huge_at_run(factor=340, n_features=11), name="hostile")
    url = "/api/v1/models/hostile/predict"
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    with serve(settings) as client:
        first = client.post(url, json=WINE_ROW)
        wine = client.post("/api/v1/models/wine-quality/predict", json=WINE_ROW)
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    ((_, error),) = versions(settings, "hostile").values()

    with serve(settings) as client:
        cache = services_of(client).models
        preloaded = sorted(m.ref.model_name for m in cache.loaded())
        stats_after_start = cache.stats()
        again = client.post(url, json=WINE_ROW)

    print(f"\nthis process's peak grew by {(peak_after - peak_before) // 1024} MiB; {error}")
    assert error is not None and "MODELPORT_MODEL_TRIAL_MEMORY_BYTES" in error
    assert (first.status_code, wine.status_code) == (503, 200)
    assert "failed its resource budget" in first.json()["detail"]
    assert preloaded == ["wine-quality"]
    assert stats_after_start["failures"] == 0  # the start never tried it
    assert again.status_code == 503
    assert "failed its resource budget" in again.json()["detail"]
    assert peak_after - peak_before < 1024 * 1024  # KiB: nowhere near the 5 GB


def test_a_version_never_measured_counts_its_file_size_times_a_factor(tmp_path: Path) -> None:
    """Where no measure can be taken (a pickle, or budgets turned off), the bound still holds
    on an estimate."""
    cache = ModelCache(open_artifact_store(Settings(var_dir=tmp_path)), budgets=None)
    signature = Signature(task="regression", inputs=(), outputs=())
    ref = VersionRef("m", 1, uuid.uuid4(), "file:///nowhere", "0" * 64, "onnx", signature)
    measured = VersionRef(
        "m", 2, uuid.uuid4(), "file:///nowhere", "0" * 64, "onnx", signature, memory_bytes=7
    )

    assert cache.memory_of(dataclasses.replace(ref, size_bytes=1000)) == (
        1000 * UNMEASURED_MEMORY_FACTOR
    )
    assert cache.memory_of(measured) == 7
