"""The database goes away for real (a TCP proxy in front of PostgreSQL is stopped) and returns.

Predictions keep being answered from the model in memory; their log rows wait and reach the
database once it is back, or reach it through the spool file after a shutdown.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from modelport.db.engine import create_engine, create_session_factory
from modelport.monitoring.prediction_log import PredictionLogWriter
from modelport.settings import Settings
from tests.helpers import (
    WINE_ROW,
    flush_log,
    register_trained,
    run,
    wait_until,
    wait_until_async,
    wait_until_ready,
)
from tests.monitoring.support import count_rows, count_rows_async, log_entries
from tests.monitoring.tcp_proxy import TcpProxy

# PostgreSQL only: the database must be a server that can vanish behind the proxy.
pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)


@pytest.fixture
def proxy(database_url: str) -> Iterator[TcpProxy]:
    url = make_url(database_url)
    tcp_proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    tcp_proxy.start()
    yield tcp_proxy
    tcp_proxy.stop()


@pytest.fixture
def proxied_settings(
    make_settings: Callable[..., Settings],
    database_url: str,
    proxy: TcpProxy,
    trained_wine: TrainedWine,
) -> Settings:
    """The wine model registered; the app reaches PostgreSQL only through the proxy."""
    register_trained(make_settings(), trained_wine)
    proxied = make_url(database_url).set(host="127.0.0.1", port=proxy.port)
    return make_settings(
        database_url=proxied.render_as_string(hide_password=False),
        # The model's resolution stays cached here; serving past the cache's lifetime while
        # the database is away is the resolver's job (test_*_past_the_registry_cache below).
        registry_cache_seconds=3600,
        shutdown_flush_seconds=2,
    )


def predict(client: TestClient) -> str:
    response = client.post("/predict", json=WINE_ROW)
    assert response.status_code == 200, response.text
    return response.headers["x-request-id"]


def test_predictions_are_answered_and_logged_across_an_outage(
    proxied_settings: Settings, proxy: TcpProxy, database_url: str
) -> None:
    with TestClient(create_app(proxied_settings)) as client:
        wait_until_ready(client)
        before = predict(client)
        flush_log(client)
        assert count_rows(database_url, [before]) == {before: 1}

        proxy.stop()
        during = [predict(client) for _ in range(3)]
        ready = client.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json()["components"]["database"]["status"] == "down"
        root = client.get("/").json()
        assert root["database_connected"] is False
        assert root["model_loaded"] is True
        assert root["status"] == "degraded"
        assert count_rows(database_url, during) == dict.fromkeys(during, 0)

        proxy.start()
        wait_until(
            lambda: count_rows(database_url, during) == dict.fromkeys(during, 1),
            "the rows held during the outage to reach the database",
            interval=0.05,  # each look opens a connection of its own
        )
        wait_until(lambda: client.get("/health/ready").status_code == 200, "readiness")
        assert client.get("/").json()["database_connected"] is True


def test_rows_spooled_at_shutdown_during_an_outage_are_written_by_the_next_start(
    proxied_settings: Settings, proxy: TcpProxy, database_url: str
) -> None:
    with TestClient(create_app(proxied_settings)) as client:
        wait_until_ready(client)
        predict(client)
        proxy.stop()
        during = [predict(client) for _ in range(3)]
    # Shut down with the database away: the rows are on disk, not lost.
    spooled = proxied_settings.prediction_log_spool.read_text()
    assert all(request_id in spooled for request_id in during)
    assert count_rows(database_url, during) == dict.fromkeys(during, 0)

    proxy.start()
    with TestClient(create_app(proxied_settings)):
        wait_until(
            lambda: count_rows(database_url, during) == dict.fromkeys(during, 1),
            "the next start to replay the spool",
            interval=0.05,  # each look opens a connection of its own
        )
    assert not proxied_settings.prediction_log_spool.exists()


def test_predictions_are_answered_during_an_outage_past_the_registry_cache(
    proxied_settings: Settings, proxy: TcpProxy
) -> None:
    settings = proxied_settings.model_copy(update={"registry_cache_seconds": 0.0})
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        predict(client)
        proxy.stop()
        predict(client)


def test_rows_whose_commit_answer_was_lost_are_written_exactly_once(
    proxy: TcpProxy, database_url: str, tmp_path: Path
) -> None:
    """PostgreSQL commits a batch, then the connection dies before the writer hears so. The
    writer must write the batch again only where it is missing: no duplicates, no stuck log."""
    rows = log_entries(20)
    request_ids = [entry.request_id for entry in rows]
    proxied = make_url(database_url).set(host="127.0.0.1", port=proxy.port)

    async def committed() -> bool:
        return await count_rows_async(database_url, request_ids) == dict.fromkeys(request_ids, 1)

    async def scenario() -> None:
        engine = create_engine(proxied.render_as_string(hide_password=False))
        writer = PredictionLogWriter(
            create_session_factory(engine), spool_path=tmp_path / "spool.jsonl", flush_interval=0.05
        )
        proxy.swallow_replies_after(b"COMMIT\x00")  # the tag of COMMIT's answer
        writer.start()
        try:
            for entry in rows:
                writer.record(entry)
            await wait_until_async(committed, "the batch to be committed")
            assert proxy.swallowed.is_set()
            await asyncio.to_thread(proxy.stop)  # the writer is still waiting for the answer
            await asyncio.to_thread(proxy.start)
            await writer.flush()
            assert writer.buffered == 0
        finally:
            await writer.close(timeout=10)
            await engine.dispose()

    run(scenario())

    assert count_rows(database_url, request_ids) == dict.fromkeys(request_ids, 1)
