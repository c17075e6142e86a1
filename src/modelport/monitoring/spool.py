"""The prediction log's spool: an append-only JSON-lines file where rows wait on disk.

Several processes (workers, replicas on one host, the next start) share it safely: appends take
an exclusive ``flock``; a replaying process first renames the file aside under a unique name
(``claim``), so new rows start a fresh file, and holds a non-blocking lock on the file it
replays, so two processes never replay one file at the same time. Every method does blocking
file I/O: call them from a worker thread, never on the event loop.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Protocol


class SpoolLine(Protocol):
    def to_json(self) -> bytes: ...


class Spool:
    """Append-only JSON-lines file shared safely by several processes through ``flock``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, entries: Sequence[SpoolLine]) -> None:
        self.append_lines(entry.to_json() for entry in entries)

    def append_lines(self, lines: Iterable[bytes]) -> None:
        """Append JSON documents, one a line, and make them durable before returning."""
        data = b"".join(line if line.endswith(b"\n") else line + b"\n" for line in lines)
        if not data:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked_current_file() as handle:
            if _ends_torn(handle):
                # A crash cut the last row short: start ours on a line of its own, so only that
                # row is unreadable, not ours too.
                data = b"\n" + data
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    def claim(self) -> Path | None:
        """Move the spool aside under a unique name so this process alone replays it."""
        if not self.path.exists():
            return None
        claimed = self.path.with_name(f"{self.path.name}.{uuid.uuid4().hex}.replay")
        try:
            with self._locked_current_file():
                os.replace(self.path, claimed)
        except FileNotFoundError:
            return None
        return claimed

    def pending_replays(self) -> list[Path]:
        return sorted(self.path.parent.glob(f"{self.path.name}.*.replay"))

    def next_replay(self) -> Replay | None:
        """Claim the current spool, then open the first claimed file no other process is
        replaying (a crashed process's claims are free again: its locks died with it)."""
        self.claim()
        for path in self.pending_replays():
            replay = Replay.open(path)
            if replay is not None:
                return replay
        return None

    @contextlib.contextmanager
    def _locked_current_file(self) -> Iterator[IO[bytes]]:
        # Reopen until the locked file is still the one at ``path``: another process may
        # have claimed (renamed) it between our open and our lock.
        while True:
            handle = open(self.path, "a+b")  # noqa: SIM115 - closed below
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if os.fstat(handle.fileno()).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            handle.close()
        try:
            yield handle
        finally:
            handle.close()


class Replay:
    """A claimed spool file being read back in bounded chunks, locked to this process."""

    def __init__(self, path: Path, handle: IO[bytes]) -> None:
        self.path = path
        self._handle = handle

    @classmethod
    def open(cls, path: Path) -> Replay | None:
        try:
            handle = open(path, "rb")  # noqa: SIM115 - closed by close()/finish()
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()  # another process is replaying it
            return None
        if not path.exists():  # finished and removed by its replayer before we locked it
            handle.close()
            return None
        return cls(path, handle)

    def read_lines(self, max_bytes: int) -> list[bytes]:
        """The next whole lines, about ``max_bytes`` of them (at least one line); [] at the end.
        A last line without its newline (a crash cut it short) is returned as it is."""
        data = self._handle.read(max_bytes)
        if not data:
            return []
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n")
            if cut >= 0:
                self._handle.seek(cut + 1 - len(data), os.SEEK_CUR)
                data = data[: cut + 1]
            else:  # one line longer than max_bytes: read on to its end
                data += self._handle.readline()
        return data.splitlines()

    def finish(self) -> None:
        """Every row is in the database: remove the file (then let the lock go)."""
        self.path.unlink(missing_ok=True)
        self.close()

    def close(self) -> None:
        self._handle.close()


def _ends_torn(handle: IO[bytes]) -> bool:
    size = os.fstat(handle.fileno()).st_size
    return size > 0 and os.pread(handle.fileno(), 1, size - 1) != b"\n"
