"""Alembic environment: runs migrations through the app's own async engine."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

# Every domain's tables, so the metadata Alembic compares against is complete.
from modelport.auth import tables as _auth  # noqa: F401
from modelport.datasets import tables as _datasets  # noqa: F401
from modelport.db.base import Base
from modelport.db.engine import create_engine
from modelport.images import tables as _images  # noqa: F401
from modelport.jobs import tables as _jobs  # noqa: F401
from modelport.monitoring import tables as _monitoring  # noqa: F401
from modelport.registry import tables as _registry  # noqa: F401

target_metadata = Base.metadata
# Replicas starting together each run their migrations: on PostgreSQL they take turns under this
# transaction-scoped advisory lock, and the later ones find the schema already at head.
# Not the key of the image's start-up lock (deploy/docker/bootstrap.py), whose holder runs these
# migrations from the same process and would otherwise wait for itself.
MIGRATION_LOCK_KEY = 0x6D6F64656C6D6967  # "modelmig"


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


asyncio.run(_run_async(context.config.attributes["database_url"]))
