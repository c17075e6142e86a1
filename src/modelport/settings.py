"""All configuration in one place: environment variables prefixed ``MODELPORT_`` (or ``.env``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

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

    # Accounts and tokens
    jwt_secret: SecretStr | None = Field(
        default=None,
        description="HS256 signing secret (>= 32 bytes). Empty: generated once into var/jwt-secret;"
        " replicas on several hosts must share one.",
    )
    jwt_issuer: str = "modelport"
    jwt_audience: str = "modelport-api"
    access_token_minutes: int = Field(default=15, ge=1, le=1440)
    refresh_token_days: int = Field(default=7, ge=1, le=90)
    allow_registration: bool = True
    anonymous_predictions: bool = Field(
        default=True, description="Anyone may predict with public models (stricter rate limit)."
    )
    login_failures_allowed: int = Field(default=5, ge=1, description="Per account and address.")
    login_window_seconds: float = Field(default=900, gt=0)

    # Rate limits (token buckets, requests per minute)
    redis_url: str | None = Field(default=None, description="Share limits across replicas.")
    rate_limit_fail_open: bool = Field(
        default=True, description="Allow requests when Redis is unreachable (else refuse)."
    )
    rate_limit_anonymous_per_minute: int = Field(default=60, ge=1)
    rate_limit_user_per_minute: int = Field(default=600, ge=1)
    rate_limit_api_key_per_minute: int = Field(default=600, ge=1)

    max_upload_bytes: int = Field(
        default=10 * 1_048_576, ge=1024, description="Largest multipart upload (images)."
    )
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="Images declaring more pixels are refused."
    )
    run_jobs: bool = Field(default=True, description="This process runs background jobs.")
    job_poll_seconds: float = Field(default=1.0, gt=0)
    job_lease_seconds: float = Field(default=300.0, gt=0)

    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS."
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("cors_allow_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("jwt_secret")
    @classmethod
    def _check_jwt_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes; generate one with `openssl rand -hex 32`")
        return value or None

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis:// or rediss:// URL")
        return value or None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        return normalize_database_url(value) if value else value

    @field_validator("artifact_store")
    @classmethod
    def _check_artifact_store(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme != "file":
            raise ValueError("must be a file:///absolute/path URL")
        # file://var/artifacts parses as host "var", path "/artifacts": refuse, don't misplace.
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
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
