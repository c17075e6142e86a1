"""The artifact store's interface: content-addressed bytes, every read checked by sha256."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol


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
