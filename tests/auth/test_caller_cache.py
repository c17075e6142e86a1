"""Who is calling is remembered briefly per process: one database read however many requests
with one credential arrive together, never past a key's expiry, never a refusal."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event

from modelport.app import create_app
from modelport.auth.principal import Principal
from modelport.settings import Settings
from tests.auth.keys_support import KEYS, create_key, key_header, set_key_expiry, sign_up
from tests.helpers import services_of

MODELS = "/api/v1/models"
TOGETHER = 25
LONG = 300.0  # longer than any test here: what is refused after a first success was cached


@pytest.fixture
def app_client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(auth_cache_seconds=LONG))) as client:
        yield client


@contextmanager
def statements(client: TestClient, marker: str) -> Iterator[list[str]]:
    """The SQL statements the app sends to its database that contain ``marker``."""
    engine = services_of(client).engine.sync_engine
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if marker in statement:
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


KEY_LOOKUP = "FROM api_keys JOIN users"
ACCOUNT_LOOKUP = "FROM users"


def identify_together(client: TestClient, identify: Callable[[], Any]) -> list[Principal]:
    """``identify()`` TOGETHER times at once on the app's own event loop, as concurrent
    requests are: each asks before any database answer can arrive."""

    async def burst() -> list[Principal]:
        return list(await asyncio.gather(*(identify() for _ in range(TOGETHER))))

    result: list[Principal] = client.portal.call(burst)  # type: ignore[union-attr]
    return result


def test_concurrent_first_requests_with_one_key_read_the_database_once(
    app_client: TestClient,
) -> None:
    user_id, headers = sign_up(app_client)
    key = create_key(app_client, headers)["key"]
    callers = services_of(app_client).callers

    with statements(app_client, KEY_LOOKUP) as lookups:
        principals = identify_together(app_client, lambda: callers.for_key(key, "192.0.2.7"))
        assert len(lookups) == 1
        assert {(p.user_id, p.client_address) for p in principals} == {(user_id, "192.0.2.7")}
        # And later requests within the cache lifetime are answered without reading it again.
        assert app_client.get(MODELS, headers=key_header(key)).status_code == 200
        assert len(lookups) == 1


def test_concurrent_first_requests_with_one_token_read_the_account_once(
    app_client: TestClient,
) -> None:
    user_id, headers = sign_up(app_client)
    services = services_of(app_client)
    claims = services.tokens.decode(headers["Authorization"].removeprefix("Bearer "), "access")

    with statements(app_client, ACCOUNT_LOOKUP) as lookups:
        principals = identify_together(
            app_client, lambda: services.callers.for_access(claims, "192.0.2.8")
        )
        assert len(lookups) == 1
        assert {(p.user_id, p.role) for p in principals} == {(user_id, "user")}
        assert app_client.get(MODELS, headers=headers).status_code == 200
        assert len(lookups) == 1


def test_a_cached_key_past_its_expiry_is_refused(app_client: TestClient) -> None:
    _, headers = sign_up(app_client)
    created = create_key(app_client, headers)
    key = key_header(created["key"])
    expiry = datetime.now(UTC) + timedelta(seconds=2)
    set_key_expiry(services_of(app_client).settings, created["id"], expiry)

    with statements(app_client, KEY_LOOKUP) as lookups:
        assert app_client.get(MODELS, headers=key).status_code == 200
        time.sleep(max((expiry - datetime.now(UTC)).total_seconds(), 0) + 0.05)
        refused = app_client.get(MODELS, headers=key)
        # Refused from what was remembered, within its lifetime: the expiry is checked each time.
        assert len(lookups) == 1
    assert refused.status_code == 401
    assert "expired" in refused.json()["detail"]
    assert app_client.get(MODELS, headers=key).status_code == 401


def test_a_refused_key_is_read_again_every_time(app_client: TestClient) -> None:
    unknown = key_header("mp_" + uuid.uuid4().hex + uuid.uuid4().hex[:11])
    with statements(app_client, KEY_LOOKUP) as lookups:
        for _ in range(3):
            assert app_client.get(MODELS, headers=unknown).status_code == 401
        assert len(lookups) == 3


def test_a_key_changed_or_revoked_here_applies_to_the_next_request(
    app_client: TestClient,
) -> None:
    _, headers = sign_up(app_client)
    created = create_key(app_client, headers, scopes=["read", "predict"])
    key = key_header(created["key"])
    assert app_client.get(MODELS, headers=key).status_code == 200  # now remembered

    narrowed = app_client.patch(
        f"{KEYS}/{created['id']}", json={"scopes": ["predict"]}, headers=headers
    )
    assert narrowed.status_code == 200
    refused = app_client.get(MODELS, headers=key)
    assert refused.status_code == 403
    assert "'read' scope" in refused.json()["detail"]

    assert app_client.delete(f"{KEYS}/{created['id']}", headers=headers).status_code == 204
    assert app_client.get(MODELS, headers=key).status_code == 401
