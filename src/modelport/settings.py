"""All configuration in one place: environment variables prefixed ``MODELPORT_`` (or ``.env``)."""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from modelport.workers import usable_cores

ENV_PREFIX = "MODELPORT_"

# S3 bucket names: 3-63 lowercase letters, digits, dots and hyphens, starting and ending with a
# letter or digit (the rule every S3-compatible store accepts).
_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")

# Plain scheme -> the async driver SQLAlchemy needs; users may write either.
_DATABASE_SCHEMES = {
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
}


def default_var_dir() -> Path:
    """The user's state directory, never the working directory: a model file that names a
    relative path, or anything else that resolves one, must not find the server's database and
    JWT secret beside it. XDG puts such state (what /var/lib holds for a service) in
    $XDG_STATE_HOME, ~/.local/state when unset; a relative value is invalid and ignored."""
    state = os.environ.get("XDG_STATE_HOME", "")
    base = Path(state) if os.path.isabs(state) else Path.home() / ".local" / "state"
    return base / "modelport"


class SettingsError(ValueError):
    """A setting is wrong; the message names the environment variable to fix."""


# URLs may carry a password: errors about them never quote the URL or any part of it.
_URL_ENCODING_HINT = (
    "percent-encode any @ : / ? # in the user name or password (as %40 %3A %2F %3F %23)"
)


def normalize_database_url(url: str) -> str:
    """Map ``sqlite://`` / ``postgresql://`` URLs to their async-driver form, refuse the rest."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in _DATABASE_SCHEMES:
        raise ValueError(
            "must be a SQLite or PostgreSQL URL such as sqlite+aiosqlite:////abs/path.db "
            "or postgresql+asyncpg://user@host/db"
        )
    normalized = f"{_DATABASE_SCHEMES[scheme]}://{rest}"
    if not normalized.startswith("sqlite"):
        _check_server_url(normalized)
    return normalized


def _check_server_url(url: str) -> None:
    """A PostgreSQL URL must parse as its author meant: an unencoded ``@`` in the password
    would otherwise make the rest of the password the host name (and show up in messages that
    name the host)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 - parsing the port raises for a password cut short
    except (ArgumentError, ValueError):
        raise ValueError(f"cannot be parsed; {_URL_ENCODING_HINT}") from None
    if parsed.host and ("@" in parsed.host or "/" in parsed.host):
        raise ValueError(f"cannot be parsed; {_URL_ENCODING_HINT}")


def check_redis_url(url: str) -> None:
    """redis://, rediss:// (with a host) or unix://, parsed as redis-py will parse it: a ``#``,
    ``?`` or ``/`` in the password would end the host part early and put part of the password
    into the port, which redis-py then quotes in its error."""
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must be a redis:// or rediss:// URL")
    if parts.scheme == "unix":
        return
    try:
        parts.port  # noqa: B018 - raises for a port that is not a number
    except ValueError:
        raise ValueError(f"cannot be parsed; {_URL_ENCODING_HINT}") from None
    if not parts.hostname:
        raise ValueError(f"names no host; {_URL_ENCODING_HINT}")


