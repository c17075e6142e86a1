"""The artifact store a deployment's settings name."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from modelport.settings import Settings
from modelport.storage.local import LocalArtifactStore
from modelport.storage.protocol import ArtifactStore


def open_artifact_store(settings: Settings) -> ArtifactStore:
    """The store behind ``settings.artifact_store`` (``file:///path`` or ``s3://bucket/prefix``).

    An S3 store takes its endpoint, region, credentials and cache folder from ``settings`` too;
    nothing is read from the environment here, so the caller decides where settings come from.
    """
    store_uri = settings.artifact_store
    parts = urlsplit(store_uri)
    if parts.scheme == "file":
        return LocalArtifactStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        # Imported here so file:// deployments never load boto3.
        from modelport.storage.s3 import S3ArtifactStore

        return S3ArtifactStore.from_settings(store_uri, settings)
    raise ValueError(
        f"unsupported artifact store {store_uri!r}; use file:///absolute/path or s3://bucket/prefix"
    )
