"""S3 artifact-store settings: s3://bucket[/prefix] URLs, endpoint, credentials, local cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelport.cli import app
from modelport.settings import SettingsError, load_settings, split_s3_store_url


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MODELPORT_* variable from the caller's shell, and a working directory without .env."""
    for name in list(os.environ):
        if name.startswith("MODELPORT_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://models", "models", ""),
        ("s3://models/", "models", ""),
        ("s3://my.models-2/team/wine", "my.models-2", "team/wine"),
        ("s3://models/team/wine/", "models", "team/wine"),
    ],
)
def test_an_s3_artifact_store_is_accepted(
    monkeypatch: pytest.MonkeyPatch, url: str, bucket: str, prefix: str
) -> None:
    monkeypatch.setenv("MODELPORT_ARTIFACT_STORE", url)

    settings = load_settings()

    assert settings.artifact_store == url
    assert split_s3_store_url(settings.artifact_store) == (bucket, prefix)


@pytest.mark.parametrize(
    ("url", "explanation"),
    [
        ("s3://", "not a valid bucket name"),
        ("s3:///models", "not a valid bucket name"),
        ("s3://My_Models/wine", "not a valid bucket name"),
        ("s3://ab", "not a valid bucket name"),
        ("s3://" + "b" * 64, "not a valid bucket name"),
        ("s3://-models", "not a valid bucket name"),
        ("s3://my..models", "not a valid bucket name"),
        ("s3://AKIA:secret@models/wine", "MODELPORT_S3_ACCESS_KEY_ID"),
        ("s3://models/wine?region=eu-west-1", "no ?query"),
        ("s3://models/team//wine", "empty, '.' or '..' segment"),
        ("s3://models/team/../wine", "empty, '.' or '..' segment"),
        ("gs://models/wine", "s3://bucket[/prefix]"),
        ("models/wine", "file:///absolute/path or s3://bucket[/prefix]"),
    ],
)
def test_a_bad_artifact_store_url_says_what_to_write(
    monkeypatch: pytest.MonkeyPatch, url: str, explanation: str
) -> None:
    monkeypatch.setenv("MODELPORT_ARTIFACT_STORE", url)

    with pytest.raises(SettingsError) as caught:
        load_settings()

    assert "MODELPORT_ARTIFACT_STORE" in str(caught.value)
    assert explanation in str(caught.value)


def test_s3_connection_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELPORT_ARTIFACT_STORE", "s3://models/prod")
    monkeypatch.setenv("MODELPORT_S3_ENDPOINT_URL", "http://minio.internal:9000")
    monkeypatch.setenv("MODELPORT_S3_REGION", "eu-central-1")
    monkeypatch.setenv("MODELPORT_S3_ACCESS_KEY_ID", "modelport")
    monkeypatch.setenv("MODELPORT_S3_SECRET_ACCESS_KEY", "very-secret-key")
    monkeypatch.setenv("MODELPORT_S3_CONNECT_TIMEOUT", "2.5")

    settings = load_settings()

    assert settings.s3_endpoint_url == "http://minio.internal:9000"
    assert settings.s3_region == "eu-central-1"
    assert settings.s3_access_key_id == "modelport"
    assert settings.s3_secret_access_key is not None
    assert settings.s3_secret_access_key.get_secret_value() == "very-secret-key"
    assert settings.s3_connect_timeout == 2.5
    assert "very-secret-key" not in repr(settings)  # never printed by accident


def test_without_s3_settings_boto3_finds_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELPORT_ARTIFACT_STORE", "s3://models")
    monkeypatch.setenv("MODELPORT_S3_REGION", "")
    monkeypatch.setenv("MODELPORT_S3_ACCESS_KEY_ID", "")
    monkeypatch.setenv("MODELPORT_S3_SECRET_ACCESS_KEY", "")

    settings = load_settings()

    assert settings.s3_endpoint_url is None  # AWS itself
    assert settings.s3_region is None
    assert settings.s3_access_key_id is None
    assert settings.s3_secret_access_key is None


@pytest.mark.parametrize("given", ["MODELPORT_S3_ACCESS_KEY_ID", "MODELPORT_S3_SECRET_ACCESS_KEY"])
def test_s3_keys_come_in_pairs(monkeypatch: pytest.MonkeyPatch, given: str) -> None:
    monkeypatch.setenv(given, "half-of-a-key-pair")

    with pytest.raises(SettingsError) as caught:
        load_settings()

    message = str(caught.value)
    assert "MODELPORT_S3_ACCESS_KEY_ID" in message
    assert "MODELPORT_S3_SECRET_ACCESS_KEY" in message
    assert "together" in message
    assert "half-of-a-key-pair" not in message


def test_the_artifact_cache_lives_under_var_unless_set(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELPORT_VAR_DIR", str(tmp_path / "state"))
    assert load_settings().artifact_cache_dir == tmp_path / "state" / "artifact-cache"

    monkeypatch.setenv("MODELPORT_ARTIFACT_CACHE_DIR", "cache/artifacts")  # relative to the cwd
    assert load_settings().artifact_cache_dir == (tmp_path / "cache" / "artifacts").resolve()


def test_cli_exits_2_naming_a_bad_s3_store(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["models", "list"], env={"MODELPORT_ARTIFACT_STORE": "s3://Bad_Bucket/models"}
    )

    assert result.exit_code == 2
    assert "MODELPORT_ARTIFACT_STORE" in result.stderr
    assert "bucket name" in result.stderr
    assert not (tmp_path / "var").exists()
