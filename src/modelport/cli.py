"""The ``modelport`` command: serve, db, train-wine, models, builtins."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from modelport.settings import Settings, SettingsError, load_settings

# What each worker process imports and calls to build its app.
APP_FACTORY = "modelport.app:create_app_from_env"

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncSession

    from modelport.registry.tables import Model

T = TypeVar("T")

app = typer.Typer(
    help="modelport: serve trained models.", no_args_is_help=True, pretty_exceptions_enable=False
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
models_app = typer.Typer(help="The model registry.", no_args_is_help=True)
builtins_app = typer.Typer(help="The built-in models.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(models_app, name="models")
users_app = typer.Typer(help="Accounts.", no_args_is_help=True)
app.add_typer(builtins_app, name="builtins")
app.add_typer(users_app, name="users")


def _settings() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        typer.echo(f"modelport: {exc}", err=True)
        raise typer.Exit(2) from None


def _fail(message: str) -> typer.Exit:
    typer.echo(f"modelport: {message}", err=True)
    return typer.Exit(1)


def _make_var_dir(settings: Settings) -> None:
    try:
        settings.var_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # secrets live here
    except OSError as exc:
        raise _fail(f"cannot create MODELPORT_VAR_DIR {settings.var_dir}: {exc.strerror}") from None


@contextlib.contextmanager
def _database_errors(settings: Settings) -> Iterator[None]:
    """Turn a database that cannot be reached or opened into one line, not a traceback."""
    from sqlalchemy import make_url
    from sqlalchemy.exc import DBAPIError, SQLAlchemyError

    try:
        yield
    except (SQLAlchemyError, ConnectionError, TimeoutError, socket.gaierror) as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
        where = make_url(settings.database_url.get_secret_value()).render_as_string(
            hide_password=True
        )
        raise _fail(
            f"cannot use the database {where} ({reason or type(reason).__name__}); "
            "check MODELPORT_DATABASE_URL and that the database server is running"
        ) from None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address [MODELPORT_HOST]")] = None,
    port: Annotated[int | None, typer.Option(help="Port [MODELPORT_PORT]")] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, max=64, help="Worker processes [MODELPORT_WORKERS; default: usable CPU cores]"
        ),
    ] = None,
) -> None:
    """Upgrade the database schema, then serve the API."""
    import uvicorn

    from modelport.db.migrate import upgrade
    from modelport.http.listening import supports_reuse_port
    from modelport.http.protocol import ConnectionLimits, limited_protocol
    from modelport.monitoring.logs import configure_logging
    from modelport.workers import shared_run_dir

    settings = _settings()
    configure_logging(settings.log_level, settings.log_format)
    _make_var_dir(settings)
    with _database_errors(settings):
        upgrade(settings.database_url)
    processes = workers or settings.workers
    # Several workers share a fresh directory (metrics files, rate-limit buckets without
    # Redis), named in the environment before they start: see modelport.workers.
    options: dict[str, Any] = {
        "factory": True,
        "host": host or settings.host,
        "port": port or settings.port,
        "workers": processes,
        "log_config": None,
        "access_log": False,  # our middleware writes the access log, with request ids
        # uvicorn would believe X-Forwarded-For from 127.0.0.1 whatever the settings say; the
        # app reads it only from MODELPORT_TRUSTED_PROXIES, so the socket address reaches it.
        "proxy_headers": False,
        "server_header": False,  # no "server: uvicorn": it tells an attacker what to look up
        "timeout_graceful_shutdown": int(settings.shutdown_flush_seconds) + 5,
        # uvicorn's httptools protocol with limits on connections, request heads and bodies.
        "http": limited_protocol(
            ConnectionLimits(
                max_connections=settings.max_connections,
                max_header_count=settings.max_header_count,
                max_header_bytes=settings.max_header_bytes,
                header_timeout_seconds=settings.header_timeout_seconds,
                body_timeout_seconds=settings.body_timeout_seconds,
            )
        ),
    }
    # Several workers share a fresh directory (metrics files, rate-limit buckets without
    # Redis), named in the environment before they start: see modelport.workers.
    with shared_run_dir(settings.var_dir, processes):
        if processes > 1 and supports_reuse_port():
            _serve_workers(uvicorn.Config(APP_FACTORY, **options))
        else:
            uvicorn.run(APP_FACTORY, **options)


def _serve_workers(config: Any) -> None:
    """uvicorn's worker supervisor (restarts, signals), each worker listening on a socket of its
    own so the kernel spreads connections over them (modelport.http.listening)."""
    from uvicorn.supervisors import Multiprocess

    from modelport.http.listening import WorkerSocket

    try:
        reserved = WorkerSocket.reserve(config.host, config.port)
    except OSError as exc:
        typer.echo(f"cannot listen on {config.host}:{config.port}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None
    with reserved, contextlib.suppress(KeyboardInterrupt):
        Multiprocess(config, sockets=[reserved]).run()


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Apply migrations up to REVISION (default: the newest)."""
    from modelport.db.migrate import upgrade

    settings = _settings()
    _make_var_dir(settings)
    with _database_errors(settings):
        upgrade(settings.database_url, revision)
    typer.echo(f"database at revision {revision}")


