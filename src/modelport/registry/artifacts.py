"""Content-addressed artifact storage; every read is checked against the recorded sha256."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlsplit

from modelport.errors import ArtifactIntegrityError, ModelUnavailableError
from modelport.settings import Settings, load_settings

# What callers are told (a model version's file or an uploaded image); where the file is (a
# server path, a bucket and key) is logged, never sent.
MISSING = "the stored file is missing from the artifact store; it must be uploaded again"
CHANGED = (
    "the stored file failed its sha256 check (it was changed after it was stored) and will "
    "not be served"
)
OUTSIDE_STORE = "the stored file is not inside the configured artifact store"


@dataclass(frozen=True)
class StoredArtifact:
    uri: str
    sha256: str
    size_bytes: int


class ArtifactStore(Protocol):
    def put(self, data: bytes, suffix: str = "") -> StoredArtifact: ...

    def open_verified(self, uri: str, sha256: str) -> bytes: ...

    def delete(self, uri: str) -> None: ...


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class LocalArtifactStore:
    """Files under ``root/sha256/<2 hex>/<hex><suffix>``; identical content is stored once."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()

    def put(self, data: bytes, suffix: str = "") -> StoredArtifact:
        digest = sha256_hex(data)
        path = self.root / "sha256" / digest[:2] / f"{digest}{suffix}"
        if not (path.exists() and sha256_hex(path.read_bytes()) == digest):
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write to a temporary file and rename so a crash never leaves half an artifact.
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
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


def open_artifact_store(store_uri: str, settings: Settings | None = None) -> ArtifactStore:
    """The store behind ``store_uri`` (``file:///path`` or ``s3://bucket/prefix``).

    An S3 store takes its endpoint, region, credentials and cache folder from ``settings``;
    without them, from the environment (``MODELPORT_*`` variables and ``.env``), as the app would.
    """
    parts = urlsplit(store_uri)
    if parts.scheme == "file":
        return LocalArtifactStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        # Imported here so file:// deployments never load boto3 (and to avoid an import cycle).
        from modelport.registry.s3_store import S3ArtifactStore

        return S3ArtifactStore.from_settings(store_uri, settings or load_settings())
    raise ValueError(
        f"unsupported artifact store {store_uri!r}; use file:///absolute/path or s3://bucket/prefix"
    )
