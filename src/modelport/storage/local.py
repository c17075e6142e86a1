"""Content-addressed artifact storage; every read is checked against the recorded sha256."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from modelport.errors import ArtifactIntegrityError, ModelUnavailableError
from modelport.storage.files import write_atomically
from modelport.storage.protocol import (
    CHANGED,
    MISSING,
    OUTSIDE_STORE,
    StoredArtifact,
    sha256_hex,
)


class LocalArtifactStore:
    """Files under ``root/sha256/<2 hex>/<hex><suffix>``; identical content is stored once."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def put(self, data: bytes, suffix: str = "") -> StoredArtifact:
        digest = sha256_hex(data)
        path = self.root / "sha256" / digest[:2] / f"{digest}{suffix}"
        if not (path.exists() and sha256_hex(path.read_bytes()) == digest):
            # Write to a temporary file and rename so a crash never leaves half an artifact.
            write_atomically(path, data)
        return StoredArtifact(uri=path.as_uri(), sha256=digest, size_bytes=len(data))

    def open_verified(self, uri: str, sha256: str) -> bytes:
        path = self._path_of(uri)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelUnavailableError(MISSING, internal=f"artifact {uri} is missing") from None
        actual = sha256_hex(data)
        if actual != sha256:
            raise ArtifactIntegrityError(
                CHANGED, internal=f"artifact {uri}: expected sha256 {sha256}, found {actual}"
            )
        return data

    def delete(self, uri: str) -> None:
        """Remove the file behind ``uri``; a file that is already gone is fine."""
        self._path_of(uri).unlink(missing_ok=True)

    def _path_of(self, uri: str) -> Path:
        parts = urlsplit(uri)
        path = Path(unquote(parts.path)).resolve()
        if parts.scheme != "file" or not path.is_relative_to(self.root):
            raise ModelUnavailableError(
                OUTSIDE_STORE, internal=f"artifact {uri} is not inside {self.root}"
            )
        return path
