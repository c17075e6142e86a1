"""The JWT signing secret: from settings, or generated once and kept in the var dir (mode 0600)."""

from __future__ import annotations

import secrets
from pathlib import Path

from modelport.storage.files import write_atomically


def load_or_create_secret(configured: str | None, var_dir: Path) -> str:
    """Replicas on different hosts must share MODELPORT_JWT_SECRET; one host can use the file."""
    if configured:
        return configured
    path = var_dir / "jwt-secret"
    if not path.exists():
        var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # only the server's user reads it
        # Mode 0600, and never replaced: if another worker got there first, everyone ends up
        # with that one secret.
        write_atomically(path, secrets.token_urlsafe(48).encode(), replace=False)
    return path.read_text().strip()
