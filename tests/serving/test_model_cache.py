"""The model cache: an LRU bounded by count and memory (the memory bound is tested in
test_model_cache_budgets.py); one load per version under concurrency."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from modelport.registry.service import VersionRef
from modelport.settings import Settings
from tests.helpers import WINE_ROW, register_trained, services_of, wait_until_ready
from tests.registry.support import artifact_file, serve


def _refs(client: TestClient, name: str, versions: list[int]) -> list[VersionRef]:
    resolver = services_of(client).resolver

    async def resolve_all() -> list[VersionRef]:
        return [await resolver.resolve(name, v, None) for v in versions]

    refs: list[VersionRef] = client.portal.call(resolve_all)  # type: ignore[union-attr]
    return refs


def test_concurrent_first_requests_load_a_version_once(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    settings = make_settings()
    register_trained(settings, trained_wine)
    register_trained(settings, trained_wine)  # v2 is production; v1 is not preloaded
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        cache = services_of(client).models
        loads_before = cache.loads
        (v1,) = _refs(client, "wine-quality", [1])

        async def twenty_at_once() -> set[int]:
            models = await asyncio.gather(*(cache.get(v1) for _ in range(20)))
            return {id(model) for model in models}

        distinct = client.portal.call(twenty_at_once)  # type: ignore[union-attr]

        assert len(distinct) == 1  # everyone got the same loaded model
        assert cache.loads == loads_before + 1


def test_least_recently_used_model_is_evicted_past_the_count_bound(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    settings = make_settings(model_cache_max_models=2)
    for _ in range(3):
        register_trained(settings, trained_wine)
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        for version in (1, 2, 3, 1):
            url = f"/api/v1/models/wine-quality/versions/{version}/predict"
            assert client.post(url, json=WINE_ROW).status_code == 200
        stats = services_of(client).models.stats()
        loaded = sorted(m.ref.version for m in services_of(client).models.loaded())

    assert stats["models"] == 2
    # Preloaded [3]; 1 -> [3, 1]; 2 evicts 3; 3 evicts 1; 1 evicts 2 (the least recent).
    assert loaded == [1, 3]
    assert (stats["loads"], stats["evictions"]) == (5, 3)


def test_a_version_that_fails_to_load_is_read_once_then_answered_from_memory(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    settings = make_settings(model_load_retry_seconds=300)
    register_trained(settings, trained_wine)
    path = artifact_file(settings, "wine-quality", 1)
    path.write_bytes(b"\x00not an onnx model\xff")

    with serve(settings, wait=False) as client:
        answers = [client.post("/predict", json=WINE_ROW) for _ in range(5)]
        stats = services_of(client).models.stats()

    assert [a.status_code for a in answers] == [503] * 5
    assert all("sha256" in a.json()["detail"] for a in answers)
    # The preload and five requests: the broken artifact was read and refused once.
    assert stats["failures"] == 1
    assert stats["loads"] == 0


def test_a_waiter_that_gives_up_does_not_stop_the_load_for_the_others(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> None:
    settings = make_settings()
    register_trained(settings, trained_wine)
    register_trained(settings, trained_wine)  # v2 is production; v1 is not preloaded
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        cache = services_of(client).models
        (v1,) = _refs(client, "wine-quality", [1])

        async def first_gives_up() -> int:
            impatient = asyncio.ensure_future(cache.get(v1))
            patient = [asyncio.ensure_future(cache.get(v1)) for _ in range(5)]
            await asyncio.sleep(0)
            impatient.cancel()
            models = await asyncio.gather(*patient)
            again = await cache.get(v1)
            return len({id(m) for m in [*models, again]})

        distinct = client.portal.call(first_gives_up)  # type: ignore[union-attr]
        stats = cache.stats()

    assert distinct == 1
    assert stats["failures"] == 0
