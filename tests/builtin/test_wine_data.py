"""Finding the wine CSV: the configured folder, ../shared/datasets, then a verified download."""

from __future__ import annotations

import functools
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from modelport.builtin.wine import WINE_FILE_NAME, WINE_SHA256
from modelport.builtin.wine_data import WineDataUnavailableError, locate_wine_csv
from modelport.settings import Settings
from modelport.storage.protocol import sha256_hex
from tests.processes import free_port


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve_folder() -> Iterator[Any]:
    """Serve a folder over HTTP on 127.0.0.1 (a stand-in for the UCI archive); returns its URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(folder: Path) -> str:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Work from tmp/project, so ../shared/datasets is tmp/shared/datasets (absent at first)."""
    for name in list(os.environ):
        if name.startswith("MODELPORT_"):
            monkeypatch.delenv(name)
    folder = tmp_path / "project"
    folder.mkdir()
    monkeypatch.chdir(folder)
    return folder


def _closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}/{WINE_FILE_NAME}"


def _settings(project: Path, download_url: str, datasets_dir: Path | None = None) -> Settings:
    return Settings(
        var_dir=project / "var", datasets_dir=datasets_dir, wine_download_url=download_url
    )


def _place(folder: Path, content: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WINE_FILE_NAME
    path.write_bytes(content)
    return path


def test_the_configured_datasets_dir_wins(project: Path) -> None:
    mine = _place(project.parent / "mine", b"my own copy")
    _place(project.parent / "shared" / "datasets", b"the shared copy")

    found = locate_wine_csv(_settings(project, _closed_port_url(), datasets_dir=mine.parent))

    assert found == mine.resolve()


def test_the_datasets_dir_comes_from_the_environment(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine = _place(project.parent / "from-env", b"my own copy")
    monkeypatch.setenv("MODELPORT_DATASETS_DIR", str(mine.parent))
    monkeypatch.setenv("MODELPORT_VAR_DIR", str(project / "var"))

    assert locate_wine_csv(Settings()) == mine.resolve()


def test_the_shared_folder_next_to_the_project_comes_next(project: Path) -> None:
    shared = _place(project.parent / "shared" / "datasets", b"the shared copy")

    found = locate_wine_csv(_settings(project, _closed_port_url()))

    assert found == shared.resolve()
    assert found.is_absolute()


def test_a_datasets_dir_without_the_file_falls_back_to_the_shared_folder(project: Path) -> None:
    empty = project.parent / "empty"
    empty.mkdir()
    shared = _place(project.parent / "shared" / "datasets", b"the shared copy")

    assert locate_wine_csv(_settings(project, _closed_port_url(), empty)) == shared.resolve()


def test_a_verified_download_is_saved_under_var_and_reused(
    project: Path, wine_csv: Path, serve_folder: Any
) -> None:
    archive = project.parent / "archive"
    archive.mkdir()
    shutil.copyfile(wine_csv, archive / WINE_FILE_NAME)
    settings = _settings(project, f"{serve_folder(archive)}/{WINE_FILE_NAME}")

    found = locate_wine_csv(settings)

    assert found == project / "var" / "datasets" / WINE_FILE_NAME
    assert sha256_hex(found.read_bytes()) == WINE_SHA256

    # The archive goes away: the saved copy is used without the network.
    (archive / WINE_FILE_NAME).unlink()
    offline = _settings(project, _closed_port_url())
    assert locate_wine_csv(offline) == found.resolve()


def test_a_download_with_the_wrong_content_is_refused(
    project: Path, wine_csv: Path, serve_folder: Any
) -> None:
    archive = project.parent / "archive"
    tampered = wine_csv.read_bytes().replace(b"\n7.4;", b"\n9.9;", 1)
    _place(archive, tampered)
    settings = _settings(project, f"{serve_folder(archive)}/{WINE_FILE_NAME}")

    with pytest.raises(WineDataUnavailableError) as caught:
        locate_wine_csv(settings)

    assert "sha256" in str(caught.value)
    assert WINE_SHA256 in str(caught.value)
    assert not (project / "var" / "datasets" / WINE_FILE_NAME).exists()


def test_a_missing_file_on_the_server_is_reported(project: Path, serve_folder: Any) -> None:
    empty = project.parent / "empty-archive"
    empty.mkdir()
    settings = _settings(project, f"{serve_folder(empty)}/{WINE_FILE_NAME}")

    with pytest.raises(WineDataUnavailableError, match="404"):
        locate_wine_csv(settings)


def test_an_unreachable_download_tells_the_user_what_to_do(project: Path) -> None:
    url = _closed_port_url()

    with pytest.raises(WineDataUnavailableError) as caught:
        locate_wine_csv(_settings(project, url), download_timeout=5)

    message = str(caught.value)
    assert "MODELPORT_DATASETS_DIR" in message
    assert "train-wine --data" in message
    assert url in message
    assert not (project / "var" / "datasets" / WINE_FILE_NAME).exists()


def test_only_http_downloads_are_attempted(project: Path, wine_csv: Path) -> None:
    with pytest.raises(WineDataUnavailableError, match="non-HTTP"):
        locate_wine_csv(_settings(project, wine_csv.as_uri()))
