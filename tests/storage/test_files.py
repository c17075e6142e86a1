"""Files written whole or not at all: artifacts, the S3 cache, the JWT secret, downloads."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from modelport.auth.jwt_secret import load_or_create_secret
from modelport.storage.files import write_atomically


def test_a_write_replaces_the_file_and_leaves_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "new folder" / "model.onnx"

    assert write_atomically(path, b"first") is True
    assert write_atomically(path, b"second") is True

    assert path.read_bytes() == b"second"
    assert list(path.parent.iterdir()) == [path]  # no temporary file left behind


def test_written_files_are_readable_by_this_account_only(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    write_atomically(path, b"x")

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_without_replace_the_first_writer_wins(tmp_path: Path) -> None:
    path = tmp_path / "once"
    write_atomically(path, b"first", replace=False)

    assert write_atomically(path, b"second", replace=False) is False
    assert path.read_bytes() == b"first"
    assert list(tmp_path.iterdir()) == [path]


def test_a_failed_write_keeps_what_was_there_and_cleans_up(tmp_path: Path) -> None:
    # A folder where the file should go: the rename fails after the data was written.
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep").write_bytes(b"kept")

    with pytest.raises(OSError):
        write_atomically(target, b"data")

    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]
    assert (target / "keep").read_bytes() == b"kept"


def test_workers_starting_together_share_one_jwt_secret(tmp_path: Path) -> None:
    var = tmp_path / "var"
    with ThreadPoolExecutor(8) as pool:
        secrets = set(pool.map(lambda _: load_or_create_secret(None, var), range(16)))

    assert len(secrets) == 1
    assert len(secrets.pop()) >= 48
    assert stat.S_IMODE((var / "jwt-secret").stat().st_mode) == 0o600
    assert [p.name for p in var.iterdir()] == ["jwt-secret"]
