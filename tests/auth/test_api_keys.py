"""API keys: shown once, stored as a hash, scoped, expiring, revocable (on every replica:
test_replica_changes.py)."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.builtin.wine import TrainedWine
from tests.auth.keys_support import (
    KEYS,
    PREDICTIONS,
    api_key_row,
    create_key,
    flush_key_usage,
    key_header,
    more_apps,
    set_key_expiry,
    sign_up,
)
from tests.helpers import WINE_ROW, flush_log, services_of
from tests.registry.support import shared_wine_app


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def client(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    trained_wine: TrainedWine,
) -> Iterator[TestClient]:
    """One app per backend for the module; each test signs up its own people (the slow part
    is Argon2, so starting an app per test would only add to it)."""
    yield from shared_wine_app(request, tmp_path_factory, trained_wine)


@pytest.fixture
def another_app(client: TestClient, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    with more_apps(client, tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def keyless(client: TestClient) -> dict[str, str]:
    """Someone whose key requests are all refused, so they never hold a key."""
    return sign_up(client)[1]


KEY_FORMAT = re.compile(r"^mp_[A-Za-z0-9_-]{43}$")
MODELS = "/api/v1/models"
PREDICT_PATHS = (
    "/predict",
    f"{MODELS}/wine-quality/predict",
    f"{MODELS}/wine-quality/versions/1/predict",
)


def test_a_new_key_is_shown_once_and_only_its_sha256_is_stored(client: TestClient) -> None:
    user_id, headers = sign_up(client)
    response = client.post(
        KEYS, json={"name": "notebook", "scopes": ["predict", "read"]}, headers=headers
    )
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    created = response.json()
    key = created["key"]
    assert KEY_FORMAT.match(key), key
    assert created["prefix"] == key[:10]
    assert (created["name"], created["scopes"]) == ("notebook", ["predict", "read"])

    listed = client.get(KEYS, headers=headers)
    shown = client.get(f"{KEYS}/{created['id']}", headers=headers)
    for later in (listed, shown):
        assert later.status_code == 200
        assert key[10:] not in later.text
    assert [item["prefix"] for item in listed.json()["items"]] == [created["prefix"]]
    assert "key" not in shown.json() and "key" not in listed.json()["items"][0]

    row = api_key_row(services_of(client).settings, created["id"])
    assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert row["user_id"] == user_id
    assert not [column for column, value in row.items() if key[10:] in str(value)]

    me = client.get("/api/v1/auth/me", headers=key_header(key))
    assert me.status_code == 200
    assert me.json()["id"] == str(user_id)


def test_every_key_is_different(client: TestClient) -> None:
    _, headers = sign_up(client)
    keys = {create_key(client, headers)["key"] for _ in range(5)}
    assert len(keys) == 5


@pytest.mark.parametrize("days", [1, 365])
def test_a_key_expires_after_the_days_asked_for(client: TestClient, days: int) -> None:
    _, headers = sign_up(client)
    before = datetime.now(UTC)
    created = create_key(client, headers, expires_in_days=days)
    expires_at = datetime.fromisoformat(created["expires_at"])
    assert before + timedelta(days=days) <= expires_at
    assert expires_at <= datetime.now(UTC) + timedelta(days=days)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "k", "expires_in_days": 0},
        {"name": "k", "expires_in_days": 366},
        {"name": "k", "expires_in_days": -1},
        {"name": ""},
        {"name": "k" * 101},
        {"name": "k", "scopes": []},
        {"name": "k", "scopes": ["admin"]},
        {"name": "k", "key": "mp_" + "a" * 43},  # nobody chooses their own key
    ],
    ids=[
        "0-days",
        "366-days",
        "negative-days",
        "no-name",
        "long-name",
        "no-scope",
        "bad-scope",
        "own-key",
    ],
)
def test_an_invalid_key_request_is_refused(
    client: TestClient, keyless: dict[str, str], body: dict[str, Any]
) -> None:
    response = client.post(KEYS, json=body, headers=keyless)
    assert response.status_code == 422
    assert client.get(KEYS, headers=keyless).json()["items"] == []


def test_a_predict_only_key_predicts_but_cannot_read_or_manage(client: TestClient) -> None:
    _, headers = sign_up(client)
    key = key_header(create_key(client, headers, scopes=["predict"])["key"])

    assert client.post("/predict", json=WINE_ROW, headers=key).status_code == 200
    assert client.post(f"{MODELS}/wine-quality/predict", json=WINE_ROW, headers=key).is_success
    for path in (MODELS, f"{MODELS}/wine-quality", PREDICTIONS, "/api/v1/datasets"):
        refused = client.get(path, headers=key)
        assert refused.status_code == 403, path
        assert "read" in refused.json()["detail"]
    assert client.get(KEYS, headers=key).status_code == 403
    assert client.post(KEYS, json={"name": "more"}, headers=key).status_code == 403


def test_a_read_only_key_reads_but_cannot_predict(client: TestClient) -> None:
    _, headers = sign_up(client)
    key = key_header(create_key(client, headers, scopes=["read"])["key"])

    assert client.get(MODELS, headers=key).status_code == 200
    assert client.get(PREDICTIONS, headers=key).status_code == 200
    for path in (
        "/predict",
        f"{MODELS}/wine-quality/predict",
        f"{MODELS}/wine-quality/versions/1/predict",
    ):
        refused = client.post(path, json=WINE_ROW, headers=key)
        assert refused.status_code == 403, path
        assert "predict" in refused.json()["detail"]


def test_a_key_cannot_hand_out_scopes_it_lacks(client: TestClient) -> None:
    _, headers = sign_up(client)
    manager = create_key(client, headers, scopes=["manage", "read"])
    as_manager = key_header(manager["key"])

    child = create_key(client, as_manager, scopes=["read"])
    assert child["scopes"] == ["read"]
    for scopes in (["predict"], ["read", "predict"], ["manage", "predict"]):
        refused = client.post(KEYS, json={"name": "wider", "scopes": scopes}, headers=as_manager)
        assert refused.status_code == 403, scopes
        assert "scope" in refused.json()["detail"]

    widened = client.patch(
        f"{KEYS}/{manager['id']}",
        json={"scopes": ["manage", "read", "predict"]},
        headers=as_manager,
    )
    assert widened.status_code == 403
    assert client.get(f"{KEYS}/{manager['id']}", headers=headers).json()["scopes"] == [
        "manage",
        "read",
    ]
    assert len(client.get(KEYS, headers=headers).json()["items"]) == 2


def test_narrowing_a_keys_scopes_applies_to_its_next_request(client: TestClient) -> None:
    _, headers = sign_up(client)
    created = create_key(client, headers, scopes=["predict", "read"])
    key = key_header(created["key"])
    assert client.post("/predict", json=WINE_ROW, headers=key).status_code == 200

    renamed = client.patch(
        f"{KEYS}/{created['id']}", json={"name": "reader", "scopes": ["read"]}, headers=headers
    )
    assert renamed.status_code == 200
    assert (renamed.json()["name"], renamed.json()["scopes"]) == ("reader", ["read"])
    assert client.post("/predict", json=WINE_ROW, headers=key).status_code == 403
    assert client.get(MODELS, headers=key).status_code == 200


def test_only_administrators_set_a_keys_rate_limit(client: TestClient) -> None:
    _, user = sign_up(client)
    _, admin = sign_up(client, role="admin")

    refused = client.post(KEYS, json={"name": "fast", "rate_limit_per_minute": 5000}, headers=user)
    assert refused.status_code == 403
    assert "administrators" in refused.json()["detail"]
    own = create_key(client, user)
    for value in (5000, None):
        patched = client.patch(
            f"{KEYS}/{own['id']}", json={"rate_limit_per_minute": value}, headers=user
        )
        assert patched.status_code == 403
    assert client.get(f"{KEYS}/{own['id']}", headers=user).json()["rate_limit_per_minute"] is None

    limited = create_key(client, admin, rate_limit_per_minute=5000)
    assert limited["rate_limit_per_minute"] == 5000
    patched = client.patch(
        f"{KEYS}/{limited['id']}", json={"rate_limit_per_minute": 7}, headers=admin
    )
    assert patched.json()["rate_limit_per_minute"] == 7


def test_an_administrators_key_without_manage_cannot_administer(client: TestClient) -> None:
    user_id, _ = sign_up(client)
    _, admin = sign_up(client, role="admin")
    key = key_header(create_key(client, admin, scopes=["predict", "read"])["key"])

    assert client.get("/api/v1/users", headers=key).status_code == 403
    promoted = client.patch(f"/api/v1/users/{user_id}", json={"role": "admin"}, headers=key)
    assert promoted.status_code == 403
    users = client.get("/api/v1/users", headers=admin).json()["items"]
    assert {u["id"]: u["role"] for u in users}[str(user_id)] == "user"


def test_last_use_is_remembered_and_written_off_the_request_path(
    another_app: Callable[..., TestClient],
) -> None:
    client = another_app("fresh")  # its usage writer last ran at start-up, 30 s away
    _, headers = sign_up(client)
    created = create_key(client, headers)
    assert created["last_used_at"] is None
    settings = services_of(client).settings

    before = datetime.now(UTC)
    assert client.get(MODELS, headers=key_header(created["key"])).status_code == 200
    after = datetime.now(UTC)
    assert api_key_row(settings, created["id"])["last_used_at"] is None  # nothing written yet

    flush_key_usage(client)
    shown = client.get(f"{KEYS}/{created['id']}", headers=headers).json()
    assert shown["last_used_at"] is not None
    assert before <= datetime.fromisoformat(shown["last_used_at"]) <= after


@pytest.mark.parametrize(
    ("spoil", "message"),
    [("revoke", "revoked"), ("expire", "expired")],
)
def test_a_revoked_or_expired_key_is_refused_with_the_reason(
    client: TestClient, spoil: str, message: str
) -> None:
    _, headers = sign_up(client)
    created = create_key(client, headers)
    key = key_header(created["key"])
    expiry = datetime.now(UTC) + timedelta(seconds=2)
    if spoil == "expire":  # a key about to expire (keys live whole days: set in the database)
        set_key_expiry(services_of(client).settings, created["id"], expiry)
    assert client.get(MODELS, headers=key).status_code == 200

    if spoil == "revoke":
        assert client.delete(f"{KEYS}/{created['id']}", headers=headers).status_code == 204
    else:
        time.sleep(max((expiry - datetime.now(UTC)).total_seconds(), 0) + 0.05)
    for method, path in (("GET", MODELS), ("POST", "/predict"), ("GET", "/api/v1/auth/me")):
        refused = client.request(method, path, json=WINE_ROW, headers=key)
        assert refused.status_code == 401, path
        assert message in refused.json()["detail"]
        assert refused.headers["www-authenticate"] == "Bearer"


def test_a_revoked_key_stays_listed_as_revoked(client: TestClient) -> None:
    _, headers = sign_up(client)
    created = create_key(client, headers)
    assert client.delete(f"{KEYS}/{created['id']}", headers=headers).status_code == 204
    assert client.delete(f"{KEYS}/{created['id']}", headers=headers).status_code == 204
    [listed] = client.get(KEYS, headers=headers).json()["items"]
    assert listed["id"] == created["id"]
    assert listed["revoked_at"] is not None


@pytest.mark.parametrize(
    "value",
    ["mp_" + "A" * 43, "not-a-key", "mp_short", "mp_" + "x" * 200],
    ids=["unknown", "garbage", "short", "long"],
)
def test_an_unknown_or_malformed_key_is_refused(client: TestClient, value: str) -> None:
    refused = client.get(MODELS, headers=key_header(value))
    assert refused.status_code == 401
    assert "API key rejected" in refused.json()["detail"]


def test_a_disabled_accounts_keys_stop_working(client: TestClient) -> None:
    user_id, headers = sign_up(client)
    _, admin = sign_up(client, role="admin")
    key = key_header(create_key(client, headers)["key"])
    assert client.get(MODELS, headers=key).status_code == 200

    disabled = client.patch(f"/api/v1/users/{user_id}", json={"disabled": True}, headers=admin)
    assert disabled.status_code == 200
    refused = client.get(MODELS, headers=key)
    assert refused.status_code == 403
    assert "disabled" in refused.json()["detail"]


# --- every authenticated endpoint takes either credential -----------------------------------


def _secured_operations(client: TestClient) -> set[tuple[str, str]]:
    spec = client.get("/openapi.json").json()
    return {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    }


# The account endpoints must all be in the table below; for the rest the table samples
# reading and predicting (every endpoint shares one dependency that reads the credential).
ACCOUNT_AREAS = ("/api/v1/auth", KEYS, "/api/v1/users")


# (method, path template, JSON body, success status); ids and names filled in by the test.
SECURED: list[tuple[str, str, Any, int]] = [
    ("GET", "/api/v1/auth/me", None, 200),
    ("GET", KEYS, None, 200),
    ("POST", KEYS, {"name": "made-by-test"}, 201),
    ("GET", KEYS + "/{key_id}", None, 200),
    ("PATCH", KEYS + "/{key_id}", {"name": "renamed"}, 200),
    ("DELETE", KEYS + "/{key_id}", None, 204),
    ("GET", "/api/v1/users", None, 200),
    ("PATCH", "/api/v1/users/{user_id}", {"disabled": False}, 200),
    ("POST", "/predict", WINE_ROW, 200),
    ("POST", MODELS + "/{name}/predict", WINE_ROW, 200),
    ("POST", MODELS + "/{name}/versions/{version}/predict", WINE_ROW, 200),
    ("GET", MODELS, None, 200),
    ("GET", MODELS + "/{name}", None, 200),
    ("GET", MODELS + "/{name}/versions/{version}", None, 200),
    ("GET", "/api/v1/datasets", None, 200),
    ("GET", "/api/v1/datasets/{name}", None, 200),
    ("GET", "/api/v1/datasets/{name}/rows", None, 200),
    ("GET", PREDICTIONS, None, 200),
    ("GET", PREDICTIONS + "/{prediction_id}", None, 200),
]


def test_the_table_covers_every_secured_account_endpoint(client: TestClient) -> None:
    secured = _secured_operations(client)
    table = {(method, path) for method, path, _, _ in SECURED}
    assert table <= secured
    assert {(m, p) for m, p in secured if p.startswith(ACCOUNT_AREAS)} <= table


def _ids(client: TestClient, headers: dict[str, str]) -> dict[str, str]:
    """Real values for every path parameter, owned by the administrator behind ``headers``."""
    user_id, _ = sign_up(client)
    spare = create_key(client, headers, name="spare")
    made = client.post("/predict", json=WINE_ROW, headers=headers)
    flush_log(client)
    [record] = [
        item
        for item in client.get(PREDICTIONS, headers=headers).json()["items"]
        if item["request_id"] == made.headers["x-request-id"]
    ]
    dataset = client.get("/api/v1/datasets", headers=headers).json()["items"][0]["name"]
    names = {"name": "wine-quality", "version": "1", "key_id": spare["id"]}
    names |= {"user_id": str(user_id), "prediction_id": record["id"]}
    return names | {"dataset": dataset}


@pytest.mark.parametrize("credential", ["bearer", "api-key"])
def test_every_secured_endpoint_accepts_a_bearer_token_or_an_api_key(
    client: TestClient, credential: str
) -> None:
    _, admin = sign_up(client, role="admin")
    headers = admin
    if credential == "api-key":
        headers = key_header(create_key(client, admin, scopes=["predict", "read", "manage"])["key"])
    ids = _ids(client, admin)
    for method, template, body, status in SECURED:
        path = template.format(**ids)
        if template.startswith("/api/v1/datasets/"):
            path = template.replace("{name}", ids["dataset"])
        response = client.request(method, path, json=body, headers=headers)
        assert response.status_code == status, (method, path, response.text)


@pytest.mark.parametrize(
    "headers",
    [{"Authorization": "Bearer not.a.jwt"}, key_header("mp_" + "B" * 43)],
    ids=["bad-bearer", "unknown-key"],
)
def test_every_secured_endpoint_refuses_a_bad_credential(
    client: TestClient, headers: dict[str, str]
) -> None:
    for method, template in sorted(_secured_operations(client)):
        path = re.sub(r"\{\w+_id\}", str(uuid.uuid4()), template)
        path = path.replace("{name}", "wine-quality").replace("{version}", "1")
        path = re.sub(r"\{\w+\}", "x", path)
        response = client.request(method, path, json=WINE_ROW, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
