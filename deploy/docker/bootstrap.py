"""Container start-up, before the server: migrate the schema and install the built-in models.

Several containers may start at once against one database (replicas, a rollout, the migration
job), so the work runs under one lock per database: a PostgreSQL advisory lock (a file lock for
SQLite). Whoever gets it first migrates and installs; the others then find the schema at head
and the built-ins registered, and do nothing.

Built-in models:
- wine-quality is trained on start from winequality-red.csv: MODELPORT_DATASETS_DIR (mount it),
  or the sha256-checked download from UCI. A few seconds on one core.
- imagenet-classifier is converted from PyTorch to ONNX on the build host (the image holds no
  PyTorch) and copied into the image at /opt/modelport/builtins; registered from that file here.
A built-in that cannot be installed is reported and skipped: the rest of the platform serves.
Set INSTALL_BUILTINS=false to skip both (they are never installed twice, and a built-in an admin
deleted stays deleted).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import text

from modelport.builtin.imagenet import IMAGENET_MODEL_NAME, ConvertedClassifier, register_imagenet
from modelport.builtin.wine import WINE_MODEL_NAME
from modelport.db.engine import create_engine, create_session_factory, is_sqlite
from modelport.db.migrate import upgrade
from modelport.registry.service import ModelQuery, list_models
from modelport.settings import Settings, SettingsError, load_settings
from modelport.storage.factory import open_artifact_store

BUILTINS_DIR = Path(os.environ.get("BUILTINS_DIR", "/opt/modelport/builtins"))
# Any fixed 64-bit number; the same in every container of every version.
LOCK_KEY = 0x6D6F64656C706F72  # "modelpor"
LOCK_WAIT_SECONDS = 600


def say(message: str) -> None:
    print(f"bootstrap: {message}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def database_lock(settings: Settings) -> AsyncIterator[None]:
    if is_sqlite(settings.database_url):
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        with (settings.var_dir / ".bootstrap.lock").open("w") as handle:
            await asyncio.to_thread(fcntl.flock, handle, fcntl.LOCK_EX)
            yield
        return
    engine = create_engine(settings.database_url)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:  # the database may still be starting (Compose, a fresh cluster)
            connection = engine.connect()
            try:
                await connection.start()
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise
                say(f"waiting for the database ({type(exc).__name__}: {exc})")
                await asyncio.sleep(2)
        try:
            # Held by this connection until it closes: a crashed container releases it too.
            await connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
            try:
                yield
            finally:
                await connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
        finally:
            await connection.close()
    finally:
        await engine.dispose()


async def registered_names(settings: Settings) -> set[str]:
    """Every model name ever registered, deleted ones included."""
    engine = create_engine(settings.database_url)
    try:
        async with create_session_factory(engine)() as session:
            query = ModelQuery(include_deleted=True, limit=10_000)
            models, _total = await list_models(session, query=query)
            return {model.name for model in models}
    finally:
        await engine.dispose()


def install_wine() -> None:
    # The CLI finds the data (configured folder or verified download), trains and registers.
    result = subprocess.run(  # noqa: S603 - our own command, fixed arguments
        ["modelport", "builtins", "install", "--only", WINE_MODEL_NAME],  # noqa: S607 - on PATH
        check=False,
    )
    if result.returncode != 0:
        say(f"{WINE_MODEL_NAME} not installed (see above); serving without it")


async def install_imagenet(settings: Settings) -> None:
    onnx_file = BUILTINS_DIR / f"{IMAGENET_MODEL_NAME}.onnx"
    about_file = BUILTINS_DIR / f"{IMAGENET_MODEL_NAME}.json"
    if not onnx_file.is_file() or not about_file.is_file():
        say(f"{IMAGENET_MODEL_NAME}: no converted model in {BUILTINS_DIR}; serving without it")
        return
    about = json.loads(about_file.read_text())
    onnx_bytes = onnx_file.read_bytes()
    if hashlib.sha256(onnx_bytes).hexdigest() != about["sha256"]:
        say(f"{IMAGENET_MODEL_NAME}: {onnx_file} does not match its sha256; not installed")
        return
    converted = ConvertedClassifier(
        onnx_bytes=onnx_bytes, max_abs_diff=about["max_abs_diff"], source=about["source"]
    )
    engine = create_engine(settings.database_url)
    try:
        async with create_session_factory(engine)() as session:
            version = await register_imagenet(session, open_artifact_store(settings), converted)
            await session.commit()
    finally:
        await engine.dispose()
    say(f"{IMAGENET_MODEL_NAME}: registered v{version.version} -> production")


async def bootstrap(settings: Settings, builtins: bool) -> None:
    async with database_lock(settings):
        await asyncio.to_thread(upgrade, settings.database_url)
        say("database schema at head")
        if not builtins:
            return
        present = await registered_names(settings)
        if WINE_MODEL_NAME not in present:
            await asyncio.to_thread(install_wine)
        if IMAGENET_MODEL_NAME not in present:
            await install_imagenet(settings)


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as exc:
        say(str(exc))
        return 2
    choice = os.environ.get("INSTALL_BUILTINS", "true").strip().lower()
    builtins = choice not in ("0", "false", "no")
    asyncio.run(bootstrap(settings, builtins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
