"""All configuration in one place: environment variables prefixed ``MODELPORT_`` (or ``.env``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "MODELPORT_"

# Plain scheme -> the async driver SQLAlchemy needs; users may write either.
_DATABASE_SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


class SettingsError(ValueError):
    """A setting is wrong; the message names the environment variable to fix."""


def normalize_database_url(url: str) -> str:
    """Map ``sqlite://`` / ``postgresql://`` URLs to their async-driver form, refuse the rest."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _DATABASE_SCHEMES:
        raise ValueError(
            "must be a SQLite or PostgreSQL URL such as sqlite+aiosqlite:////abs/path.db "
            "or postgresql+asyncpg://user@host/db"
        )
    return f"{_DATABASE_SCHEMES[scheme]}://{rest}"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    var_dir: Path = Field(
        default=Path("var"), description="Where the embedded defaults keep their files."
    )
    database_url: str = Field(default="", description="SQLAlchemy URL; SQLite under var/ if empty.")
    artifact_store: str = Field(default="", description="file:///abs/path; var/artifacts if empty.")
    datasets_dir: Path | None = Field(default=None, description="Folder holding the UCI wine CSVs.")
    wine_download_url: str = (
        "https://archive.ics.uci.edu/ml/machine-learning-databases/wine-quality/winequality-red.csv"
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(default=1, ge=1, le=64)
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["json", "text"] = "json"

    max_request_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body.")
    max_batch_rows: int = Field(default=1000, ge=1, description="Most rows in one predict call.")
    inference_threads: int = Field(default=1, ge=1, le=64, description="ONNX Runtime intra-op.")
    registry_cache_seconds: float = Field(
        default=2.0, ge=0, description="How long a resolved alias is trusted before re-reading."
    )

    prediction_log_buffer: int = Field(default=10_000, ge=1, description="Rows held in memory.")
    prediction_log_batch: int = Field(default=500, ge=1, description="Rows per INSERT.")
    prediction_log_flush_seconds: float = Field(default=0.5, gt=0)
    shutdown_flush_seconds: float = Field(default=10.0, ge=0)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        return normalize_database_url(value) if value else value

    @field_validator("artifact_store")
    @classmethod
    def _check_artifact_store(cls, value: str) -> str:
        if value and urlsplit(value).scheme != "file":
            raise ValueError("must be a file:///absolute/path URL")
        if value and not urlsplit(value).path.startswith("/"):
            raise ValueError("the file:// path must be absolute, e.g. file:///srv/modelport")
        return value

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        self.var_dir = self.var_dir.expanduser().resolve()
        if not self.database_url:
            self.database_url = f"sqlite+aiosqlite:///{self.var_dir / 'modelport.db'}"
        if not self.artifact_store:
            self.artifact_store = (self.var_dir / "artifacts").as_uri()
        return self

    @property
    def prediction_log_spool(self) -> Path:
        """Where log rows go when the memory buffer is full or the database is gone at shutdown."""
        return self.var_dir / "prediction-log-spool.jsonl"


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation error into one naming the environment variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else "settings"
            problems.append(f"{ENV_PREFIX}{field.upper()}: {error['msg']}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None
