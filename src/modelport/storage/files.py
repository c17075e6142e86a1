"""Writing a file so that readers (other threads, processes, or the next start after a crash)
see the whole file or none of it."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes, *, replace: bool = True) -> bool:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename it.

    The file is flushed to disk before the rename, so a crash leaves the old file, the new one
    or none, never half of one. It is created with mode 0600 (readable by this account only).
    With ``replace=False`` a file already at ``path`` is kept (the first of several concurrent
    writers wins) and the result is False; otherwise the result is True.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(tmp, path)
            written = True
        else:
            # link() fails when the name exists, unlike rename(), which would overwrite it.
            try:
                os.link(tmp, path)
                written = True
            except FileExistsError:
                written = False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _sync_folder(path.parent)
    return written


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable; some filesystems cannot sync a folder, which is fine."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
