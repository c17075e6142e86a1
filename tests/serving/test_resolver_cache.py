"""The version an alias names is remembered briefly: when the answer is due to be read again,
one caller reads the registry and every caller asking meanwhile waits for that read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import event

from modelport.registry.service import VersionRef
from tests.helpers import services_of

TOGETHER = 25


@contextmanager
def registry_reads(client: TestClient) -> Iterator[list[str]]:
    """The statements the app sends that read model versions."""
    engine = services_of(client).engine.sync_engine
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "model_versions" in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def resolve_together(client: TestClient, count: int) -> list[VersionRef]:
    """Forget what the resolver holds, then resolve the wine's production version ``count``
    times at once on the app's event loop, as concurrent predictions do."""
    resolver = services_of(client).resolver

    async def burst() -> list[VersionRef]:
        resolver.invalidate()
        calls = (resolver.resolve("wine-quality", None, None) for _ in range(count))
        return list(await asyncio.gather(*calls))

    refs: list[VersionRef] = client.portal.call(burst)  # type: ignore[union-attr]
    return refs


def test_concurrent_callers_of_an_expired_alias_share_one_registry_read(
    client: TestClient,
) -> None:
    with registry_reads(client) as one_read:
        [alone] = resolve_together(client, 1)
    assert one_read  # the resolver really reads the registry once it has forgotten

    with registry_reads(client) as reads:
        refs = resolve_together(client, TOGETHER)

    assert len(reads) == len(one_read)
    assert {(ref.model_name, ref.version) for ref in refs} == {(alone.model_name, alone.version)}
