"""Buckets shared by the worker processes of one server, without Redis: a table in a file that
every worker maps into memory, changed under a file lock.

``modelport serve --workers N`` (N > 1) gives its workers a fresh directory; without Redis each
worker keeps its buckets in a file there, so an address, a user or a key has one bucket on the
host, not one per worker, and failed sign-ins are counted once. A take is a few microseconds of
work under an exclusive ``flock``: no network, no thread.

The table is a fixed number of slots (open addressing, a probe window of ``WINDOW`` slots), so
its size is bounded whatever the callers send. A slot holds a SHA-256-derived digest of the key
(never the key itself), the tokens, when they were counted and when the bucket would be full
again; a bucket that would be full is the same as no bucket, so its slot is free. When every
slot of a window is in use, the bucket closest to full is forgotten (forgetting refills it, as
the memory backend's least-recently-used bound does); failed-sign-in buckets have a larger
table of their own, so a flood of other keys never evicts them.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from modelport.ratelimit.buckets import SIGN_IN_PREFIX, Decision, Limit, decision_for

# digest, tokens, monotonic time they were counted, monotonic time the bucket is full again.
# CLOCK_MONOTONIC is one clock for every process on the host.
_SLOT = struct.Struct("<16sddd")
WINDOW = 16
FILE_NAME = "ratelimit-buckets"


class SharedMemoryBuckets:
    def __init__(self, path: Path, slots: int = 1 << 17, sign_in_slots: int = 1 << 18) -> None:
        self._slots = {False: slots, True: sign_in_slots}
        # Each table has WINDOW spare slots at its end, so a probe never wraps around.
        self._base = {False: 0, True: (slots + WINDOW) * _SLOT.size}
        size = (slots + sign_in_slots + 2 * WINDOW) * _SLOT.size
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            with self._locked():
                if os.fstat(self._fd).st_size < size:
                    os.ftruncate(self._fd, size)  # zeros: every slot free
            self._map = mmap.mmap(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    async def take(self, key: str, limit: Limit, cost: float = 1.0) -> Decision:
        return self.take_now([(key, limit)], cost)[0]

    async def take_all(
        self, buckets: Sequence[tuple[str, Limit]], cost: float = 1.0
    ) -> list[Decision]:
        return self.take_now(buckets, cost)

    def take_now(self, buckets: Sequence[tuple[str, Limit]], cost: float = 1.0) -> list[Decision]:
        """``cost`` from every bucket if each has that many, else from none; under the lock,
        so every worker's takes are one after another."""
        firsts = []
        for key, _limit in buckets:
            signing_in = key.startswith(SIGN_IN_PREFIX)
            digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()[:16]
            start = int.from_bytes(digest[:8], "little") % self._slots[signing_in]
            firsts.append((digest, self._base[signing_in] + start * _SLOT.size))
        with self._locked():
            now = time.monotonic()
            offsets: list[int] = []
            counted = []
            for (digest, first), (_key, limit) in zip(firsts, buckets, strict=True):
                offset = self._slot_for(first, digest, now, offsets)
                held, tokens, stamp, full_at = _SLOT.unpack_from(self._map, offset)
                if held != digest or now >= full_at:
                    tokens, stamp = float(limit.capacity), now
                offsets.append(offset)
                counted.append(min(float(limit.capacity), tokens + (now - stamp) * limit.rate))
            every = all(tokens >= cost for tokens in counted)
            decisions = []
            for (digest, _first), (_key, limit), offset, tokens in zip(
                firsts, buckets, offsets, counted, strict=True
            ):
                enough = tokens >= cost
                if every:
                    tokens = min(float(limit.capacity), tokens - cost)
                full_at = now + (limit.capacity - tokens) / limit.rate
                _SLOT.pack_into(self._map, offset, digest, tokens, now, full_at)
                decisions.append(decision_for(limit, tokens, enough, cost))
        return decisions

    def _slot_for(self, first: int, digest: bytes, now: float, chosen: list[int]) -> int:
        """The offset of ``digest``'s slot in the window from ``first``: its own, else a free
        one, else the one whose bucket is closest to full (never one ``chosen`` already)."""
        free = victim = -1
        victim_full_at = float("inf")
        for index, (held, _tokens, _stamp, full_at) in enumerate(
            _SLOT.iter_unpack(self._map[first : first + WINDOW * _SLOT.size])
        ):
            offset = first + index * _SLOT.size
            if held == digest:
                return offset
            if offset in chosen:
                continue
            if now >= full_at:
                if free < 0:
                    free = offset
            elif full_at < victim_full_at:
                victim, victim_full_at = offset, full_at
        return free if free >= 0 else victim

    def _locked(self) -> _FileLock:
        return _FileLock(self._fd)


class _FileLock:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def __enter__(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def __exit__(self, *_: object) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)
