"""Apply Alembic migrations; the only way the schema changes."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from pydantic import SecretStr

from modelport.db.engine import plain_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str | SecretStr) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["database_url"] = plain_url(database_url)
    return config


def upgrade(database_url: str | SecretStr, revision: str = "head") -> None:
    """Bring the schema to ``revision``. Call from synchronous code (it runs its own loop)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str | SecretStr, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)
