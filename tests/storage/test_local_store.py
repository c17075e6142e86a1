"""The local artifact store: content-addressed files, every read checked against its sha256."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from modelport.errors import ArtifactIntegrityError, ModelUnavailableError
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from modelport.storage.local import LocalArtifactStore

MODEL = b"\x08\x07model bytes" * 100
OTHER = b"another model"


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "artifacts")


def test_put_is_content_addressed(store: LocalArtifactStore) -> None:
    first = store.put(MODEL, ".onnx")
    second = store.put(MODEL, ".onnx")
    other = store.put(OTHER, ".onnx")

    assert first == second
    assert first.sha256 == hashlib.sha256(MODEL).hexdigest()
    assert first.size_bytes == len(MODEL)
    assert first.uri.endswith(f"{first.sha256}.onnx")
    assert other.uri != first.uri
    assert len(files_under(store.root)) == 2  # one file per content, no temporary leftovers


def test_open_verified_returns_the_stored_bytes(store: LocalArtifactStore) -> None:
    stored = store.put(MODEL, ".onnx")

    assert store.open_verified(stored.uri, stored.sha256) == MODEL


def test_open_verified_refuses_a_tampered_file(store: LocalArtifactStore) -> None:
    stored = store.put(MODEL, ".onnx")
    Path(store.root, "sha256", stored.sha256[:2], f"{stored.sha256}.onnx").write_bytes(OTHER)

    with pytest.raises(ArtifactIntegrityError) as refused:
        store.open_verified(stored.uri, stored.sha256)

    assert "sha256" in refused.value.message
    assert str(store.root) not in refused.value.message  # a server path is for the log only
    internal = refused.value.internal or ""
    assert stored.sha256 in internal
    assert hashlib.sha256(OTHER).hexdigest() in internal
    assert refused.value.status_code == 503


def test_open_verified_refuses_the_wrong_expected_hash(store: LocalArtifactStore) -> None:
    stored = store.put(MODEL)

    with pytest.raises(ArtifactIntegrityError):
        store.open_verified(stored.uri, hashlib.sha256(OTHER).hexdigest())


def test_open_verified_refuses_a_missing_file(store: LocalArtifactStore) -> None:
    stored = store.put(MODEL, ".onnx")
    for path in files_under(store.root):
        path.unlink()

    with pytest.raises(ModelUnavailableError, match="missing"):
        store.open_verified(stored.uri, stored.sha256)


def test_put_repairs_a_tampered_file(store: LocalArtifactStore) -> None:
    stored = store.put(MODEL, ".onnx")
    (path,) = files_under(store.root)
    path.write_bytes(OTHER)

    again = store.put(MODEL, ".onnx")

    assert again == stored
    assert store.open_verified(stored.uri, stored.sha256) == MODEL


@pytest.mark.parametrize(
    "uri",
    [
        "file:///etc/passwd",
        "file://{root}/../outside.onnx",
        "file://{root}/sha256/../../outside.onnx",
        "file://{root}/%2E%2E/outside.onnx",
        "file://{root}-sibling/outside.onnx",
        "s3://bucket/{root}/model.onnx",
        "http://example.com{root}/model.onnx",
    ],
)
def test_open_verified_refuses_uris_outside_its_root(
    store: LocalArtifactStore, tmp_path: Path, uri: str
) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(MODEL)
    sibling = Path(f"{store.root}-sibling")
    sibling.mkdir()
    (sibling / "outside.onnx").write_bytes(MODEL)

    with pytest.raises(ModelUnavailableError, match="not inside the configured artifact store"):
        store.open_verified(uri.format(root=store.root), hashlib.sha256(MODEL).hexdigest())


def test_open_verified_refuses_a_symlink_leading_out_of_the_root(
    store: LocalArtifactStore, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.onnx"
    secret.write_bytes(MODEL)
    stored = store.put(OTHER)
    (path,) = files_under(store.root)
    path.unlink()
    path.symlink_to(secret)

    with pytest.raises(ModelUnavailableError, match="not inside the configured artifact store"):
        store.open_verified(stored.uri, hashlib.sha256(MODEL).hexdigest())


def test_open_artifact_store_takes_file_uris_only(tmp_path: Path) -> None:
    settings = Settings(var_dir=tmp_path / "var", artifact_store=(tmp_path / "my store").as_uri())
    store = open_artifact_store(settings)

    assert isinstance(store, LocalArtifactStore)
    assert store.root == (tmp_path / "my store").resolve()
    stored = store.put(MODEL)
    assert store.open_verified(stored.uri, stored.sha256) == MODEL
    # Settings refuse such a URI; a copy made without validation meets the store's own check.
    unchecked = settings.model_copy(update={"artifact_store": "ftp://example.com/models"})
    with pytest.raises(ValueError, match="unsupported artifact store"):
        open_artifact_store(unchecked)
