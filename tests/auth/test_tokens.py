"""JWT access and refresh tokens: lifetimes, rotation, reuse detection, logout, and every way a
forged or misused token must be refused."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.settings import Settings
from tests.auth.accounts_support import AUTH, bearer_of, login, started
from tests.helpers import create_account

SECRET = "s3cret-for-the-token-tests-" + "x" * 40  # 64+ bytes: no key-length warning
OTHER_SECRET = "an-entirely-different-secret-" + "y" * 40
ISSUER, AUDIENCE = "modelport", "modelport-api"  # the defaults
EMAIL = "tokens@example.com"
DROP = object()  # a claim value meaning "leave this claim out"


@pytest.fixture
def app_client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    with started(make_settings(jwt_secret=SECRET)) as client:
        yield client


@pytest.fixture
def user_id(app_client: TestClient, make_settings: Callable[..., Settings]) -> uuid.UUID:
    return create_account(make_settings(), EMAIL)


def me(client: TestClient, access_token: str) -> httpx.Response:
    return client.get(f"{AUTH}/me", headers=bearer_of(access_token))


def refresh(client: TestClient, refresh_token: str) -> httpx.Response:
    return client.post(f"{AUTH}/refresh", json={"refresh_token": refresh_token})


def claims(user_id: uuid.UUID, **changes: Any) -> dict[str, Any]:
    """Claims exactly like the server's access tokens, with ``changes`` applied."""
    now = int(time.time())
    payload: dict[str, Any] = {
        "sub": str(user_id),
        "jti": str(uuid.uuid4()),
        "typ": "access",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "fam": str(uuid.uuid4()),  # the session; no refresh token on record: not signed out
        "gen": 0,
    }
    payload.update(changes)
    return {name: value for name, value in payload.items() if value is not DROP}


def at(offset: int) -> int:
    """Seconds since the epoch, ``offset`` seconds from now."""
    return int(time.time()) + offset


