"""Settings come from MODELPORT_* variables or .env; bad values name the variable to fix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelport.cli import app
from modelport.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MODELPORT_* variable from the caller's shell, and a working directory without .env."""
    for name in list(os.environ):
        if name.startswith("MODELPORT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_embedded_defaults_keep_everything_under_var(tmp_path: Path) -> None:
    settings = load_settings()

    var = (tmp_path / "var").resolve()
    assert settings.var_dir == var
    assert settings.database_url == f"sqlite+aiosqlite:///{var / 'modelport.db'}"
    assert settings.artifact_store == (var / "artifacts").as_uri()
    assert settings.artifact_store.startswith("file:///")
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, 1)


def test_defaults_follow_the_var_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELPORT_VAR_DIR", str(tmp_path / "state"))

    settings = load_settings()

    assert settings.database_url.endswith(f"{tmp_path / 'state' / 'modelport.db'}")
    assert settings.artifact_store == (tmp_path / "state" / "artifacts").as_uri()


def test_environment_variables_use_the_modelport_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPORT_PORT", "9123")
    monkeypatch.setenv("MODELPORT_HOST", "0.0.0.0")
    monkeypatch.setenv("MODELPORT_WORKERS", "3")
    monkeypatch.setenv("MODELPORT_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("PORT", "7777")  # unprefixed: not ours

    settings = load_settings()

    assert (settings.host, settings.port, settings.workers) == ("0.0.0.0", 9123, 3)
    assert settings.log_level == "debug"


def test_dot_env_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".env").write_text(
        "MODELPORT_PORT=8123\n"
        "MODELPORT_DATABASE_URL=postgres://app@db.internal:5432/modelport\n"
        "MODELPORT_WORKERS=4\n",
        encoding="utf-8",
    )
    monkeypatch.setenv("MODELPORT_WORKERS", "2")

    settings = load_settings()

    assert settings.port == 8123
    assert settings.database_url == "postgresql+asyncpg://app@db.internal:5432/modelport"
    assert settings.workers == 2


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("sqlite:////srv/mp/modelport.db", "sqlite+aiosqlite:////srv/mp/modelport.db"),
        ("sqlite+aiosqlite:////srv/mp/modelport.db", "sqlite+aiosqlite:////srv/mp/modelport.db"),
        ("postgresql://u:p@db:5432/mp", "postgresql+asyncpg://u:p@db:5432/mp"),
        ("postgres://u@db/mp", "postgresql+asyncpg://u@db/mp"),
        ("postgresql+asyncpg://u@db/mp", "postgresql+asyncpg://u@db/mp"),
    ],
)
def test_database_urls_get_their_async_driver(
    monkeypatch: pytest.MonkeyPatch, given: str, expected: str
) -> None:
    monkeypatch.setenv("MODELPORT_DATABASE_URL", given)

    assert load_settings().database_url == expected


def test_an_absolute_file_artifact_store_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPORT_ARTIFACT_STORE", "file:///srv/modelport/artifacts")

    assert load_settings().artifact_store == "file:///srv/modelport/artifacts"


@pytest.mark.parametrize(
    ("variable", "value", "explanation"),
    [
        ("MODELPORT_DATABASE_URL", "mysql://x", "SQLite or PostgreSQL"),
        ("MODELPORT_DATABASE_URL", "/srv/modelport.db", "SQLite or PostgreSQL"),
        ("MODELPORT_PORT", "99999", "65535"),
        ("MODELPORT_PORT", "http", "integer"),
        ("MODELPORT_WORKERS", "0", "greater than or equal to 1"),
        ("MODELPORT_LOG_LEVEL", "loud", "debug"),
        ("MODELPORT_ARTIFACT_STORE", "gs://bucket/models", "file:///"),
        ("MODELPORT_ARTIFACT_STORE", "var/artifacts", "file:///"),
        ("MODELPORT_ARTIFACT_STORE", "file:var/artifacts", "absolute"),
        ("MODELPORT_ARTIFACT_STORE", "file://var/artifacts", "absolute"),
        ("MODELPORT_S3_ENDPOINT_URL", "minio:9000", "http:// or https://"),
        ("MODELPORT_S3_ENDPOINT_URL", "ftp://minio:9000", "http:// or https://"),
        ("MODELPORT_S3_ENDPOINT_URL", "http://", "http:// or https://"),
        ("MODELPORT_S3_CONNECT_TIMEOUT", "0", "greater than 0"),
        ("MODELPORT_MAX_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("MODELPORT_MAX_BATCH_DELAY_MS", "-1", "greater than or equal to 0"),
        ("MODELPORT_MAX_QUEUE_DEPTH", "0", "greater than or equal to 1"),
        ("MODELPORT_INFERENCE_POOL_THREADS", "0", "greater than or equal to 1"),
        ("MODELPORT_REQUEST_TIMEOUT_SECONDS", "0", "greater than 0"),
    ],
)
def test_bad_values_name_the_variable_to_fix(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, explanation: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(SettingsError) as caught:
        load_settings()

    assert variable in str(caught.value)
    assert explanation in str(caught.value)


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPORT_PORT", "0")
    monkeypatch.setenv("MODELPORT_DATABASE_URL", "oracle://scott@db")

    with pytest.raises(SettingsError) as caught:
        load_settings()

    assert "MODELPORT_PORT" in str(caught.value)
    assert "MODELPORT_DATABASE_URL" in str(caught.value)


def test_a_bad_value_in_dot_env_is_named_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MODELPORT_PORT=99999\n", encoding="utf-8")

    with pytest.raises(SettingsError, match="MODELPORT_PORT"):
        load_settings()


def test_keyword_overrides_beat_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELPORT_PORT", "9000")

    settings = Settings(port=9001, var_dir=tmp_path / "other")

    assert settings.port == 9001
    assert settings.var_dir == (tmp_path / "other").resolve()


@pytest.mark.parametrize(
    ("variable", "value"),
    [("MODELPORT_DATABASE_URL", "mysql://x"), ("MODELPORT_PORT", "99999")],
)
@pytest.mark.parametrize("command", [["db", "upgrade"], ["models", "list"], ["serve"]])
def test_cli_exits_2_and_names_the_bad_variable(
    variable: str, value: str, command: list[str], tmp_path: Path
) -> None:
    result = CliRunner().invoke(app, command, env={variable: value})

    assert result.exit_code == 2
    assert variable in result.stderr
    assert result.stderr.startswith("modelport: invalid settings")
    assert not (tmp_path / "var").exists()  # nothing was created on the way to the error