@app.command("train-wine")
def train_wine(
    data: Annotated[Path, typer.Option(help="UCI winequality-red.csv (';' or ',' separated)")],
    name: Annotated[str, typer.Option(help="Model name to register under")] = "wine-quality",
) -> None:
    """Train the wine-quality model on DATA and register it as the production version."""
    settings = _settings()
    version = asyncio.run(_train_and_register(settings, data, name))
    typer.echo(version)


async def _train_and_register(settings: Settings, data: Path, name: str) -> str:
    from modelport.builtin.wine import WineDataError, read_wine_csv, register_wine
    from modelport.builtin.wine import train_wine as fit
    from modelport.registry.tables import ModelVersion
    from modelport.storage.factory import open_artifact_store

    try:
        wine = read_wine_csv(data)
    except WineDataError as exc:
        raise _fail(str(exc)) from None
    trained = await asyncio.to_thread(fit, wine)
    store = open_artifact_store(settings)

    async def register(session: AsyncSession) -> ModelVersion:
        version = await register_wine(session, store, trained, name)
        await session.commit()
        return version

    version = await _in_session(settings, register)
    mae, r2 = trained.metrics["holdout_mae"], trained.metrics["holdout_r2"]
    return f"registered {name} v{version.version} -> production (MAE {mae:.3f}, R² {r2:.3f})"


@builtins_app.command("install")
def builtins_install(
    only: Annotated[
        list[str] | None,
        typer.Option(help="Install just this built-in (wine-quality, imagenet-classifier)"),
    ] = None,
) -> None:
    """Build and register the built-in models that are not registered yet."""
    from modelport.builtin.imagenet import IMAGENET_MODEL_NAME
    from modelport.builtin.wine import WINE_MODEL_NAME
    from modelport.builtin.wine_data import WineDataUnavailableError, locate_wine_csv

    wanted = set(only or [WINE_MODEL_NAME, IMAGENET_MODEL_NAME])
    unknown = wanted - {WINE_MODEL_NAME, IMAGENET_MODEL_NAME}
    if unknown:
        raise _fail(f"no built-in model named {sorted(unknown)}")
    settings = _settings()
    registered = asyncio.run(_model_names(settings))
    if WINE_MODEL_NAME not in wanted:
        pass
    elif WINE_MODEL_NAME in registered:
        typer.echo(f"{WINE_MODEL_NAME}: already registered")
    else:
        try:
            data = locate_wine_csv(settings)
        except WineDataUnavailableError as exc:
            raise _fail(str(exc)) from None
        typer.echo(f"{WINE_MODEL_NAME}: training on {data}")
        typer.echo(asyncio.run(_train_and_register(settings, data, WINE_MODEL_NAME)))
    if IMAGENET_MODEL_NAME not in wanted:
        pass
    elif IMAGENET_MODEL_NAME in registered:
        typer.echo(f"{IMAGENET_MODEL_NAME}: already registered")
    else:
        typer.echo(f"{IMAGENET_MODEL_NAME}: converting EfficientNet-Lite0 to ONNX")
        typer.echo(asyncio.run(_convert_and_register_imagenet(settings)))


