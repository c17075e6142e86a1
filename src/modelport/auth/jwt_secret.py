"""The JWT signing secret: from settings, or generated once and kept in the var dir (mode 0600)."""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
from pathlib import Path


def load_or_create_secret(configured: str | None, var_dir: Path) -> str:
    """Replicas on different hosts must share MODELPORT_JWT_SECRET; one host can use the file."""
    if configured:
        return configured
    path = var_dir / "jwt-secret"
    if not path.exists():
        var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # only the server's user reads it
        fd, tmp = tempfile.mkstemp(dir=var_dir, prefix=".jwt-secret-")  # created with mode 0600
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(48))
        # link() fails if another worker got there first, so everyone ends up with one secret.
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
        os.unlink(tmp)
    return path.read_text().strip()
