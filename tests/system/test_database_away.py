"""While PostgreSQL is away, a request that needs it is told to retry (503 with Retry-After),
whoever sends it: signed in with a token, with an API key, or anonymous. Found by the fault
tests: a signed-in caller's lookup failed with a 500 while the connection was refused."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from modelport.http.errors import DATABASE_UNREACHABLE
from modelport.settings import Settings
from tests.helpers import WINE_ROW, bearer, create_account, register_trained, wait_until_ready
from tests.monitoring.tcp_proxy import TcpProxy

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
PREDICT = "/api/v1/models/wine-quality/predict"


@pytest.fixture
def proxy(database_url: str) -> Iterator[TcpProxy]:
    url = make_url(database_url)
    tcp_proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    tcp_proxy.start()
    yield tcp_proxy
    tcp_proxy.stop()


def test_every_caller_is_told_to_retry_while_the_database_is_away(
    make_settings: Callable[..., Settings],
    database_url: str,
    proxy: TcpProxy,
    trained_wine: TrainedWine,
) -> None:
    direct = make_settings()
    register_trained(direct, trained_wine)
    email = f"caller-{uuid.uuid4().hex[:8]}@example.com"
    create_account(direct, email)
    proxied = make_url(database_url).set(host="127.0.0.1", port=proxy.port)
    # Credentials are read from the database on every request (nothing remembered).
    settings = make_settings(
        database_url=proxied.render_as_string(hide_password=False), auth_cache_seconds=0
    )
    with TestClient(create_app(settings)) as client:
        wait_until_ready(client)
        token = bearer(client, email)
        created = client.post("/api/v1/api-keys", json={"name": "notebook"}, headers=token)
        assert created.status_code == 201, created.text
        key = {"X-API-Key": created.json()["key"]}

        proxy.stop()
        answers = {
            "token": client.post(PREDICT, json=WINE_ROW, headers=token),
            "api key": client.post(PREDICT, json=WINE_ROW, headers=key),
            "anonymous read": client.get("/api/v1/models/wine-quality/versions/1"),
        }
        proxy.start()
        back = client.post(PREDICT, json=WINE_ROW, headers=key)

    for who, answer in answers.items():
        assert answer.status_code == 503, (who, answer.text)
        assert answer.headers["retry-after"] == "1", who
        assert answer.json()["detail"] == DATABASE_UNREACHABLE, who
        assert str(proxy.port) not in answer.text  # no host or port of the database
    assert back.status_code == 200, back.text
