"""The bucket table the workers of one server share without Redis: real processes taking from
one file, and a table that stays the same size whatever callers send."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from pathlib import Path

from modelport.ratelimit.buckets import SIGN_IN_PREFIX, Limit
from modelport.ratelimit.shared import SharedMemoryBuckets
from tests.ratelimit.shared_worker import take_many

HOUR = 3600.0
JOIN_SECONDS = 120.0  # a hang guard for the worker processes


def test_worker_processes_take_from_one_bucket(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")  # as the server starts its workers
    start, out = context.Barrier(2), context.Queue()
    key, capacity = f"ip:{uuid.uuid4().hex}", 2000
    path = str(tmp_path / "buckets")
    workers = [
        context.Process(target=take_many, args=(path, key, Limit(capacity, HOUR), 5000, start, out))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    counts = [out.get(timeout=JOIN_SECONDS) for _ in workers]
    for worker in workers:
        worker.join(JOIN_SECONDS)
        assert worker.exitcode == 0
    # 10,000 takes racing in two processes: exactly the bucket, not a bucket per process.
    assert sum(counts) == capacity
    assert all(count > 0 for count in counts)  # both really took part


def test_the_table_keeps_its_size_and_sign_in_buckets_outlive_a_flood(tmp_path: Path) -> None:
    async def scenario() -> None:
        path = tmp_path / "buckets"
        table = SharedMemoryBuckets(path, slots=64, sign_in_slots=4096)
        size = path.stat().st_size
        limit = Limit(1, HOUR)
        victim = f"{SIGN_IN_PREFIX}account:victim"
        assert (await table.take(victim, limit)).allowed
        # Far more addresses than the table has slots, and many made-up accounts.
        for n in range(2000):
            await table.take(f"ip:10.0.{n // 256}.{n % 256}", limit)
        for n in range(1000):
            await table.take(f"{SIGN_IN_PREFIX}account:made-up-{n}", limit)
        assert not (await table.take(victim, limit)).allowed  # still counted
        assert path.stat().st_size == size
        # A second map of the file (another worker) sees the same bucket.
        other = SharedMemoryBuckets(path, slots=64, sign_in_slots=4096)
        assert not (await other.take(victim, limit)).allowed
        table.close()
        other.close()

    asyncio.run(scenario())