async def _convert_and_register_imagenet(settings: Settings) -> str:
    from modelport.builtin.imagenet import (
        IMAGENET_MODEL_NAME,
        convert_efficientnet,
        register_imagenet,
    )
    from modelport.registry.tables import ModelVersion
    from modelport.storage.factory import open_artifact_store

    try:
        converted = await asyncio.to_thread(convert_efficientnet)
    except ImportError as exc:
        raise _fail(
            f"converting the ImageNet classifier needs PyTorch at setup ({exc}); "
            "run `make setup`, which installs it from requirements.lock"
        ) from None
    store = open_artifact_store(settings)

    async def register(session: AsyncSession) -> ModelVersion:
        version = await register_imagenet(session, store, converted)
        await session.commit()
        return version

    version = await _in_session(settings, register)
    diff = converted.max_abs_diff
    return (
        f"registered {IMAGENET_MODEL_NAME} v{version.version} -> production "
        f"(ONNX agrees with PyTorch within {diff:.1e})"
    )


async def _model_names(settings: Settings) -> list[str]:
    models = await _in_session(settings, _every_model_ever)
    return [model.name for model in models]


@models_app.command("list")
def models_list() -> None:
    """Print every registered model with its latest version and aliases."""
    from modelport.registry.schemas import ModelOut

    models = [ModelOut.of(m) for m in asyncio.run(_in_session(_settings(), _every_model))]
    if not models:
        typer.echo("no models registered; run `make run` or `modelport train-wine --data PATH`")
        return
    for model in models:
        aliases = ", ".join(f"{a}->v{v}" for a, v in sorted(model.aliases.items())) or "-"
        typer.echo(f"{model.name}\tlatest v{model.latest_version}\t{model.task}\t{aliases}")


@users_app.command("create-admin")
def users_create_admin(
    email: Annotated[str, typer.Option(help="The administrator's email address")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input")
    ] = False,
) -> None:
    """Create an administrator account (asks for the password unless --password-stdin)."""
    from modelport.auth.service import create_user
    from modelport.errors import ModelportError

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)

    async def create(session: AsyncSession) -> str:
        user = await create_user(session, email, password, role="admin")
        await session.commit()
        return user.email

    try:
        created = asyncio.run(_in_session(_settings(), create))
    except ModelportError as exc:
        raise _fail(exc.message) from None
    typer.echo(f"administrator {created} created")


async def _every_model(session: AsyncSession) -> list[Model]:
    from modelport.registry.service import list_models

    models, _total = await list_models(session)
    return models


async def _every_model_ever(session: AsyncSession) -> list[Model]:
    """Deleted ones too: a deleted built-in stays deleted until an admin restores it."""
    from modelport.registry.service import ModelQuery, list_models

    query = ModelQuery(include_deleted=True, limit=10_000)
    models, _total = await list_models(session, query=query)
    return models


async def _in_session(settings: Settings, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one session on an up-to-date schema, then close the engine."""
    from modelport.db.engine import create_engine, create_session_factory
    from modelport.db.migrate import upgrade

    _make_var_dir(settings)
    with _database_errors(settings):
        await asyncio.to_thread(upgrade, settings.database_url)
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                return await work(session)
        finally:
            await engine.dispose()


def main() -> None:
    app(prog_name="modelport")
