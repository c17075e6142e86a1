"""With the database away, a prediction is a 503 that says so, without SQL or driver text."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelport.settings import Settings
from tests.helpers import WINE_ROW
from tests.registry.support import serve
from tests.serving.support import GENERIC, WINE


@pytest.mark.parametrize(
    "database_url",
    [
        pytest.param("postgresql+asyncpg://postgres@127.0.0.1:1/gone", id="postgres-refused"),
        pytest.param("sqlite+aiosqlite:////nonexistent-dir/modelport.db", id="sqlite-unopenable"),
    ],
)
def test_unreachable_registry_is_503_without_internals(tmp_path: Path, database_url: str) -> None:
    settings = Settings(
        var_dir=tmp_path, database_url=database_url, log_format="text", shutdown_flush_seconds=1
    )

    with serve(settings, wait=False) as client:
        responses = [client.post(WINE, json=WINE_ROW), client.post(GENERIC, json=WINE_ROW)]

    for response in responses:
        assert response.status_code == 503
        detail = response.json()["detail"]
        assert "registry cannot be reached" in detail
        assert "SELECT" not in detail
        assert "sqlalchemy" not in detail.lower()
