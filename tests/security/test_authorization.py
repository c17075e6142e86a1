"""Authorization as an attacker sees it: scopes, names, deleted records, sessions, operator
data and anonymous uploads, against the real app on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from modelport.db.engine import create_engine
from modelport.images.tables import ImagePrediction
from modelport.settings import Settings
from tests.auth.accounts_support import AUTH, bearer_of, from_address, login
from tests.auth.keys_support import (
    KEYS,
    create_key,
    key_header,
    register_private_model,
    sign_up,
)
from tests.helpers import (
    OPERATOR,
    WINE_ROW,
    admin_headers,
    create_account,
    register_trained,
    run,
    services_of,
    wait_until_ready,
)
from tests.images.support import PREDICTIONS as IMAGES
from tests.images.support import picture, upload

MODELS = "/api/v1/models"
USERS = "/api/v1/users"


# --- scopes on every route ------------------------------------------------------------------

# Secured operations that predict (a 'predict' key may call them) and the operator views.
PREDICTING = {
    ("POST", "/predict"),
    ("POST", f"{MODELS}/{{name}}/predict"),
    ("POST", f"{MODELS}/{{name}}/versions/{{version}}/predict"),
    ("POST", "/v2/models/{name}/infer"),
    ("POST", "/v2/models/{name}/versions/{version}/infer"),
    ("POST", IMAGES),
}
OPERATOR_VIEWS = {("GET", "/health"), ("GET", "/metrics")}


def _secured(client: TestClient) -> set[tuple[str, str]]:
    spec = client.get("/openapi.json").json()
    return {
        (method.upper(), path)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if operation.get("security")
    }


def _fill(path: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)


def _path_values(client: TestClient, admin: dict[str, str]) -> dict[str, str]:
    """Real ids for every path parameter, all visible to the administrator behind ``admin``."""
    user_id, _ = sign_up(client)
    image = upload(client, picture(11), headers=admin)
    return {
        "name": "wine-quality",
        "version": "1",
        "alias": "production",
        "key_id": create_key(client, admin, name="spare")["id"],
        "user_id": str(user_id),
        "image_id": image["id"],
        "job_id": image["job_id"],
        "prediction_id": str(uuid.uuid4()),
    }


def test_keys_without_manage_are_refused_by_every_write_and_without_read_by_every_read(
    client: TestClient,
) -> None:
    """An administrator's keys, so only the scope can stand in the way: 'read'+'predict' may
    change nothing (image corrections and deletions included), 'predict' alone may read
    nothing (job states and image results included)."""
    admin = admin_headers(client)
    values = _path_values(client, admin)
    no_manage = key_header(create_key(client, admin, scopes=["read", "predict"])["key"])
    no_read = key_header(create_key(client, admin, scopes=["predict"])["key"])
    secured = _secured(client) - OPERATOR_VIEWS
    writes = {(m, p) for m, p in secured if m != "GET"} - PREDICTING
    reads = {(m, p) for m, p in secured if m == "GET"}
    assert {("PUT", f"{IMAGES}/{{image_id}}"), ("DELETE", f"{IMAGES}/{{image_id}}")} <= writes
    assert {("GET", f"{IMAGES}/{{image_id}}"), ("GET", "/api/v1/jobs/{job_id}")} <= reads

    body = {"label": "forged"}  # valid where a body is read (image corrections)
    answers = {
        (method, path): client.request(
            method, _fill(path, values), headers=headers, json=body
        ).status_code
        for headers, operations in ((no_manage, writes), (no_read, reads))
        for method, path in sorted(operations)
    }

    assert {operation: code for operation, code in answers.items() if code != 403} == {}
    image = client.get(f"{IMAGES}/{values['image_id']}", headers=admin)
    assert image.status_code == 200 and image.json()["correction"] is None
    assert client.post("/predict", json=WINE_ROW).status_code == 200


def test_read_and_predict_keys_cannot_correct_or_delete_their_owner_s_image(
    client: TestClient,
) -> None:
    _, owner = sign_up(client)
    image_id = upload(client, picture(12), headers=owner)["id"]
    url = f"{IMAGES}/{image_id}"

    for scopes in (["read"], ["predict"], ["read", "predict"]):
        key = key_header(create_key(client, owner, scopes=scopes)["key"])
        corrected = client.put(url, json={"label": "forged"}, headers=key)
        assert corrected.status_code == 403, (scopes, corrected.text)
        assert "manage" in corrected.json()["detail"]
        assert client.delete(url, headers=key).status_code == 403

    assert client.get(url, headers=owner).json()["correction"] is None
    manager = key_header(create_key(client, owner, scopes=["manage"])["key"])
    assert client.put(url, json={"label": "tabby"}, headers=manager).status_code == 200
    assert client.delete(url, headers=manager).status_code == 204


# --- keys made with keys ----------------------------------------------------------------------


def _expiry(key: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(key["expires_at"])


def test_a_manage_key_cannot_mint_a_key_that_outlives_it(client: TestClient) -> None:
    _, user = sign_up(client)
    parent = create_key(client, user, scopes=["manage", "read"], expires_in_days=2)
    manage = key_header(parent["key"])

    longer = client.post(
        KEYS, json={"name": "x", "scopes": ["read"], "expires_in_days": 30}, headers=manage
    )
    assert longer.status_code == 403
    assert "outlive" in longer.json()["detail"]

    # Asking for no particular lifetime gets at most the parent's; asking for less is granted.
    default = create_key(client, manage, scopes=["read"])
    assert _expiry(default) <= _expiry(parent)
    shorter = create_key(client, manage, scopes=["read"], expires_in_days=1)
    assert _expiry(shorter) < _expiry(parent)
    # A person signed in is not a key: the usual lifetimes apply.
    assert _expiry(create_key(client, user, expires_in_days=30)) > _expiry(parent)


def test_a_manage_key_cannot_mint_a_key_faster_or_broader_than_itself(client: TestClient) -> None:
    admin = admin_headers(client)
    slow = key_header(
        create_key(client, admin, scopes=["manage", "read"], rate_limit_per_minute=5)["key"]
    )

    faster = client.post(
        KEYS, json={"name": "x", "scopes": ["read"], "rate_limit_per_minute": 1000}, headers=slow
    )
    assert faster.status_code == 403
    assert "5 requests per minute" in faster.json()["detail"]
    broader = client.post(KEYS, json={"name": "x", "scopes": ["predict"]}, headers=slow)
    assert broader.status_code == 403

    child = create_key(client, slow, scopes=["read"])
    assert child["rate_limit_per_minute"] == 5
    answered = client.get(MODELS, headers=key_header(child["key"]))
    assert answered.headers["x-ratelimit-limit"] == "5"


def test_a_manage_key_cannot_widen_a_key_that_outlives_it(client: TestClient) -> None:
    _, user = sign_up(client)
    long_lived = create_key(client, user, scopes=["read"], expires_in_days=365)
    short = key_header(
        create_key(client, user, scopes=["manage", "read", "predict"], expires_in_days=1)["key"]
    )
    url = f"{KEYS}/{long_lived['id']}"

    widened = client.patch(url, json={"scopes": ["read", "manage"]}, headers=short)
    assert widened.status_code == 403
    assert "widen" in widened.json()["detail"]
    assert client.get(url, headers=user).json()["scopes"] == ["read"]
    # Narrowing or renaming it is still fine.
    assert client.patch(url, json={"name": "renamed"}, headers=short).status_code == 200
    assert client.patch(url, json={"scopes": ["read", "manage"]}, headers=user).status_code == 200


# --- names are matched in full ----------------------------------------------------------------


def _model_names(client: TestClient, headers: dict[str, str]) -> list[str]:
    return [m["name"] for m in client.get(MODELS, headers=headers).json()["items"]]


def test_a_name_with_a_trailing_newline_is_refused_everywhere(client: TestClient) -> None:
    _, user = sign_up(client)
    admin = admin_headers(client)

    twin = client.post(MODELS, json={"name": "wine-quality\n", "task": "regression"}, headers=user)
    alias = client.put(
        f"{MODELS}/wine-quality/aliases/production%0A", json={"version": 1}, headers=admin
    )
    dataset = client.post(
        "/api/v1/datasets",
        data={"name": "wines\n"},
        files={"file": ("wines.csv", b"a,b\n1,2\n3,4\n", "text/csv")},
        headers=user,
    )
    trained = client.post(
        f"{MODELS}/mine%0A/train",
        json={
            "algorithm": "linear_regression",
            "X": [[float(i)] for i in range(10)],
            "y": [float(i) for i in range(10)],
        },
        headers=user,
    )

    for response in (twin, alias, dataset, trained):
        assert response.status_code == 422, response.text
        assert "is not allowed" in response.json()["detail"][0]["msg"]
    assert [n for n in _model_names(client, admin) if "\n" in n] == []
    assert client.get(f"{MODELS}/wine-quality", headers=admin).json()["aliases"] == {
        "production": 1
    }
    datasets = client.get("/api/v1/datasets", headers=admin).json()["items"]
    assert [d["name"] for d in datasets if "\n" in d["name"]] == []
    # Looking a version up by name is strict too.
    assert client.get("/v2/models/wine-quality/versions/1").status_code == 200
    assert client.get("/v2/models/wine-quality/versions/1%0A").status_code == 404


# --- deleted versions are for administrators -------------------------------------------------


def test_deleted_versions_are_shown_only_to_administrators_who_ask(
    client: TestClient, trained_wine: TrainedWine
) -> None:
    register_trained(services_of(client).settings, trained_wine)  # version 2, now production
    admin = admin_headers(client)
    assert client.delete(f"{MODELS}/wine-quality/versions/1", headers=admin).status_code == 204
    _, user = sign_up(client)
    asking = {"include_deleted": "true"}

    for headers in ({}, user):  # anonymous, and a signed-in non-administrator
        version = client.get(f"{MODELS}/wine-quality/versions/1", params=asking, headers=headers)
        assert version.status_code == 404, version.text
        for params in ({}, asking):
            detail = client.get(f"{MODELS}/wine-quality", params=params, headers=headers).json()
            assert [v["version"] for v in detail["versions"]] == [2]

    assert [
        v["version"] for v in client.get(f"{MODELS}/wine-quality", headers=admin).json()["versions"]
    ] == [2]
    shown = client.get(f"{MODELS}/wine-quality", params=asking, headers=admin).json()
    assert [v["version"] for v in shown["versions"]] == [1, 2]
    deleted = client.get(f"{MODELS}/wine-quality/versions/1", params=asking, headers=admin)
    assert deleted.status_code == 200
    assert deleted.json()["deleted_at"] is not None


# --- sessions end when they are ended ----------------------------------------------------------


def _me(client: TestClient, pair: dict[str, Any]) -> httpx.Response:
    return client.get(f"{AUTH}/me", headers=bearer_of(pair["access_token"]))


def _account(client: TestClient) -> tuple[uuid.UUID, str]:
    email = f"session-{uuid.uuid4().hex[:8]}@example.com"
    return create_account(services_of(client).settings, email), email


def test_signing_out_ends_that_session_s_access_token_at_once(client: TestClient) -> None:
    _, email = _account(client)
    session, other = login(client, email), login(client, email)
    assert _me(client, session).status_code == 200

    out = client.post(f"{AUTH}/logout", json={"refresh_token": session["refresh_token"]})
    assert out.status_code == 204

    refused = _me(client, session)
    assert refused.status_code == 401
    assert "signed out" in refused.json()["detail"]
    assert _me(client, other).status_code == 200  # another device's session goes on


def test_reusing_a_refresh_token_ends_the_access_tokens_of_its_session(client: TestClient) -> None:
    _, email = _account(client)
    first, other = login(client, email), login(client, email)
    renewed = client.post(f"{AUTH}/refresh", json={"refresh_token": first["refresh_token"]}).json()
    assert _me(client, renewed).status_code == 200

    replay = client.post(f"{AUTH}/refresh", json={"refresh_token": first["refresh_token"]})
    assert replay.status_code == 401

    assert _me(client, renewed).status_code == 401  # the thief's fresh token is dead ...
    assert _me(client, first).status_code == 401  # ... and so is the original
    assert _me(client, other).status_code == 200


def test_re_enabling_an_account_does_not_revive_its_old_sessions(client: TestClient) -> None:
    user_id, email = _account(client)
    admin = admin_headers(client)
    before = login(client, email)

    for disabled in (True, False):
        changed = client.patch(f"{USERS}/{user_id}", json={"disabled": disabled}, headers=admin)
        assert changed.status_code == 200

    old_access = _me(client, before)
    assert old_access.status_code == 401
    assert "disabled" in old_access.json()["detail"]
    old_refresh = client.post(f"{AUTH}/refresh", json={"refresh_token": before["refresh_token"]})
    assert old_refresh.status_code == 401
    assert _me(client, login(client, email)).status_code == 200


# --- operator data: health details and metrics -------------------------------------------------


@pytest.fixture
def private_model(client: TestClient, trained_wine: TrainedWine) -> str:
    """A private model, loaded and predicted with by its owner (so metrics carry its name)."""
    owner_id, owner = sign_up(client)
    name = f"secret-{uuid.uuid4().hex[:8]}"
    register_private_model(services_of(client).settings, trained_wine, name, owner_id)
    assert client.post(f"{MODELS}/{name}/predict", json=WINE_ROW, headers=owner).status_code == 200
    return name


def test_model_names_reach_operators_only(client: TestClient, private_model: str) -> None:
    _, user = sign_up(client)
    reader = key_header(create_key(client, user, scopes=["read"])["key"])
    anonymous: dict[str, str] = {}

    for headers in (anonymous, user, reader):
        health = client.get("/health", headers=headers)
        assert health.status_code == 200
        assert private_model not in health.text
        assert all(c["detail"] == {} for c in health.json()["components"].values())
    assert client.get("/metrics").status_code == 401
    for headers in (user, reader):
        assert client.get("/metrics", headers=headers).status_code == 403
    wrong = client.get("/metrics", headers={"Authorization": "Bearer not-the-metrics-token"})
    assert wrong.status_code == 401
    assert "MODELPORT_METRICS_TOKEN" in wrong.json()["detail"]

    for headers in (OPERATOR, admin_headers(client)):
        assert private_model in client.get("/metrics", headers=headers).text
        loaded = client.get("/health", headers=headers).json()["components"]["models"]
        assert f"{private_model}:1" in loaded["detail"]["loaded"]


def test_probes_answer_anyone_without_details(client: TestClient, private_model: str) -> None:
    for path in ("/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert private_model not in response.text
        assert "wine-quality" not in response.text
    ready = client.get("/health/ready").json()
    assert ready["status"] == "ok"
    assert {name: c["status"] for name, c in ready["components"].items()} == {
        "database": "up",
        "models": "up",
        "prediction_log": "up",
        "artifact_store": "up",
        "inference": "up",
    }


@pytest.fixture
def tokenless_client(settings: Settings, trained_wine: TrainedWine) -> Iterator[TestClient]:
    """An app with no MODELPORT_METRICS_TOKEN set."""
    bare = settings.model_copy(update={"metrics_token": None})
    register_trained(bare, trained_wine)
    with TestClient(create_app(bare)) as test_client:
        wait_until_ready(test_client)
        yield test_client


def test_without_a_metrics_token_only_administrators_read_metrics(
    tokenless_client: TestClient,
) -> None:
    client = tokenless_client
    assert client.get("/metrics", headers=OPERATOR).status_code == 401  # no token to match
    assert client.get("/metrics", headers=sign_up(client)[1]).status_code == 403
    admin = admin_headers(client)
    assert client.get("/metrics", headers=admin).status_code == 200
    admin_reader = key_header(create_key(client, admin, scopes=["read"])["key"])
    assert client.get("/metrics", headers=admin_reader).status_code == 200
    assert client.get("/health/ready").status_code == 200


# --- anonymous image uploads ----------------------------------------------------------------


def _stored_token_hash(client: TestClient, image_id: str) -> str | None:
    async def read() -> str | None:
        engine = create_engine(services_of(client).settings.database_url)
        try:
            async with engine.connect() as connection:
                return await connection.scalar(
                    select(ImagePrediction.delete_token_sha256).where(
                        ImagePrediction.id == uuid.UUID(image_id)
                    )
                )
        finally:
            await engine.dispose()

    result: str | None = run(read())
    return result


def test_an_anonymous_upload_is_read_by_id_but_changed_only_with_its_token(
    client: TestClient,
) -> None:
    accepted = client.post(IMAGES, files={"file": ("mine.png", picture(21), "image/png")})
    assert accepted.status_code == 201
    assert accepted.headers["cache-control"] == "no-store"
    token = accepted.json()["delete_token"]
    url = f"{IMAGES}/{accepted.json()['id']}"
    stranger = from_address(client, "203.0.113.9")
    _, signed_in = sign_up(client)

    # The id is enough to read it, from anywhere; the token is never shown again.
    read = stranger.get(url)
    assert read.status_code == 200
    assert "delete_token" not in read.json()
    for headers in ({}, signed_in, {"X-Delete-Token": "guessed"}):
        corrected = stranger.put(url, json={"label": "forged"}, headers=headers)
        assert corrected.status_code == 403, corrected.text
        assert stranger.delete(url, headers=headers).status_code == 403
    assert "X-Delete-Token" in stranger.delete(url).json()["detail"]
    assert client.get(url).json()["correction"] is None

    # Only the token's SHA-256 is kept.
    assert (
        _stored_token_hash(client, accepted.json()["id"])
        == hashlib.sha256(token.encode()).hexdigest()
    )

    holder = {"X-Delete-Token": token}
    corrected = stranger.put(url, json={"label": "tabby"}, headers=holder)
    assert corrected.status_code == 200
    assert corrected.json()["correction"]["label"] == "tabby"
    assert stranger.delete(url, headers=holder).status_code == 204
    assert client.get(url).status_code == 404


def test_an_administrator_may_delete_an_anonymous_upload(client: TestClient) -> None:
    accepted = upload(client, picture(22), "theirs.png")
    url = f"{IMAGES}/{accepted['id']}"
    admin = admin_headers(client)
    admin_reader = key_header(create_key(client, admin, scopes=["read"])["key"])

    assert client.delete(url, headers=admin_reader).status_code == 403
    assert client.delete(url, headers=admin).status_code == 204
    assert client.get(url).status_code == 404


def test_signed_in_uploads_get_no_delete_token(client: TestClient) -> None:
    _, owner = sign_up(client)
    accepted = upload(client, picture(23), headers=owner)
    assert accepted["delete_token"] is None
    assert _stored_token_hash(client, accepted["id"]) is None
