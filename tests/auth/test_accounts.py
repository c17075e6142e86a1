"""Registration, sign-in, /me, the password policy, email rules and failed-login throttling."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from modelport.settings import Settings
from tests.auth.accounts_support import (
    AUTH,
    PASSWORD,
    bearer_of,
    from_address,
    login,
    new_email,
    started,
    user_count,
    user_row,
)
from tests.helpers import create_account, services_of

FAILURES_ALLOWED = 3  # per account from one address
ADDRESS_FAILURES_ALLOWED = 5  # per address across accounts
ACCOUNT_FAILURES_ALLOWED = 6  # per account from every address together
FULLWIDTH_EXAMPLE = "\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25"  # "EXAMPLE", full-width


def register(client: TestClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return client.post(f"{AUTH}/register", json={"email": email, "password": password})


@pytest.fixture
def app_client(settings: Settings) -> Iterator[TestClient]:
    with started(settings) as client:
        yield client


@pytest.fixture
def throttled_client(make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """Failed sign-ins allowed in an hour: 3 per account from one address, 5 per address,
    6 per account from everywhere."""
    settings = make_settings(
        login_failures_allowed=FAILURES_ALLOWED,
        login_address_failures_allowed=ADDRESS_FAILURES_ALLOWED,
        login_account_failures_allowed=ACCOUNT_FAILURES_ALLOWED,
        login_window_seconds=3600,
        login_account_window_seconds=3600,
    )
    with started(settings) as client:
        yield client


# --- registration ----------------------------------------------------------------------------


def test_a_registered_user_can_sign_in_and_see_their_account(app_client: TestClient) -> None:
    created = register(app_client, "winemaker@example.com")
    assert created.status_code == 201, created.text
    account = created.json()
    assert account["email"] == "winemaker@example.com"
    assert (account["role"], account["disabled"]) == ("user", False)
    assert "password" not in created.text  # neither the password nor its hash is sent back

    pair = login(app_client, "winemaker@example.com")
    assert pair["token_type"] == "bearer"
    assert pair["expires_in"] == 15 * 60
    me = app_client.get(f"{AUTH}/me", headers=bearer_of(pair["access_token"]))
    assert me.status_code == 200
    assert me.json()["id"] == account["id"]
    assert me.json()["email"] == "winemaker@example.com"


def test_the_stored_password_is_an_argon2id_hash_with_its_own_salt(
    app_client: TestClient, settings: Settings
) -> None:
    assert register(app_client, "first@example.com").status_code == 201
    assert register(app_client, "second@example.com").status_code == 201

    first, second = (
        user_row(settings, "first@example.com"),
        user_row(settings, "second@example.com"),
    )
    assert first is not None and second is not None
    assert first["password_hash"].startswith("$argon2id$")
    assert PASSWORD not in first["password_hash"]
    assert first["password_hash"] != second["password_hash"]  # same password, different salt


@pytest.mark.parametrize(
    ("email", "password", "rule"),
    [
        ("a@example.com", "short1!", "at least 10 characters"),
        ("a@example.com", "x" * 200 + "yzw" * 20, "at most 256 characters"),
        ("a@example.com", "abababababab", "at least 4 different characters"),
        ("a@example.com", " " * 12, "at least 4 different characters"),
        ("long.name.here@example.com", "long.name.here", "must not be your email"),
        ("long.name.here@example.com", "LONG.NAME.HERE@example.com", "must not be your email"),
    ],
    ids=["too-short", "too-long", "too-few-characters", "blank", "email-name", "whole-email"],
)
def test_a_weak_password_is_refused_naming_the_password_and_the_rule(
    app_client: TestClient, settings: Settings, email: str, password: str, rule: str
) -> None:
    response = register(app_client, email, password)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "password"]
    assert rule in error["msg"]
    assert password.strip() == "" or password not in response.text
    assert user_count(settings) == 0


def test_emails_are_stored_trimmed_and_in_lower_case(
    app_client: TestClient, settings: Settings
) -> None:
    created = register(app_client, "  Alice.Smith@Example.COM \t")
    assert created.status_code == 201, created.text
    assert created.json()["email"] == "alice.smith@example.com"
    assert user_row(settings, "alice.smith@example.com") is not None

    # Any spelling of the same address signs in to the same account.
    pair = login(app_client, " ALICE.SMITH@example.com")
    me = app_client.get(f"{AUTH}/me", headers=bearer_of(pair["access_token"]))
    assert me.json()["id"] == created.json()["id"]


@pytest.mark.parametrize(
    "again",
    [
        "alice@example.com",
        "ALICE@Example.com",
        "  alice@example.com  ",
        f"alice@{FULLWIDTH_EXAMPLE}.com",
    ],
    ids=["same", "upper-case", "spaces", "fullwidth-domain"],
)
def test_an_email_can_hold_only_one_account(
    app_client: TestClient, settings: Settings, again: str
) -> None:
    assert register(app_client, "alice@example.com").status_code == 201

    response = register(app_client, again, "another long passphrase")

    assert response.status_code == 409
    assert "already exists" in response.json()["detail"]
    assert user_count(settings) == 1
    login(app_client, "alice@example.com")  # the first account's password still works


@pytest.mark.parametrize(
    "email",
    ["not-an-email", "alice@", "@example.com", "alice@@example.com", "al ice@example.com", ""],
)
def test_an_invalid_email_is_refused_naming_the_email(
    app_client: TestClient, settings: Settings, email: str
) -> None:
    response = register(app_client, email)

    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "email"]
    assert error["msg"]
    assert user_count(settings) == 0


def test_a_role_cannot_be_chosen_at_registration(
    app_client: TestClient, settings: Settings
) -> None:
    response = app_client.post(
        f"{AUTH}/register",
        json={"email": "mallory@example.com", "password": PASSWORD, "role": "admin"},
    )

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "role"]
    assert user_count(settings) == 0


def test_unknown_fields_in_a_sign_in_are_refused(app_client: TestClient) -> None:
    create_account(services_of(app_client).settings, "bob@example.com")
    response = app_client.post(
        f"{AUTH}/login",
        json={"email": "bob@example.com", "password": PASSWORD, "remember_me": True},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "remember_me"]


def test_registration_can_be_turned_off(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(allow_registration=False)
    with started(settings) as client:
        response = register(client, "walk-in@example.com")
    assert response.status_code == 403
    assert "administrator" in response.json()["detail"]
    assert user_count(settings) == 0


# --- signing in ------------------------------------------------------------------------------


@pytest.mark.parametrize("who", ["wrong-password", "unknown-email"])
def test_a_failed_sign_in_does_not_say_which_part_was_wrong(
    app_client: TestClient, who: str
) -> None:
    create_account(services_of(app_client).settings, "carol@example.com")
    email = "carol@example.com" if who == "wrong-password" else "nobody@example.com"

    response = app_client.post(
        f"{AUTH}/login", json={"email": email, "password": "guessed passphrase"}
    )

    assert response.status_code == 401
    assert response.json()["detail"] == "email or password is wrong"
    assert response.headers["www-authenticate"] == "Bearer"
    assert "guessed passphrase" not in response.text


def test_me_without_credentials_asks_the_caller_to_sign_in(app_client: TestClient) -> None:
    response = app_client.get(f"{AUTH}/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "sign in" in response.json()["detail"]


# --- failed sign-ins are slowed down ---------------------------------------------------------


def fail_sign_in(client: TestClient, email: str) -> None:
    response = client.post(f"{AUTH}/login", json={"email": email, "password": "not the password"})
    assert response.status_code == 401, response.text


def assert_throttled(client: TestClient, email: str, password: str = PASSWORD) -> None:
    response = client.post(f"{AUTH}/login", json={"email": email, "password": password})
    assert response.status_code == 429, response.text
    assert int(response.headers["retry-after"]) > 0
    assert "too many failed sign-ins" in response.json()["detail"]
    assert "access_token" not in response.text


def test_an_account_is_throttled_after_its_failures_from_many_addresses(
    throttled_client: TestClient,
) -> None:
    settings = services_of(throttled_client).settings
    create_account(settings, "target@example.com")
    create_account(settings, "bystander@example.com")

    for n in range(ACCOUNT_FAILURES_ALLOWED - 1):
        fail_sign_in(from_address(throttled_client, f"10.0.0.{n + 1}"), "target@example.com")
    # One failure short of the account's limit, the right password still works ...
    login(from_address(throttled_client, "10.0.0.50"), "target@example.com")
    fail_sign_in(from_address(throttled_client, "10.0.0.51"), "target@example.com")

    # ... at the limit even the right password is refused, from any address.
    assert_throttled(from_address(throttled_client, "10.0.0.99"), "target@example.com")
    assert_throttled(from_address(throttled_client, "10.0.0.99"), "target@example.com", "wrong!!")
    # Another account from another address signs in as usual.
    login(from_address(throttled_client, "10.0.0.99"), "bystander@example.com")


def test_wrong_passwords_from_one_address_do_not_lock_the_owner_out(
    throttled_client: TestClient,
) -> None:
    create_account(services_of(throttled_client).settings, "victim@example.com")
    attacker = from_address(throttled_client, "192.0.2.66")

    for _ in range(FAILURES_ALLOWED):
        fail_sign_in(attacker, "victim@example.com")
    # The guesser is stopped, even if the next guess were right ...
    assert_throttled(attacker, "victim@example.com", "a better guess")
    assert_throttled(attacker, "victim@example.com")
    # ... while the owner, elsewhere, signs in with the right password at once.
    login(from_address(throttled_client, "198.51.100.20"), "victim@example.com")


def test_respelling_the_email_does_not_buy_more_attempts(throttled_client: TestClient) -> None:
    create_account(services_of(throttled_client).settings, "target@example.com")
    spellings = ["TARGET@example.com", " target@Example.Com ", f"target@{FULLWIDTH_EXAMPLE}.com"]
    assert len(spellings) == FAILURES_ALLOWED
    guesser = from_address(throttled_client, "10.0.1.1")

    for spelling in spellings:
        fail_sign_in(guesser, spelling)

    assert_throttled(guesser, "target@example.com")


def test_an_address_is_throttled_after_failures_across_accounts(
    throttled_client: TestClient,
) -> None:
    create_account(services_of(throttled_client).settings, "bystander@example.com")
    attacker = from_address(throttled_client, "192.0.2.7")

    for _ in range(ADDRESS_FAILURES_ALLOWED):
        fail_sign_in(attacker, new_email("guess"))

    assert_throttled(attacker, "bystander@example.com")
    # The same account from another address is unaffected.
    login(from_address(throttled_client, "192.0.2.8"), "bystander@example.com")
