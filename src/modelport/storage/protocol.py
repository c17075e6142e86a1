"""The artifact store's interface: content-addressed bytes, every read checked by sha256."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

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
