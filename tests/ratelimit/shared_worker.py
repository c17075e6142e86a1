"""A worker process taking from the shared bucket table (kept apart from the tests so that a
spawned process imports nothing else)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelport.ratelimit.buckets import Limit
from modelport.ratelimit.shared import SharedMemoryBuckets


def take_many(path: str, key: str, limit: Limit, times: int, start: Any, out: Any) -> None:
    """Wait for the other worker, then take ``times`` tokens as fast as possible; report how
    many were allowed."""
    table = SharedMemoryBuckets(Path(path))
    start.wait()
    out.put(sum(table.take_now([(key, limit)])[0].allowed for _ in range(times)))
