"""Artifacts in an S3-compatible bucket, read through a local cache; every read checked by sha256.

The cache holds verified copies named by their sha256, so a version that was loaded (or
registered) once keeps loading while S3 is away, and a cached copy whose bytes changed on disk
is noticed and fetched again. S3 itself is trusted for nothing: what it returns must match the
sha256 recorded at registration.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from modelport.errors import ArtifactIntegrityError, ModelUnavailableError, ServiceUnavailableError
from modelport.settings import Settings, split_s3_store_url
from modelport.storage.files import write_atomically
from modelport.storage.protocol import (
    CHANGED,
    MISSING,
    OUTSIDE_STORE,
    StoredArtifact,
    sha256_hex,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# What put() writes under the prefix: sha256/<first 2 hex>/<64 hex><suffix>. Reads accept only
# this shape, so a forged URI cannot make the store fetch some other object of the bucket.
_ARTIFACT_KEY = re.compile(r"sha256/([0-9a-f]{2})/(\1[0-9a-f]{62})[^/]*")
_MISSING = {"NoSuchKey", "NotFound", "404"}
# Callers are told what failed; where the object is (bucket, key, endpoint) is logged only.
NO_CHECKSUM = "the stored file has no usable recorded sha256; it must be uploaded again"
_VERBS = {"check": "store", "store": "store", "read": "read", "delete": "delete"}


@dataclass(frozen=True)
class S3Options:
    """Where and how to reach the S3-compatible service; ``None`` leaves the value to boto3's
    own lookup (AWS_* variables, ~/.aws, an instance or pod role)."""

    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Options:
        secret = settings.s3_secret_access_key
        return cls(
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
            connect_timeout=settings.s3_connect_timeout,
        )

    def client(self) -> Any:
        """A new S3 client. boto3's default session is shared module state that is not safe to
        use from several threads, so each client gets a session of its own; the client itself
        is thread-safe and shared by every worker thread of the store."""
        session = boto3.session.Session(
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            region_name=self.region,
        )
        config = Config(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"max_attempts": 3, "mode": "standard"},
            # Only the checksums S3 requires: several S3-compatible services refuse the newer
            # default ones. Uploads carry Content-MD5 and every read is checked by sha256.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        return session.client("s3", endpoint_url=self.endpoint_url, config=config)


class S3ArtifactStore:
    """Objects at ``s3://bucket/prefix/sha256/<2 hex>/<hex><suffix>`` (identical content is
    stored once), with verified copies cached at ``cache_dir/sha256/<2 hex>/<hex>``.

    Synchronous: the model cache calls it from worker threads. It keeps no mutable state of its
    own; the cache is written through a temporary file and a rename, so concurrent readers see
    a whole file or none.
    """

    def __init__(self, bucket: str, prefix: str, cache_dir: Path, client: Any) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.cache_dir = cache_dir.resolve()
        self.client = client

    @classmethod
    def from_settings(cls, store_uri: str, settings: Settings) -> S3ArtifactStore:
        bucket, prefix = split_s3_store_url(store_uri)
        cache_dir = settings.artifact_cache_dir or settings.var_dir / "artifact-cache"
        return cls(bucket, prefix, cache_dir, S3Options.from_settings(settings).client())

    @property
    def location(self) -> str:
        root = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        return f"{root} at {self.client.meta.endpoint_url}"

    # --- the ArtifactStore protocol ---------------------------------------------------------

    def put(self, data: bytes, suffix: str = "") -> StoredArtifact:
        digest = sha256_hex(data)
        key = self._key(digest, suffix)
        uri = f"s3://{self.bucket}/{key}"
        md5 = hashlib.md5(data, usedforsecurity=False)
        if not self._holds(key, md5.hexdigest(), len(data)):
            self._s3(
                f"store {uri}",
                lambda: self.client.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ContentMD5=base64.b64encode(md5.digest()).decode("ascii"),
                    Metadata={"sha256": digest},
                ),
            )
        self._cache_write(digest, data)
        return StoredArtifact(uri=uri, sha256=digest, size_bytes=len(data))

    def open_verified(self, uri: str, sha256: str) -> bytes:
        key, _ = self._key_of(uri)
        if not _SHA256_HEX.fullmatch(sha256):
            raise ArtifactIntegrityError(
                NO_CHECKSUM, internal=f"artifact {uri} has no usable sha256 ({sha256!r})"
            )
        cached = self._cache_read(sha256)
        if cached is not None:
            return cached
        data = self._fetch(uri, key)
        actual = sha256_hex(data)
        if actual != sha256:
            raise ArtifactIntegrityError(
                CHANGED,
                internal=f"artifact {uri} at {self.location}: expected sha256 {sha256}, "
                f"found {actual}",
            )
        self._cache_write(sha256, data)
        return data

    def delete(self, uri: str) -> None:
        """Remove the object and its cached copy; an object that is already gone is fine."""
        key, digest = self._key_of(uri)
        self._s3(f"delete {uri}", lambda: self.client.delete_object(Bucket=self.bucket, Key=key))
        with contextlib.suppress(OSError):
            self._cache_path(digest).unlink(missing_ok=True)

    # --- S3 -----------------------------------------------------------------------------------

    def _key(self, digest: str, suffix: str) -> str:
        relative = f"sha256/{digest[:2]}/{digest}{suffix}"
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def _key_of(self, uri: str) -> tuple[str, str]:
        """The object key behind ``uri`` and the sha256 its name carries; refuse URIs that
        point outside this bucket and prefix, or at anything put() does not write."""
        parts = urlsplit(uri)
        key = parts.path.removeprefix("/")
        relative = key.removeprefix(f"{self.prefix}/") if self.prefix else key
        match = _ARTIFACT_KEY.fullmatch(relative)
        if (
            parts.scheme != "s3"
            or parts.netloc != self.bucket
            or (self.prefix and relative == key)
            or parts.query
            or parts.fragment
            or match is None
        ):
            raise ModelUnavailableError(
                OUTSIDE_STORE, internal=f"artifact {uri} is not inside {self.location}"
            )
        return key, match.group(2)

    def _holds(self, key: str, md5_hex: str, size: int) -> bool:
        """Whether the bucket already has exactly these bytes at ``key``. A single-part upload's
        ETag is the MD5 of what S3 stored, so this checks the content without downloading it;
        where the ETag is something else (multipart, SSE-KMS), the bytes are uploaded again."""
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise self._unavailable(f"check s3://{self.bucket}/{key}", exc) from None
        except BotoCoreError as exc:
            raise self._unavailable(f"check s3://{self.bucket}/{key}", exc) from None
        return bool(head.get("ETag", "").strip('"') == md5_hex and head["ContentLength"] == size)

    def _fetch(self, uri: str, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
            body: bytes = response["Body"].read()
        except ClientError as exc:
            if _error_code(exc) in _MISSING:
                raise ModelUnavailableError(
                    MISSING, internal=f"artifact {uri} is missing from {self.location}"
                ) from None
            raise self._unavailable(f"read {uri}", exc, ModelUnavailableError) from None
        except BotoCoreError as exc:
            raise self._unavailable(f"read {uri}", exc, ModelUnavailableError) from None
        return body

    def _s3(self, action: str, call: Callable[[], T]) -> T:
        try:
            return call()
        except (BotoCoreError, ClientError) as exc:
            raise self._unavailable(action, exc) from None

    def _unavailable(
        self,
        action: str,
        exc: Exception,
        error: type[ServiceUnavailableError] = ServiceUnavailableError,
    ) -> ServiceUnavailableError:
        if isinstance(exc, NoCredentialsError):
            reason = (
                "no S3 credentials were found; set MODELPORT_S3_ACCESS_KEY_ID and "
                "MODELPORT_S3_SECRET_ACCESS_KEY (or AWS_* variables, or give the host a role)"
            )
        else:
            reason = str(exc)
        logger.warning(
            "artifact store request failed",
            extra={"action": action, "store": self.location, "error": reason},
        )
        # Endpoint, bucket, key and botocore's text (which names them) are for the log only.
        return error(
            f"could not {_VERBS[action.split(' ', 1)[0]]} the file: the artifact store cannot "
            "be reached right now; retry shortly",
            internal=f"could not {action} ({self.location}): {reason}",
        )

    # --- the local cache ----------------------------------------------------------------------

    def _cache_path(self, digest: str) -> Path:
        return self.cache_dir / "sha256" / digest[:2] / digest

    def _cache_read(self, sha256: str) -> bytes | None:
        """The cached copy when its bytes still match ``sha256``; a changed copy is dropped."""
        path = self._cache_path(sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            logger.warning(
                "artifact cache unreadable", extra={"path": str(path), "error": str(exc)}
            )
            return None
        if sha256_hex(data) == sha256:
            return data
        logger.warning(
            "cached artifact failed its sha256 check; fetching it again", extra={"path": str(path)}
        )
        with contextlib.suppress(OSError):
            path.unlink(missing_ok=True)
        return None

    def _cache_write(self, digest: str, data: bytes) -> None:
        """Keep a copy for later loads. A cache that cannot be written costs speed and
        resilience, not correctness, so failures are logged and the load goes on."""
        path = self._cache_path(digest)
        try:
            write_atomically(path, data)  # readers see the old file, the new one, or none
        except OSError as exc:
            logger.warning("could not cache artifact", extra={"path": str(path), "error": str(exc)})


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
