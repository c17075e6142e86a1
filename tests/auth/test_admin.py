"""Roles and user administration: who may list, disable and promote accounts, and what a disabled
account can still do (nothing)."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.auth.accounts_support import (
    AUTH,
    PASSWORD,
    USERS,
    bearer_of,
    login,
    new_email,
    user_row,
)
from tests.helpers import WINE_ROW, admin_headers, create_account, services_of

DISABLED = "this account is disabled; ask an administrator"


def account(client: TestClient, role: str = "user") -> tuple[uuid.UUID, str, dict[str, Any]]:
    """A new account: its id, email and the token pair of a real sign-in."""
    email = new_email(role)
    user_id = create_account(services_of(client).settings, email, role=role)
    return user_id, email, login(client, email)


def patch_user(
    client: TestClient, user_id: uuid.UUID, headers: dict[str, str], **body: Any
) -> httpx.Response:
    return client.patch(f"{USERS}/{user_id}", json=body, headers=headers)


def stored_role(client: TestClient, email: str) -> str:
    row = user_row(services_of(client).settings, email)
    assert row is not None
    return str(row["role"])


# --- administrators --------------------------------------------------------------------------


def test_an_admin_lists_every_account(client: TestClient) -> None:
    admin = admin_headers(client)
    emails = {account(client)[1] for _ in range(2)}

    response = client.get(USERS, headers=admin)

    assert response.status_code == 200
    listed = {user["email"]: user for user in response.json()["items"]}
    assert emails <= set(listed)
    assert len(listed) == 3  # the two users and the admin
    assert all(listed[email]["role"] == "user" for email in emails)
    assert "password" not in response.text
    assert len(client.get(USERS, params={"limit": 1}, headers=admin).json()["items"]) == 1
    assert len(client.get(USERS, params={"offset": 2}, headers=admin).json()["items"]) == 1


def test_an_admin_promotes_a_user_who_then_administers_with_the_same_token(
    client: TestClient,
) -> None:
    admin = admin_headers(client)
    user_id, email, pair = account(client)
    user = bearer_of(pair["access_token"])
    assert client.get(USERS, headers=user).status_code == 403

    promoted = patch_user(client, user_id, admin, role="admin")

    assert promoted.status_code == 200
    assert promoted.json()["role"] == "admin"
    assert stored_role(client, email) == "admin"
    assert client.get(USERS, headers=user).status_code == 200  # the role is read per request

    demoted = patch_user(client, user_id, admin, role="user")
    assert demoted.json()["role"] == "user"
    assert client.get(USERS, headers=user).status_code == 403


# --- normal users ----------------------------------------------------------------------------


def test_a_normal_user_cannot_list_disable_or_promote(client: TestClient) -> None:
    _, _, pair = account(client)
    user = bearer_of(pair["access_token"])
    other_id, other_email, _ = account(client)

    listing = client.get(USERS, headers=user)
    assert listing.status_code == 403
    assert listing.json()["detail"] == "administrators only"
    assert patch_user(client, other_id, user, disabled=True).status_code == 403
    assert patch_user(client, other_id, user, role="admin").status_code == 403

    row = user_row(services_of(client).settings, other_email)
    assert row is not None and (row["role"], row["disabled"]) == ("user", False)
    login(client, other_email)


def test_a_user_cannot_promote_themselves(client: TestClient) -> None:
    user_id, email, pair = account(client)
    user = bearer_of(pair["access_token"])

    response = patch_user(client, user_id, user, role="admin")

    assert response.status_code == 403
    assert response.json()["detail"] == "administrators only"
    assert stored_role(client, email) == "user"
    assert client.get(f"{AUTH}/me", headers=user).json()["role"] == "user"
    assert client.get(USERS, headers=user).status_code == 403


def test_a_user_cannot_promote_themselves_with_an_api_key(client: TestClient) -> None:
    user_id, email, pair = account(client)
    created = client.post(
        "/api/v1/api-keys",
        json={"name": "everything", "scopes": ["predict", "read", "manage"]},
        headers=bearer_of(pair["access_token"]),
    )
    assert created.status_code == 201, created.text

    response = patch_user(client, user_id, {"X-API-Key": created.json()["key"]}, role="admin")

    assert response.status_code == 403
    assert stored_role(client, email) == "user"


def test_anonymous_callers_are_asked_to_sign_in(client: TestClient) -> None:
    user_id, _, _ = account(client)
    for response in (client.get(USERS), client.patch(f"{USERS}/{user_id}", json={"role": "admin"})):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    "body",
    [
        {"role": "admin", "email": "new@example.com"},
        {"disabled": True, "password_hash": "$argon2id$forged"},
        {"role": "root"},
        {"disabled": "sometimes"},
    ],
    ids=["extra-email", "extra-password-hash", "unknown-role", "not-a-boolean"],
)
def test_an_update_with_unknown_fields_or_values_is_refused_and_changes_nothing(
    client: TestClient, body: dict[str, Any]
) -> None:
    admin = admin_headers(client)
    user_id, email, _ = account(client)

    response = patch_user(client, user_id, admin, **body)

    assert response.status_code == 422
    row = user_row(services_of(client).settings, email)
    assert row is not None
    assert (row["role"], row["disabled"]) == ("user", False)
    assert row["password_hash"].startswith("$argon2id$") and "forged" not in row["password_hash"]
    login(client, email)


def test_updating_an_unknown_user_is_not_found(client: TestClient) -> None:
    missing = uuid.uuid4()
    response = patch_user(client, missing, admin_headers(client), disabled=True)
    assert response.status_code == 404
    assert str(missing) in response.json()["detail"]


# --- disabled accounts -----------------------------------------------------------------------


def assert_disabled(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["detail"] == DISABLED


def test_a_disabled_user_loses_every_credential_and_enabling_revives_only_keys(
    client: TestClient,
) -> None:
    admin = admin_headers(client)
    user_id, email, pair = account(client)
    user = bearer_of(pair["access_token"])
    created = client.post("/api/v1/api-keys", json={"name": "notebook"}, headers=user)
    assert created.status_code == 201, created.text
    key = {"X-API-Key": created.json()["key"]}
    assert client.post("/predict", json=WINE_ROW, headers=key).status_code == 200

    disabled = patch_user(client, user_id, admin, disabled=True)
    assert disabled.status_code == 200
    assert disabled.json()["disabled"] is True

    assert_disabled(client.get(f"{AUTH}/me", headers=user))
    assert_disabled(client.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]}))
    assert_disabled(client.get(f"{AUTH}/me", headers=key))
    # The key is refused, not quietly served as an anonymous caller.
    assert_disabled(client.post("/predict", json=WINE_ROW, headers=key))
    assert_disabled(client.post(f"{AUTH}/login", json={"email": email, "password": PASSWORD}))
    # A wrong password still says only that, so nobody learns the account's state by guessing.
    wrong = client.post(f"{AUTH}/login", json={"email": email, "password": "not the password"})
    assert wrong.status_code == 401

    assert patch_user(client, user_id, admin, disabled=False).status_code == 200
    # Sessions from before the account was disabled stay ended; API keys were only paused.
    assert client.get(f"{AUTH}/me", headers=user).status_code == 401
    stale = client.post(f"{AUTH}/refresh", json={"refresh_token": pair["refresh_token"]})
    assert stale.status_code == 401
    assert "disabled" in stale.json()["detail"]
    assert client.get(f"{AUTH}/me", headers=key).status_code == 200
    fresh = login(client, email)
    assert client.get(f"{AUTH}/me", headers=bearer_of(fresh["access_token"])).status_code == 200


def test_a_disabled_admin_can_no_longer_administer(client: TestClient) -> None:
    other_admin_id, _, pair = account(client, role="admin")
    other_admin = bearer_of(pair["access_token"])
    assert client.get(USERS, headers=other_admin).status_code == 200

    assert (
        patch_user(client, other_admin_id, admin_headers(client), disabled=True).status_code == 200
    )

    assert_disabled(client.get(USERS, headers=other_admin))