def signed(payload: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(payload, key, algorithm=algorithm)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled without PyJWT, so any header (``alg: none``, RS256) can be sent."""
    parts = [json.dumps(header).encode(), json.dumps(payload).encode()]
    return ".".join([*(b64(part) for part in parts), b64(signature)])


def assert_refused(response: httpx.Response, token: str, *words: str) -> None:
    """401 asking for Bearer credentials, saying why, and quoting no part of the token."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    detail = response.json()["detail"]
    for word in words:
        assert word in detail, detail
    for part in token.split("."):
        if len(part) >= 8:
            assert part not in response.text


def test_the_forging_helpers_make_tokens_the_server_accepts(
    app_client: TestClient, user_id: uuid.UUID
) -> None:
    """The control for every refusal below: only the one thing each case changes is wrong."""
    response = me(app_client, signed(claims(user_id)))
    assert response.status_code == 200
    assert response.json()["email"] == EMAIL


FORGERIES: dict[str, tuple[Callable[[uuid.UUID], str], tuple[str, ...]]] = {
    "alg-none": (lambda u: hand_made({"alg": "none", "typ": "JWT"}, claims(u)), ("algorithm",)),
    "alg-None": (lambda u: hand_made({"alg": "None", "typ": "JWT"}, claims(u)), ("algorithm",)),
    "no-alg": (lambda u: hand_made({"typ": "JWT"}, claims(u)), ("algorithm",)),
    "wrong-secret": (lambda u: signed(claims(u), OTHER_SECRET), ("signature",)),
    "signature-stripped": (lambda u: signed(claims(u)).rsplit(".", 1)[0] + ".", ("signature",)),
    "rs256": (
        lambda u: hand_made({"alg": "RS256", "typ": "JWT"}, claims(u), os.urandom(256)),
        ("algorithm",),
    ),
    "hs384-right-secret": (lambda u: signed(claims(u), algorithm="HS384"), ("algorithm",)),
    "hs512-right-secret": (lambda u: signed(claims(u), algorithm="HS512"), ("algorithm",)),
    "expired": (
        lambda u: signed(claims(u, iat=at(-3600), nbf=at(-3600), exp=at(-120))),
        ("expired",),
    ),
    "not-yet-valid": (lambda u: signed(claims(u, nbf=at(600))), ("not valid yet",)),
    "no-audience": (lambda u: signed(claims(u, aud=DROP)), ("aud",)),
    "wrong-audience": (lambda u: signed(claims(u, aud="another-service")), ("audience",)),
    "other-audiences": (lambda u: signed(claims(u, aud=["a", "b"])), ("audience",)),
    "no-issuer": (lambda u: signed(claims(u, iss=DROP)), ("iss",)),
    "wrong-issuer": (lambda u: signed(claims(u, iss="someone-else")), ("issuer",)),
    "no-expiry": (lambda u: signed(claims(u, exp=DROP)), ("exp",)),
    "no-type": (lambda u: signed(claims(u, typ=DROP)), ("typ",)),
    "refresh-type": (lambda u: signed(claims(u, typ="refresh")), ("access token",)),
    "subject-not-an-id": (lambda u: signed(claims(u, sub="admin")), ("malformed",)),
    "no-session": (lambda u: signed(claims(u, fam=DROP)), ("no session",)),
    "no-generation": (lambda u: signed(claims(u, gen=DROP)), ("no session",)),
    "session-not-an-id": (lambda u: signed(claims(u, fam="mine")), ("malformed",)),
    "generation-not-a-number": (lambda u: signed(claims(u, gen="0")), ("malformed",)),
    "later-generation": (lambda u: signed(claims(u, gen=1)), ("disabled",)),
    "garbage": (lambda u: "this-is-not-a-token", ("malformed",)),
    "three-garbage-parts": (lambda u: "aaaaaaaaaa.bbbbbbbbbb.cccccccccc", ("malformed",)),
}


@pytest.mark.parametrize("case", list(FORGERIES))
def test_a_forged_or_broken_access_token_is_refused_with_a_reason(
    app_client: TestClient, user_id: uuid.UUID, case: str
) -> None:
    make, words = FORGERIES[case]
    token = make(user_id)

    response = me(app_client, token)

    assert_refused(response, token, "access token rejected", *words)


def test_a_token_for_an_account_that_does_not_exist_is_refused(app_client: TestClient) -> None:
    token = signed(claims(uuid.uuid4()))
    assert_refused(me(app_client, token), token, "no longer exists")


# --- lifetimes -------------------------------------------------------------------------------


def decoded(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = jwt.decode(
        token, SECRET, algorithms=["HS256"], audience=AUDIENCE, issuer=ISSUER
    )
    return payload


def test_access_tokens_last_15_minutes_and_refresh_tokens_7_days_by_default(
    app_client: TestClient, user_id: uuid.UUID
) -> None:
    pair = login(app_client, EMAIL)

    access, refresh_claims = decoded(pair["access_token"]), decoded(pair["refresh_token"])
    assert jwt.get_unverified_header(pair["access_token"])["alg"] == "HS256"
    assert access["exp"] - access["iat"] == 15 * 60 == pair["expires_in"]
    assert refresh_claims["exp"] - refresh_claims["iat"] == 7 * 24 * 3600
    assert access["sub"] == refresh_claims["sub"] == str(user_id)
    assert (access["typ"], refresh_claims["typ"]) == ("access", "refresh")


def test_token_lifetimes_follow_the_settings(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(jwt_secret=SECRET, access_token_minutes=5, refresh_token_days=1)
    create_account(settings, EMAIL)
    with started(settings) as client:
        pair = login(client, EMAIL)
        renewed = refresh(client, pair["refresh_token"]).json()

    for tokens in (pair, renewed):
        assert tokens["expires_in"] == 300
        access = decoded(tokens["access_token"])
        assert access["exp"] - access["iat"] == 300
        refresh_claims = decoded(tokens["refresh_token"])
        assert refresh_claims["exp"] - refresh_claims["iat"] == 24 * 3600


# --- refresh rotation ------------------------------------------------------------------------


def test_each_refresh_answers_a_new_pair_that_works(
    app_client: TestClient, user_id: uuid.UUID
) -> None:
    first = login(app_client, EMAIL)

    second = refresh(app_client, first["refresh_token"])
    assert second.status_code == 200, second.text
    assert second.headers["cache-control"] == "no-store"
    second_pair = second.json()
    assert second_pair["refresh_token"] != first["refresh_token"]
    assert second_pair["access_token"] != first["access_token"]
    assert me(app_client, second_pair["access_token"]).json()["id"] == str(user_id)

    third = refresh(app_client, second_pair["refresh_token"])
    assert third.status_code == 200, third.text
    assert me(app_client, third.json()["access_token"]).status_code == 200


def test_a_refresh_token_presented_twice_signs_out_its_whole_family(
    app_client: TestClient, user_id: uuid.UUID
) -> None:
    stolen = login(app_client, EMAIL)["refresh_token"]
    elsewhere = login(app_client, EMAIL)["refresh_token"]  # another device, another family
    issued_from_it = refresh(app_client, stolen).json()["refresh_token"]

    replayed = refresh(app_client, stolen)
    assert_refused(replayed, stolen, "already used")

    # The token issued from the replayed one stops working too ...
    assert_refused(refresh(app_client, issued_from_it), issued_from_it)
    # ... while the session on the other device is untouched.
    assert refresh(app_client, elsewhere).status_code == 200


def test_logout_revokes_the_refresh_token(app_client: TestClient, user_id: uuid.UUID) -> None:
    pair = login(app_client, EMAIL)
    rotated = refresh(app_client, pair["refresh_token"]).json()["refresh_token"]
    other_session = login(app_client, EMAIL)["refresh_token"]

    response = app_client.post(f"{AUTH}/logout", json={"refresh_token": rotated})
    assert response.status_code == 204

    assert_refused(refresh(app_client, rotated), rotated, "revoked")
    assert refresh(app_client, other_session).status_code == 200


def test_logout_with_a_token_the_server_never_issued_is_refused(
    app_client: TestClient, user_id: uuid.UUID
) -> None:
    token = signed(claims(user_id, typ="refresh", fam=str(uuid.uuid4())))
    response = app_client.post(f"{AUTH}/logout", json={"refresh_token": token})
    assert_refused(response, token, "refresh token rejected", "unknown")


def test_a_refresh_token_is_not_an_access_token(app_client: TestClient, user_id: uuid.UUID) -> None:
    token = login(app_client, EMAIL)["refresh_token"]
    assert_refused(me(app_client, token), token, "access token rejected", "an access token")


def test_an_access_token_is_not_a_refresh_token(app_client: TestClient, user_id: uuid.UUID) -> None:
    token = login(app_client, EMAIL)["access_token"]
    assert_refused(refresh(app_client, token), token, "refresh token rejected", "a refresh token")


def test_a_well_signed_refresh_token_the_server_never_issued_is_refused(
    app_client: TestClient, user_id: uuid.UUID
) -> None:
    token = signed(claims(user_id, typ="refresh", fam=str(uuid.uuid4())))
    assert_refused(refresh(app_client, token), token, "refresh token rejected", "unknown")


def test_a_refresh_token_cannot_be_moved_to_another_account(
    app_client: TestClient, user_id: uuid.UUID, make_settings: Callable[..., Settings]
) -> None:
    victim_id = create_account(make_settings(), "victim@example.com")
    real = decoded(login(app_client, EMAIL)["refresh_token"])
    token = signed({**real, "sub": str(victim_id)})

    assert_refused(refresh(app_client, token), token, "refresh token rejected")


REFRESH_FORGERIES: dict[str, tuple[Callable[[dict[str, Any]], str], str]] = {
    "re-signed-control": (lambda real: signed(real), ""),
    "expired": (lambda real: signed({**real, "nbf": at(-9000), "exp": at(-60)}), "expired"),
    "wrong-secret": (lambda real: signed(real, OTHER_SECRET), "signature"),
    "alg-none": (lambda real: hand_made({"alg": "none", "typ": "JWT"}, real), "algorithm"),
    "hs512-right-secret": (lambda real: signed(real, algorithm="HS512"), "algorithm"),
    "garbage": (lambda real: "not-a-refresh-token", "malformed"),
}


@pytest.mark.parametrize("case", list(REFRESH_FORGERIES))
def test_an_issued_refresh_token_tampered_with_is_refused(
    app_client: TestClient, user_id: uuid.UUID, case: str
) -> None:
    """Each case starts from the claims of a token the server issued (so it is on record)."""
    make, reason = REFRESH_FORGERIES[case]
    token = make(decoded(login(app_client, EMAIL)["refresh_token"]))

    response = refresh(app_client, token)

    if case == "re-signed-control":
        assert response.status_code == 200, response.text
    else:
        assert_refused(response, token, "refresh token rejected", reason)


def test_a_refresh_body_with_unknown_fields_is_refused(
    app_client: TestClient, user_id: uuid.UUID
) -> None:
    token = login(app_client, EMAIL)["refresh_token"]
    response = app_client.post(f"{AUTH}/refresh", json={"refresh_token": token, "user": "admin"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "user"]


# --- how the API document describes the credentials -----------------------------------------


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The OpenAPI document needs no database: the app is not started."""
    client = TestClient(create_app(Settings(var_dir=tmp_path_factory.mktemp("openapi"))))
    document: dict[str, Any] = client.get("/openapi.json").json()
    return document


def test_the_api_document_declares_both_credential_schemes(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["BearerJWT"]["type"] == "http"
    assert schemes["BearerJWT"]["scheme"] == "bearer"
    assert schemes["ApiKey"] == {
        **schemes["ApiKey"],
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/v1/auth/me"),
        ("get", "/api/v1/users"),
        ("patch", "/api/v1/users/{user_id}"),
        ("post", "/api/v1/api-keys"),
        ("get", "/api/v1/api-keys"),
        ("delete", "/api/v1/api-keys/{key_id}"),
    ],
)
def test_protected_operations_name_the_credentials_they_accept(
    spec: dict[str, Any], method: str, path: str
) -> None:
    security = spec["paths"][path][method]["security"]
    assert {"BearerJWT": []} in security
    assert {"ApiKey": []} in security


@pytest.mark.parametrize("path", ["/api/v1/auth/register", "/api/v1/auth/login"])
def test_signing_up_and_in_need_no_credentials(spec: dict[str, Any], path: str) -> None:
    assert "security" not in spec["paths"][path]["post"]