def split_s3_store_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` -> ``("bucket", "some/prefix")``; refuse what S3 cannot hold."""
    parts = urlsplit(url)
    if parts.scheme != "s3":
        raise ValueError("must be an s3://bucket[/prefix] URL")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "put no credentials in the s3:// URL; set MODELPORT_S3_ACCESS_KEY_ID and "
            "MODELPORT_S3_SECRET_ACCESS_KEY instead"
        )
    if parts.query or parts.fragment:
        raise ValueError("an s3:// store URL takes no ?query or #fragment: s3://bucket[/prefix]")
    if not _S3_BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc:
        raise ValueError(
            f"{parts.netloc!r} is not a valid bucket name (3-63 lowercase letters, digits, dots "
            "and hyphens); use s3://bucket[/prefix]"
        )
    prefix = parts.path.strip("/")
    if prefix and any(segment in ("", ".", "..") for segment in prefix.split("/")):
        raise ValueError(f"the prefix {prefix!r} has an empty, '.' or '..' segment")
    return parts.netloc, prefix


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    var_dir: Path = Field(
        default_factory=default_var_dir,
        description="Where the embedded defaults keep their files (SQLite database, artifacts, "
        "JWT secret); $XDG_STATE_HOME/modelport or ~/.local/state/modelport if unset.",
    )
    # Secret: the URL may hold a password. Read it with get_secret_value() only where the
    # driver needs it; repr, logs and errors show "**********".
    database_url: SecretStr = Field(
        default=SecretStr(""), description="SQLAlchemy URL; SQLite under var/ if empty."
    )
    # PostgreSQL connections per worker process: replicas x workers x (pool + overflow) must stay
    # under the server's max_connections (100 by default).
    database_pool_size: int = Field(default=10, ge=1, le=1000)
    database_max_overflow: int = Field(default=10, ge=0, le=1000)
    artifact_store: str = Field(
        default="", description="file:///abs/path or s3://bucket/prefix; var/artifacts if empty."
    )
    # S3-compatible artifact storage (used when artifact_store is s3://...). Unset values fall
    # back to boto3's own chain (AWS_* variables, ~/.aws, an instance or pod role).
    s3_endpoint_url: str | None = Field(
        default=None, description="http(s) URL of an S3-compatible service; AWS if empty."
    )
    s3_region: str | None = Field(default=None, description="Region of the bucket.")
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = Field(default=None, validate_default=True)
    s3_connect_timeout: float = Field(
        default=5.0, gt=0, le=300, description="Seconds to wait for a connection to S3."
    )
    artifact_cache_dir: Path | None = Field(
        default=None,
        description="Local sha256-checked copies of S3 artifacts; var/artifact-cache if empty.",
    )
    datasets_dir: Path | None = Field(default=None, description="Folder holding the UCI wine CSVs.")
    wine_download_url: str = (
        "https://archive.ics.uci.edu/ml/machine-learning-databases/wine-quality/winequality-red.csv"
    )

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    workers: int = Field(
        default_factory=lambda: min(usable_cores(), 64),
        ge=1,
        le=64,
        description="Worker processes of `modelport serve`; the usable CPU cores if unset.",
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["json", "text"] = "json"
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry spans, metrics and logs, sent to the "
        "providers the process configures (e.g. run under opentelemetry-instrument). Off by "
        "default: looking for those providers costs every request.",
    )

    max_request_bytes: int = Field(default=1_048_576, ge=1024, description="Largest request body.")
    max_batch_rows: int = Field(default=1000, ge=1, description="Most rows in one predict call.")
    inference_threads: int = Field(default=1, ge=1, le=64, description="ONNX Runtime intra-op.")
    registry_cache_seconds: float = Field(
        default=2.0, ge=0, description="How long a resolved alias is trusted before re-reading."
    )
    auth_cache_seconds: float = Field(
        default=2.0,
        ge=0,
        le=300,
        description="How long an accepted API key or token session is trusted before the "
        "database is read again; changes carried between replicas apply at once, this bounds "
        "how late they apply when they cannot be carried. 0: read on every request.",
    )

    # Adaptive batching and overload, per model version.
    max_batch_size: int = Field(
        default=64, ge=1, le=100_000, description="Rows per runtime call once requests coalesce."
    )
    max_batch_delay_ms: float = Field(
        default=0.0, ge=0, le=10_000, description="How long a batch may wait for more; 0: never."
    )
    max_queue_depth: int = Field(
        default=128, ge=1, description="Requests waiting per model version; more get 503."
    )
    inference_pool_threads: int = Field(
        default_factory=lambda: os.cpu_count() or 1,
        ge=1,
        le=256,
        description="Threads running batches too large to run on the event loop.",
    )
    request_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Deadline of a prediction; X-Request-Timeout "
        "may ask for less. Requests still waiting for the model then get 504.",
    )
    # Inference limits (runaway models): a run past its time is stopped, and one model may use
    # only some of the inference threads.
    inference_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="Longest one model run may take; ONNX runs are stopped then (504). A model's "
        "own limit may be lower, or higher up to MODELPORT_INFERENCE_TIMEOUT_MAX_SECONDS.",
    )
    inference_timeout_max_seconds: float = Field(
        default=60.0,
        gt=0,
        le=3600,
        description="Most a model's own time limit may be (set by an administrator).",
    )
    inference_max_concurrency: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Inference threads one model may use at once; more requests wait in its "
        "queue. Default: half the inference threads (at least 1).",
    )

    prediction_log_buffer: int = Field(default=10_000, ge=1, description="Rows held in memory.")
    prediction_log_buffer_bytes: int = Field(
        default=64 * 1_048_576,
        ge=16 * 1024,
        description="Memory for log rows not yet in the database; past it rows go to the spool.",
    )
    prediction_log_batch: int = Field(
        default=500, ge=1, le=10_000, description="Rows per COPY (PostgreSQL) or INSERT (SQLite)."
    )
    prediction_log_flush_seconds: float = Field(
        default=0.1, gt=0, le=3600, description="Longest a logged row waits before it is written."
    )
    prediction_log_max_field_bytes: int = Field(
        default=16 * 1024,
        ge=256,
        description="Inputs or outputs whose JSON is larger are logged as their size and sha256.",
    )
    prediction_log_retention_days: int = Field(
        default=90, ge=0, description="Log rows older than this are deleted; 0 keeps them forever."
    )
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
    metrics_token: SecretStr | None = Field(
        default=None,
        description="Bearer token for /metrics and /health details (Prometheus sends it). Empty:"
        " only administrators may read them.",
    )
    login_failures_allowed: int = Field(
        default=5, ge=1, description="Failed sign-ins per account from one address, per window."
    )
    login_window_seconds: float = Field(default=900, gt=0)
    login_address_failures_allowed: int = Field(
        default=20, ge=1, description="Failed sign-ins from one address across accounts."
    )
    login_account_failures_allowed: int = Field(
        default=30, ge=1, description="Failed sign-ins per account from all addresses together."
    )
    login_account_window_seconds: float = Field(default=3600, gt=0)

    # Rate limits (token buckets, requests per minute)
    redis_url: SecretStr | None = Field(
        default=None, description="Share limits across replicas (secret: may hold a password)."
    )
    rate_limit_fail_open: bool = Field(
        default=True, description="Allow requests when Redis is unreachable (else refuse)."
    )
    rate_limit_lease_fraction: float = Field(
        default=0.05,
        ge=0,
        le=0.5,
        description="Share of a bucket's capacity one process takes from Redis at once, so most"
        " requests need no round trip; 0: one round trip per request.",
    )
    rate_limit_lease_seconds: float = Field(
        default=1.0, gt=0, le=60, description="How long unused leased tokens stay with a process."
    )
    rate_limit_anonymous_per_minute: int = Field(default=60, ge=1)
    rate_limit_user_per_minute: int = Field(default=600, ge=1)
    rate_limit_api_key_per_minute: int = Field(default=600, ge=1)
    # What one request takes from its bucket, by the work it asks for (a prediction takes 1;
    # never more than the whole bucket).
    rate_limit_upload_cost: int = Field(
        default=10, ge=1, description="Tokens per multipart upload (images, CSV files)."
    )
    rate_limit_model_upload_cost: int = Field(
        default=30, ge=1, description="Tokens per model version upload (checked, converted)."
    )
    rate_limit_training_cost: int = Field(default=60, ge=1, description="Tokens per training job.")
    # Reverse proxies whose X-Forwarded-For (or Forwarded) header names the client; without
    # one, every address comes from the socket.
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated proxy IPs or CIDR networks."
    )
    proxy_header: Literal["x-forwarded-for", "forwarded"] = Field(
        default="x-forwarded-for", description="The header the trusted proxies append to."
    )

    health_check_seconds: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="How long /health and /health/ready reuse a check of the artifact store or "
        "Redis, so that probes from every replica do not each reach them.",
    )
    model_cache_max_models: int = Field(default=32, ge=1, description="Models kept loaded.")
    model_load_retry_seconds: float = Field(
        default=10.0,
        ge=0,
        description="After a version fails to load, requests for it answer 503 at once for this "
        "long before the artifact is read again.",
    )
    model_cache_max_bytes: int = Field(
        default=4 * 1024**3,
        ge=1,
        description="Memory the loaded models may need together, as their trials measured it "
        "(a version never measured counts 4x its file size).",
    )
    # Model budgets: what an uploaded model file may declare, and what loading it and a trial
    # inference of the largest batch may cost (measured in a child process at upload).
    model_max_nodes: int = Field(
        default=10_000, ge=1, description="ONNX nodes, every graph (nested ones) included."
    )
    model_max_initializer_bytes: int = Field(
        default=1024**3,
        ge=1,
        description="Bytes an ONNX model's initializers and constants declare (by their shapes,"
        " tensors built from constant shapes included).",
    )
    model_max_input_width: int = Field(
        default=100_000, ge=1, description="Values in one input row (features)."
    )
    model_max_loop_trips: int = Field(
        default=1_000_000, ge=1, description="Constant trip count of an ONNX Loop."
    )
    model_max_classes: int = Field(
        default=10_000, ge=2, description="Classes of a classifier (boosters, ONNX ensembles)."
    )
    model_max_trees: int = Field(
        default=100_000, ge=1, description="Trees of a boosted model or ONNX tree ensemble."
    )
    model_trial_memory_bytes: int = Field(
        default=2 * 1024**3,
        ge=64 * 1_048_576,
        description="Memory loading a model and a trial inference of the largest batch may take.",
    )
    model_trial_seconds: float = Field(
        default=30.0, gt=0, le=3600, description="Time loading a model and its trial may take."
    )
    model_trials_at_once: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Trials running at once per process (together up to this many times the "
        "trial memory); an upload waits for a slot at most the trial time, then gets 503.",
    )
    max_dataset_rows: int = Field(default=1_000_000, ge=1, description="Rows per dataset.")
    allow_pickle: bool = Field(
        default=False,
        description="Let administrators upload pickle/joblib models (they run code when loaded).",
    )
    max_model_upload_bytes: int = Field(
        default=500 * 1_048_576, ge=1024, description="Largest model file upload."
    )
    max_upload_bytes: int = Field(
        default=10 * 1_048_576, ge=1024, description="Largest multipart upload (images)."
    )
    max_image_pixels: int = Field(
        default=40_000_000, ge=1, description="Images declaring more pixels are refused."
    )
    run_jobs: bool = Field(default=True, description="This process runs background jobs.")
    job_poll_seconds: float = Field(default=1.0, gt=0)
    job_lease_seconds: float = Field(default=300.0, gt=0)

    # Training budgets: what one training job may cost, and how jobs share the runners.
    training_max_cost: int = Field(
        default=200_000_000,
        ge=1,
        description="Largest estimated cost of one training job, checked when it is submitted: "
        "rows x trees x depth for forests and boosting, rows x max_iter for logistic "
        "regression, rows x features for linear models (about a minute of one core).",
    )
    training_time_limit_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="Wall time of one training, from when its process has loaded its "
        "libraries; then the process is killed and the job fails.",
    )
    training_memory_limit_bytes: int = Field(
        default=2 * 1024**3,
        ge=64 * 1024**2,
        description="Address space one training may take beyond its loaded libraries "
        "(RLIMIT_AS of its process); past it the job fails.",
    )
    training_max_artifact_bytes: int = Field(
        default=100 * 1_048_576,
        ge=1024,
        description="Largest model a training job may write; a larger one fails the job.",
    )
    jobs_per_owner: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Jobs of one kind lane (training, images) one account may have running at "
        "once across all workers; the others wait while other accounts' jobs run.",
    )

    cors_allow_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS."
    )

    # HTTP limits (per worker process): what one connection may cost before its app runs.
    max_connections: int = Field(
        default=1000,
        ge=1,
        le=100_000,
        description="Open connections per worker; more are answered 503 and closed at once.",
    )
    max_header_count: int = Field(
        default=100, ge=8, le=10_000, description="Headers in one request; more get 431."
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=4096,
        le=16 * 1_048_576,
        description="Request line plus headers; larger heads get 431 before they are read whole.",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="From a connection (or a request's first byte) to its last header; "
        "slower requests get 408 and are closed.",
    )
    body_timeout_seconds: float = Field(
        default=15.0,
        gt=0,
        le=3600,
        description="Longest wait for the next piece of a request body; then 408 and closed.",
    )
    max_validation_errors: int = Field(
        default=20, ge=1, le=1000, description="Errors listed in one 422; the rest are counted."
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

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_proxies(cls, value: object) -> object:
        if isinstance(value, str):
            value = [entry.strip() for entry in value.split(",") if entry.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        networks = []
        for entry in value:
            try:
                networks.append(str(ipaddress.ip_network(entry, strict=False)))
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or CIDR network (e.g. 10.0.0.0/8, 172.18.0.5)"
                ) from None
        return networks

    @field_validator("proxy_header", mode="before")
    @classmethod
    def _lower_proxy_header(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("jwt_secret")
    @classmethod
    def _check_jwt_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < 32:
            raise ValueError("must be at least 32 bytes; generate one with `openssl rand -hex 32`")
        return value or None

    @field_validator("metrics_token")
    @classmethod
    def _check_metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        secret = value.get_secret_value() if value is not None else ""
        if secret and len(secret) < 32:
            raise ValueError(
                "must be at least 32 characters; generate one with `openssl rand -hex 32`"
            )
        if any(not (ch.isascii() and ch.isprintable()) or ch == " " for ch in secret):
            raise ValueError("must be printable ASCII without spaces (it is sent in a header)")
        return value if secret else None

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        url = value.get_secret_value() if value is not None else ""
        if url:
            check_redis_url(url)
        return value if url else None

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        return SecretStr(normalize_database_url(url)) if url else value

    @field_validator("artifact_store")
    @classmethod
    def _check_artifact_store(cls, value: str) -> str:
        if not value:
            return value
        parts = urlsplit(value)
        if parts.scheme == "s3":
            split_s3_store_url(value)
            return value
        if parts.scheme != "file":
            raise ValueError("must be a file:///absolute/path or s3://bucket[/prefix] URL")
        # file://var/artifacts parses as host "var", path "/artifacts": refuse, don't misplace.
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("the file:// path must be absolute, e.g. file:///srv/modelport")
        return value

    @field_validator("s3_region", "s3_access_key_id")
    @classmethod
    def _empty_is_unset(cls, value: str | None) -> str | None:
        return (value or "").strip() or None

    @field_validator("s3_endpoint_url")
    @classmethod
    def _check_s3_endpoint_url(cls, value: str | None) -> str | None:
        parts = urlsplit(value or "")
        if value and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError("must be an http:// or https:// URL such as http://minio:9000")
        return value or None

    @field_validator("s3_secret_access_key")
    @classmethod
    def _check_s3_key_pair(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        secret = value.get_secret_value() if value is not None else ""
        if bool(secret) != bool(info.data.get("s3_access_key_id")):
            raise ValueError(
                "set MODELPORT_S3_ACCESS_KEY_ID and MODELPORT_S3_SECRET_ACCESS_KEY together, or "
                "neither (then boto3 looks in AWS_* variables, ~/.aws or an instance/pod role)"
            )
        return value if secret else None

    @model_validator(mode="after")
    def _fill_embedded_defaults(self) -> Settings:
        self.var_dir = self.var_dir.expanduser().resolve()
        if not self.database_url.get_secret_value():
            self.database_url = SecretStr(f"sqlite+aiosqlite:///{self.var_dir / 'modelport.db'}")
        if not self.artifact_store:
            self.artifact_store = (self.var_dir / "artifacts").as_uri()
        if self.artifact_cache_dir is None:
            self.artifact_cache_dir = self.var_dir / "artifact-cache"
        self.artifact_cache_dir = self.artifact_cache_dir.expanduser().resolve()
        return self

    @property
    def prediction_log_spool(self) -> Path:
        """Where log rows go when the memory buffer is full or the database is gone at shutdown."""
        return self.var_dir / "prediction-log-spool.jsonl"

    @property
    def model_concurrency(self) -> int:
        """Inference threads one model may use at once, unless the model says fewer (or an
        administrator gave it more, up to every thread)."""
        if self.inference_max_concurrency is not None:
            return min(self.inference_max_concurrency, self.inference_pool_threads)
        return max(1, self.inference_pool_threads // 2)


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
