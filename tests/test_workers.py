"""The directory the workers of one ``modelport serve`` share: fresh per run, named in the
environment the workers inherit, removed afterwards, and left-overs of killed servers cleared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from modelport.workers import PROMETHEUS_DIR_ENV, RUN_DIR_ENV, run_dir, shared_run_dir


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_one_worker_shares_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    monkeypatch.delenv(PROMETHEUS_DIR_ENV, raising=False)
    with shared_run_dir(tmp_path, 1) as path:
        assert path is None
        assert run_dir() is None
        assert PROMETHEUS_DIR_ENV not in os.environ
    assert not (tmp_path / "run").exists()


def test_several_workers_get_a_fresh_directory_for_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(RUN_DIR_ENV, raising=False)
    monkeypatch.setenv(PROMETHEUS_DIR_ENV, "/somewhere/else")  # an operator's, put back after
    with shared_run_dir(tmp_path, 2) as first:
        assert first is not None and first.is_dir()
        assert run_dir() == first
        assert Path(os.environ[PROMETHEUS_DIR_ENV]).is_dir()
        assert Path(os.environ[PROMETHEUS_DIR_ENV]).parent == first
        (first / "metrics" / "counter_1.db").write_bytes(b"old values")
    assert not first.exists()
    assert run_dir() is None
    assert os.environ[PROMETHEUS_DIR_ENV] == "/somewhere/else"
    with shared_run_dir(tmp_path, 2) as second:
        assert second is not None
        assert list((second / "metrics").iterdir()) == []  # nothing from the last run


def test_a_directory_left_by_a_killed_server_is_removed_at_the_next_start(
    tmp_path: Path,
) -> None:
    with shared_run_dir(tmp_path, 2) as current:
        assert current is not None
        host = current.parent
    stale = host / f"serve-{dead_pid()}-abc"
    (stale / "metrics").mkdir(parents=True)
    alive = host / f"serve-{os.getpid()}-def"  # a server still running on this host
    alive.mkdir()
    with shared_run_dir(tmp_path, 2):
        assert not stale.exists()
        assert alive.exists()
