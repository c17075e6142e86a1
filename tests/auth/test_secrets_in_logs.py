"""No password, token or API key ends up in a log line or in the prediction audit log."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from modelport.db.engine import create_engine
from modelport.monitoring.tables import PredictionRecord
from modelport.settings import Settings
from tests.auth.accounts_support import AUTH, bearer_of
from tests.helpers import WINE_ROW, flush_log, json_log_stream, run, services_of

PASSWORD = "Sesame-open-4-logs-test"
WRONG_PASSWORD = "Sesame-guess-4-logs-test"
WEAK_PASSWORD = "Weak-pw-9"
FORGED_BEARER = "forged-bearer-value-that-must-not-be-logged"
UNKNOWN_KEY = "mp_unknown-key-value-that-must-not-be-logged-000000"


@pytest.fixture
def captured_logs() -> Iterator[Callable[[], str]]:
    """Everything written through the JSON log handler (at debug level), as one string."""
    with json_log_stream("debug") as stream:
        yield stream.getvalue


def prediction_rows(settings: Settings) -> list[dict[str, Any]]:
    async def read() -> list[dict[str, Any]]:
        engine = create_engine(settings.database_url)
        try:
            async with engine.connect() as connection:
                result = await connection.execute(select(PredictionRecord.__table__))
                return [dict(row._mapping) for row in result]
        finally:
            await engine.dispose()

    rows: list[dict[str, Any]] = run(read())
    return rows


def pieces(secret: str) -> list[str]:
    """The secret and its distinctive parts: each JWT segment, the key without its prefix."""
    parts = [secret, *(part for part in secret.split(".") if len(part) >= 16)]
    if secret.startswith("mp_"):
        parts.append(secret[10:])  # what follows the visible prefix is the secret part
    return parts


def test_no_secret_reaches_the_logs(client: TestClient, captured_logs: Callable[[], str]) -> None:
    email = "careful@example.com"
    secrets = [PASSWORD, WRONG_PASSWORD, WEAK_PASSWORD, FORGED_BEARER, UNKNOWN_KEY]

    weak = client.post(
        f"{AUTH}/register", json={"email": "weak@example.com", "password": WEAK_PASSWORD}
    )
    assert weak.status_code == 422
    created = client.post(f"{AUTH}/register", json={"email": email, "password": PASSWORD})
    assert created.status_code == 201
    wrong = client.post(f"{AUTH}/login", json={"email": email, "password": WRONG_PASSWORD})
    assert wrong.status_code == 401
    pair = client.post(f"{AUTH}/login", json={"email": email, "password": PASSWORD}).json()
    user = bearer_of(pair["access_token"])
    assert client.get(f"{AUTH}/me", headers=user).status_code == 200
    renewed = client.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]}).json()
    replayed = client.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]})
    assert replayed.status_code == 401  # the replay ended that session: sign in again
    again = client.post(f"{AUTH}/login", json={"email": email, "password": PASSWORD}).json()
    user = bearer_of(again["access_token"])
    key = client.post("/api/v1/api-keys", json={"name": "logs"}, headers=user).json()["key"]
    assert client.post("/predict", json=WINE_ROW, headers={"X-API-Key": key}).status_code == 200
    assert client.get("/api/v1/api-keys", headers=user).is_success
    assert client.get(f"{AUTH}/me", headers=bearer_of(FORGED_BEARER)).status_code == 401
    assert client.get(f"{AUTH}/me", headers={"X-API-Key": UNKNOWN_KEY}).status_code == 401
    logout = client.post(f"{AUTH}/logout", json={"refresh_token": again["refresh_token"]})
    assert logout.status_code == 204
    flush_log(client)
    client.portal.call(services_of(client).key_usage.flush)  # type: ignore[union-attr]
    secrets += [
        pair["access_token"],
        pair["refresh_token"],
        renewed["access_token"],
        renewed["refresh_token"],
        again["access_token"],
        again["refresh_token"],
        key,
    ]

    logged = captured_logs()
    audit = repr(prediction_rows(services_of(client).settings))

    assert "/api/v1/auth/login" in logged  # the capture works: the access log is in there
    assert "/predict" in audit or "wine-quality" in audit  # and the audit row was written
    for secret in secrets:
        for piece in pieces(secret):
            assert piece not in logged, f"a secret reached the logs: {piece[:6]}..."
            assert piece not in audit, f"a secret reached the audit log: {piece[:6]}..."
