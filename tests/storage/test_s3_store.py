"""The S3 artifact store against a real (local, moto) S3 server: content-addressed objects, a
local cache that keeps serving while S3 is away, and a sha256 check on every load."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from modelport.errors import ArtifactIntegrityError, ModelUnavailableError, ServiceUnavailableError
from modelport.settings import Settings, load_settings
from modelport.storage.factory import open_artifact_store
from modelport.storage.s3 import S3ArtifactStore, S3Options
from tests.helpers import WINE_ROW, register_trained, wait_until_ready
from tests.storage.s3_server import (
    ACCESS_KEY_ID,
    REGION,
    SECRET_ACCESS_KEY,
    MotoS3,
    closed_port_url,
)

MODEL = b"\x08\x07model bytes" * 100
OTHER = b"another model"
PREFIX = "models"


@pytest.fixture(scope="session")
def moto_s3() -> Iterator[MotoS3]:
    """One local S3 server for the whole run; each test makes a bucket of its own."""
    server = MotoS3.start()
    yield server
    server.stop()


@pytest.fixture
def bucket(moto_s3: MotoS3) -> str:
    return moto_s3.new_bucket()


@pytest.fixture
def raw(moto_s3: MotoS3) -> Any:
    """A plain client: what an operator (or an attacker) can do to the bucket directly."""
    return moto_s3.client()


@pytest.fixture
def make_store(moto_s3: MotoS3, bucket: str, tmp_path: Path) -> Callable[..., S3ArtifactStore]:
    """Stores on the test's bucket; each cache folder name is a separate replica's cache."""

    def factory(cache: str = "cache", endpoint_url: str | None = None) -> S3ArtifactStore:
        options = S3Options(
            endpoint_url=endpoint_url or moto_s3.endpoint_url,
            region=REGION,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SECRET_ACCESS_KEY,
            connect_timeout=1.0,
        )
        return S3ArtifactStore(bucket, PREFIX, tmp_path / cache, options.client())

    return factory


@pytest.fixture
def store(make_store: Callable[..., S3ArtifactStore]) -> S3ArtifactStore:
    return make_store()


def keys_in(raw: Any, bucket: str) -> list[str]:
    listing = raw.list_objects_v2(Bucket=bucket)
    return sorted(item["Key"] for item in listing.get("Contents", []))


def key_of(uri: str, bucket: str) -> str:
    return uri.removeprefix(f"s3://{bucket}/")


def cached_files(store: S3ArtifactStore) -> list[Path]:
    return sorted(p for p in store.cache_dir.rglob("*") if p.is_file())


def cache_entry(store: S3ArtifactStore, sha256: str) -> Path:
    return store.cache_dir / "sha256" / sha256[:2] / sha256


# --- put and open_verified ---------------------------------------------------------------------


def test_put_then_open_verified_round_trips_through_s3(
    make_store: Callable[..., S3ArtifactStore], raw: Any, bucket: str
) -> None:
    stored = make_store("writer").put(MODEL, ".onnx")

    digest = hashlib.sha256(MODEL).hexdigest()
    assert stored.sha256 == digest
    assert stored.size_bytes == len(MODEL)
    assert stored.uri == f"s3://{bucket}/{PREFIX}/sha256/{digest[:2]}/{digest}.onnx"
    assert keys_in(raw, bucket) == [key_of(stored.uri, bucket)]
    # Another replica, with an empty cache, reads it back from S3.
    assert make_store("reader").open_verified(stored.uri, stored.sha256) == MODEL


def test_identical_content_is_stored_once(store: S3ArtifactStore, raw: Any, bucket: str) -> None:
    first = store.put(MODEL, ".onnx")
    key = key_of(first.uri, bucket)
    # Mark the object (same bytes, new metadata): an upload would replace the mark.
    raw.copy_object(
        Bucket=bucket,
        Key=key,
        CopySource={"Bucket": bucket, "Key": key},
        Metadata={"marker": "first-upload"},
        MetadataDirective="REPLACE",
    )

    second = store.put(MODEL, ".onnx")
    other = store.put(OTHER, ".onnx")

    assert second == first
    assert other.uri != first.uri
    assert keys_in(raw, bucket) == sorted([key, key_of(other.uri, bucket)])
    assert raw.head_object(Bucket=bucket, Key=key)["Metadata"] == {"marker": "first-upload"}


def test_put_uploads_again_when_the_object_holds_other_bytes(
    make_store: Callable[..., S3ArtifactStore], raw: Any, bucket: str
) -> None:
    stored = make_store().put(MODEL, ".onnx")
    raw.put_object(Bucket=bucket, Key=key_of(stored.uri, bucket), Body=OTHER)

    again = make_store().put(MODEL, ".onnx")

    assert again == stored
    body = raw.get_object(Bucket=bucket, Key=key_of(stored.uri, bucket))["Body"].read()
    assert body == MODEL
    assert make_store("fresh").open_verified(stored.uri, stored.sha256) == MODEL


def test_an_empty_prefix_puts_artifacts_at_the_bucket_root(
    moto_s3: MotoS3, bucket: str, raw: Any, tmp_path: Path
) -> None:
    options = S3Options(moto_s3.endpoint_url, REGION, ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    store = S3ArtifactStore(bucket, "", tmp_path / "cache", options.client())

    stored = store.put(MODEL)

    assert keys_in(raw, bucket) == [f"sha256/{stored.sha256[:2]}/{stored.sha256}"]
    assert store.open_verified(stored.uri, stored.sha256) == MODEL


# --- the local cache ---------------------------------------------------------------------------


def test_a_cached_version_is_served_while_s3_is_unreachable(bucket: str, tmp_path: Path) -> None:
    own_server = MotoS3.start()  # stopped below; the session's server must stay up
    own_server.client().create_bucket(Bucket=f"{bucket}-own")
    options = S3Options(own_server.endpoint_url, REGION, ACCESS_KEY_ID, SECRET_ACCESS_KEY, 1.0)
    store = S3ArtifactStore(f"{bucket}-own", PREFIX, tmp_path / "cache", options.client())
    loaded = store.put(MODEL, ".onnx")
    never_loaded = store.put(OTHER, ".onnx")
    cache_entry(store, never_loaded.sha256).unlink()

    own_server.stop()

    assert store.open_verified(loaded.uri, loaded.sha256) == MODEL
    with pytest.raises(ModelUnavailableError) as unavailable:
        store.open_verified(never_loaded.uri, never_loaded.sha256)
    assert unavailable.value.status_code == 503
    assert "could not read" in unavailable.value.message
    # Where S3 is goes to the log, never to the caller.
    assert own_server.endpoint_url not in unavailable.value.message
    assert own_server.endpoint_url in (unavailable.value.internal or "")


def test_a_replica_starting_while_s3_is_away_serves_its_cache(
    make_store: Callable[..., S3ArtifactStore],
) -> None:
    stored = make_store("replica").put(MODEL, ".onnx")

    restarted = make_store("replica", endpoint_url=closed_port_url())

    assert restarted.open_verified(stored.uri, stored.sha256) == MODEL


def test_a_corrupt_cache_entry_is_fetched_again_from_s3(store: S3ArtifactStore) -> None:
    stored = store.put(MODEL, ".onnx")
    entry = cache_entry(store, stored.sha256)
    entry.write_bytes(MODEL[:-1] + b"!")  # one byte changed on disk

    assert store.open_verified(stored.uri, stored.sha256) == MODEL
    assert entry.read_bytes() == MODEL  # repaired


def test_a_corrupt_cache_entry_is_never_served_even_while_s3_is_away(
    make_store: Callable[..., S3ArtifactStore],
) -> None:
    stored = make_store("replica").put(MODEL, ".onnx")
    offline = make_store("replica", endpoint_url=closed_port_url())
    cache_entry(offline, stored.sha256).write_bytes(OTHER)

    with pytest.raises(ModelUnavailableError, match="could not read"):
        offline.open_verified(stored.uri, stored.sha256)


def test_the_cache_is_written_whole_by_concurrent_loads(
    make_store: Callable[..., S3ArtifactStore],
) -> None:
    stored = make_store("writer").put(MODEL, ".onnx")
    reader = make_store("reader")

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(lambda _: reader.open_verified(stored.uri, stored.sha256), range(16))
        )

    assert results == [MODEL] * 16
    assert cached_files(reader) == [cache_entry(reader, stored.sha256)]  # no temporary leftovers
    assert cache_entry(reader, stored.sha256).read_bytes() == MODEL


# --- integrity and availability ----------------------------------------------------------------


def test_a_tampered_object_is_refused(
    make_store: Callable[..., S3ArtifactStore], raw: Any, bucket: str
) -> None:
    stored = make_store("writer").put(MODEL, ".onnx")
    raw.put_object(Bucket=bucket, Key=key_of(stored.uri, bucket), Body=OTHER)
    reader = make_store("reader")

    with pytest.raises(ArtifactIntegrityError) as refused:
        reader.open_verified(stored.uri, stored.sha256)

    assert "will not be served" in refused.value.message
    internal = refused.value.internal or ""  # for the log: which object, what it holds now
    assert stored.sha256 in internal
    assert hashlib.sha256(OTHER).hexdigest() in internal
    assert stored.uri in internal
    assert refused.value.status_code == 503
    assert cached_files(reader) == []  # the wrong bytes were not cached either


def test_the_wrong_expected_hash_is_refused(store: S3ArtifactStore) -> None:
    stored = store.put(MODEL)

    with pytest.raises(ArtifactIntegrityError):
        store.open_verified(stored.uri, hashlib.sha256(OTHER).hexdigest())
    with pytest.raises(ArtifactIntegrityError, match="no usable recorded sha256"):
        store.open_verified(stored.uri, "../../etc/passwd")


def test_a_missing_object_is_503_saying_so(
    make_store: Callable[..., S3ArtifactStore], raw: Any, bucket: str
) -> None:
    stored = make_store("writer").put(MODEL, ".onnx")
    raw.delete_object(Bucket=bucket, Key=key_of(stored.uri, bucket))

    with pytest.raises(ModelUnavailableError) as missing:
        make_store("reader").open_verified(stored.uri, stored.sha256)

    assert missing.value.status_code == 503
    assert "missing" in missing.value.message
    assert "uploaded again" in missing.value.message
    assert stored.uri not in missing.value.message
    assert stored.uri in (missing.value.internal or "")


def test_an_unreachable_s3_refuses_uploads_with_503(
    make_store: Callable[..., S3ArtifactStore],
) -> None:
    offline = make_store(endpoint_url=closed_port_url())

    with pytest.raises(ServiceUnavailableError) as refused:
        offline.put(MODEL, ".onnx")

    assert refused.value.status_code == 503
    assert "retry" in refused.value.message


@pytest.mark.parametrize(
    "uri",
    [
        "s3://some-other-bucket/models/sha256/{d2}/{digest}",
        "s3://{bucket}/elsewhere/sha256/{d2}/{digest}",
        "s3://{bucket}/models-old/sha256/{d2}/{digest}",
        "s3://{bucket}/models/secrets.txt",
        "s3://{bucket}/models/sha256/00/{digest}",
        "s3://{bucket}/models/sha256/{d2}/../../secrets.txt",
        "file:///models/sha256/{d2}/{digest}",
    ],
)
def test_uris_outside_the_store_are_refused(
    store: S3ArtifactStore, raw: Any, bucket: str, uri: str
) -> None:
    digest = hashlib.sha256(MODEL).hexdigest()
    raw.put_object(Bucket=bucket, Key="models/secrets.txt", Body=MODEL)

    with pytest.raises(ModelUnavailableError, match="not inside the configured artifact store"):
        store.open_verified(uri.format(bucket=bucket, d2=digest[:2], digest=digest), digest)


def test_delete_removes_the_object_and_the_cached_copy(
    store: S3ArtifactStore, raw: Any, bucket: str
) -> None:
    stored = store.put(MODEL, ".onnx")
    kept = store.put(OTHER, ".onnx")

    store.delete(stored.uri)
    store.delete(stored.uri)  # already gone: fine

    assert keys_in(raw, bucket) == [key_of(kept.uri, bucket)]
    assert cached_files(store) == [cache_entry(store, kept.sha256)]
    with pytest.raises(ModelUnavailableError, match="missing"):
        store.open_verified(stored.uri, stored.sha256)
    assert store.open_verified(kept.uri, kept.sha256) == OTHER


# --- built from settings -----------------------------------------------------------------------


def s3_settings(moto_s3: MotoS3, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "s3_endpoint_url": moto_s3.endpoint_url,
        "s3_region": REGION,
        "s3_access_key_id": ACCESS_KEY_ID,
        "s3_secret_access_key": SECRET_ACCESS_KEY,
        "artifact_cache_dir": tmp_path / "artifact-cache",
    }
    values.update(overrides)
    return values


def test_open_artifact_store_builds_an_s3_store_from_settings(
    moto_s3: MotoS3, bucket: str, tmp_path: Path
) -> None:
    settings = Settings(
        var_dir=tmp_path / "var",
        artifact_store=f"s3://{bucket}/team/models",
        **s3_settings(moto_s3, tmp_path),
    )

    store = open_artifact_store(settings)

    assert isinstance(store, S3ArtifactStore)
    assert (store.bucket, store.prefix) == (bucket, "team/models")
    assert store.cache_dir == (tmp_path / "artifact-cache").resolve()
    stored = store.put(MODEL)
    assert stored.uri.startswith(f"s3://{bucket}/team/models/sha256/")
    assert store.open_verified(stored.uri, stored.sha256) == MODEL


def test_settings_from_the_environment_open_their_s3_store(
    moto_s3: MotoS3, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the `modelport` command does: settings from MODELPORT_* variables, then the store."""
    for name, value in s3_settings(moto_s3, tmp_path).items():
        monkeypatch.setenv(f"MODELPORT_{name.upper()}", str(value))
    monkeypatch.setenv("MODELPORT_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("MODELPORT_ARTIFACT_STORE", f"s3://{bucket}/models")

    store = open_artifact_store(load_settings())

    assert isinstance(store, S3ArtifactStore)
    assert store.cache_dir == (tmp_path / "artifact-cache").resolve()
    stored = store.put(MODEL)
    assert make_reader(moto_s3, bucket, tmp_path).open_verified(stored.uri, stored.sha256) == MODEL


def make_reader(moto_s3: MotoS3, bucket: str, tmp_path: Path) -> S3ArtifactStore:
    options = S3Options(moto_s3.endpoint_url, REGION, ACCESS_KEY_ID, SECRET_ACCESS_KEY)
    return S3ArtifactStore(bucket, PREFIX, tmp_path / "reader-cache", options.client())


# --- end to end: the app serving a model stored in S3 ------------------------------------------


@pytest.fixture
def s3_app_settings(
    make_settings: Callable[..., Settings], moto_s3: MotoS3, bucket: str, tmp_path: Path
) -> Settings:
    """An app whose MODELPORT_ARTIFACT_STORE is s3://... (on SQLite and on PostgreSQL)."""
    return make_settings(
        artifact_store=f"s3://{bucket}/modelport", **s3_settings(moto_s3, tmp_path)
    )


def register_from_another_host(settings: Settings, trained: TrainedWine) -> None:
    """Register as the `modelport` command on another host would: its cache is a folder of its
    own, so the app has to fetch the model from S3."""
    cli_cache = settings.var_dir / "cli-artifact-cache"
    register_trained(settings.model_copy(update={"artifact_cache_dir": cli_cache}), trained)


def test_the_app_serves_a_model_stored_in_s3(
    s3_app_settings: Settings, trained_wine: TrainedWine, raw: Any, bucket: str
) -> None:
    register_from_another_host(s3_app_settings, trained_wine)
    digest = hashlib.sha256(trained_wine.onnx_bytes).hexdigest()
    assert any(
        key.startswith(f"modelport/sha256/{digest[:2]}/{digest}") for key in keys_in(raw, bucket)
    )

    with TestClient(create_app(s3_app_settings)) as client:
        wait_until_ready(client)
        response = client.post("/predict", json=WINE_ROW)

    assert response.status_code == 200, response.text
    assert response.json()["predicted_quality"] == pytest.approx(5, abs=0.5)
    assert response.json()["model_version"] == "1"
    assert s3_app_settings.artifact_cache_dir is not None
    cached = s3_app_settings.artifact_cache_dir / "sha256" / digest[:2] / digest
    assert cached.read_bytes() == trained_wine.onnx_bytes

    # A restart while S3 is unreachable still serves the version it had cached.
    offline = s3_app_settings.model_copy(update={"s3_endpoint_url": closed_port_url()})
    with TestClient(create_app(offline)) as client:
        wait_until_ready(client)
        assert client.post("/predict", json=WINE_ROW).status_code == 200


def test_the_app_refuses_a_model_whose_s3_object_was_tampered(
    s3_app_settings: Settings, trained_wine: TrainedWine, raw: Any, bucket: str
) -> None:
    register_from_another_host(s3_app_settings, trained_wine)
    (key,) = keys_in(raw, bucket)
    original = raw.get_object(Bucket=bucket, Key=key)["Body"].read()
    raw.put_object(Bucket=bucket, Key=key, Body=original[:-1] + bytes([original[-1] ^ 1]))

    with TestClient(create_app(s3_app_settings)) as client:
        response = client.post("/predict", json=WINE_ROW)

    assert response.status_code == 503
    assert "sha256" in response.json()["detail"]
