"""Settings come from MODELPORT_* variables or .env; bad values name the variable to fix."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelport.auth.jwt_secret import load_or_create_secret
from modelport.cli import app
from modelport.settings import Settings, SettingsError, load_settings
from modelport.workers import usable_cores


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MODELPORT_* variable from the caller's shell, a working directory without .env, and a
    home of its own (the default var dir is under it)."""
    for name in list(os.environ):
        if name.startswith("MODELPORT_"):
            monkeypatch.delenv(name)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_embedded_defaults_keep_everything_in_the_users_state_directory(tmp_path: Path) -> None:
    settings = load_settings()

    var = (tmp_path / "home" / ".local" / "state" / "modelport").resolve()
    assert settings.var_dir == var
    assert settings.database_url.get_secret_value() == f"sqlite+aiosqlite:///{var / 'modelport.db'}"
    assert settings.artifact_store == (var / "artifacts").as_uri()
    assert settings.artifact_store.startswith("file:///")
    # One worker per usable core by default.
    workers = min(usable_cores(), 64)
    assert (settings.host, settings.port, settings.workers) == ("127.0.0.1", 8000, workers)


def test_the_servers_secret_and_database_are_not_in_the_directory_it_runs_from(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Whatever resolves a relative path from the working directory (an ONNX model's external
    data did) finds neither the JWT secret nor the database there."""
    workdir = tmp_path / "checkout"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    settings = load_settings()

    secret = load_or_create_secret(None, settings.var_dir)

    path = settings.var_dir / "jwt-secret"
    assert path.read_text().strip() == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.var_dir.stat().st_mode) == 0o700
    assert not settings.var_dir.is_relative_to(Path.cwd())
    assert not Path(settings.database_url.get_secret_value().partition(":///")[2]).is_relative_to(
        Path.cwd()
    )
    assert not (workdir / "var").exists()


def test_xdg_state_home_places_the_var_dir_and_a_relative_one_is_ignored(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert load_settings().var_dir == (tmp_path / "xdg" / "modelport").resolve()

    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")  # invalid per the XDG spec
    assert load_settings().var_dir == (tmp_path / "home" / ".local/state/modelport").resolve()

    monkeypatch.setenv("MODELPORT_VAR_DIR", str(tmp_path / "chosen"))
    assert load_settings().var_dir == (tmp_path / "chosen").resolve()


def test_defaults_follow_the_var_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODELPORT_VAR_DIR", str(tmp_path / "state"))

    settings = load_settings()

    assert settings.database_url.get_secret_value().endswith(
        f"{tmp_path / 'state' / 'modelport.db'}"
    )
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
    assert (
        settings.database_url.get_secret_value()
        == "postgresql+asyncpg://app@db.internal:5432/modelport"
    )
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

    assert load_settings().database_url.get_secret_value() == expected


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
        ("MODELPORT_METRICS_TOKEN", "guessable", "at least 32 characters"),
        ("MODELPORT_METRICS_TOKEN", "0123456789abcdef0123456789abcdef é", "printable ASCII"),
        ("MODELPORT_TRUSTED_PROXIES", "10.0.0.0/8,10.0.0.0/33", "'10.0.0.0/33' is not an IP"),
        ("MODELPORT_TRUSTED_PROXIES", "proxy.internal", "CIDR network"),
        ("MODELPORT_PROXY_HEADER", "x-real-ip", "'x-forwarded-for' or 'forwarded'"),
        ("MODELPORT_RATE_LIMIT_TRAINING_COST", "0", "greater than or equal to 1"),
        ("MODELPORT_MAX_BATCH_SIZE", "0", "greater than or equal to 1"),
        ("MODELPORT_MAX_BATCH_DELAY_MS", "-1", "greater than or equal to 0"),
        ("MODELPORT_MAX_QUEUE_DEPTH", "0", "greater than or equal to 1"),
        ("MODELPORT_INFERENCE_POOL_THREADS", "0", "greater than or equal to 1"),
        ("MODELPORT_REQUEST_TIMEOUT_SECONDS", "0", "greater than 0"),
        # A revocation unheard (no channel between replicas) must not be trusted for long.
        ("MODELPORT_AUTH_CACHE_SECONDS", "3600", "less than or equal to 300"),
        ("MODELPORT_AUTH_CACHE_SECONDS", "-1", "greater than or equal to 0"),
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


def test_trusted_proxies_are_a_comma_separated_list_of_networks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELPORT_TRUSTED_PROXIES", " 10.0.0.0/8, 172.18.0.5 ,fd00::/8,")
    monkeypatch.setenv("MODELPORT_PROXY_HEADER", "Forwarded")

    settings = load_settings()

    assert settings.trusted_proxies == ["10.0.0.0/8", "172.18.0.5/32", "fd00::/8"]
    assert settings.proxy_header == "forwarded"
    assert load_settings(trusted_proxies="").trusted_proxies == []


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
