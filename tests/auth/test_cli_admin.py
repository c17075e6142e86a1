"""`modelport users create-admin`: the first administrator, made from the command line."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from modelport.cli import app
from modelport.settings import Settings
from tests.auth.accounts_support import USERS, bearer_of, login, started, user_count, user_row

GOOD_PASSWORD = "a long admin passphrase"


@pytest.fixture
def cli_env(tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The test database, and nothing from the caller's MODELPORT_* or a stray .env."""
    for name in list(os.environ):
        if name.startswith("MODELPORT_"):
            monkeypatch.delenv(name)
    workdir = tmp_path / "workdir"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return {
        "MODELPORT_VAR_DIR": str(tmp_path / "var"),
        "MODELPORT_DATABASE_URL": database_url,
        "MODELPORT_LOG_FORMAT": "text",
    }


def create_admin(env: dict[str, str], email: str, password: str) -> Result:
    return CliRunner().invoke(
        app,
        ["users", "create-admin", "--email", email, "--password-stdin"],
        input=password + "\n",
        env=env,
    )


def test_create_admin_makes_an_administrator_who_can_sign_in(
    cli_env: dict[str, str], make_settings: Callable[..., Settings]
) -> None:
    result = create_admin(cli_env, "  Root@Example.COM ", GOOD_PASSWORD)

    assert result.exit_code == 0, result.stderr
    assert "administrator root@example.com created" in result.stdout
    assert GOOD_PASSWORD not in result.output
    with started(make_settings()) as client:
        pair = login(client, "root@example.com", GOOD_PASSWORD)
        me = client.get("/api/v1/auth/me", headers=bearer_of(pair["access_token"]))
        assert me.json()["role"] == "admin"
        assert client.get(USERS, headers=bearer_of(pair["access_token"])).status_code == 200


def test_create_admin_stores_only_an_argon2id_hash(
    cli_env: dict[str, str], make_settings: Callable[..., Settings]
) -> None:
    assert create_admin(cli_env, "root@example.com", GOOD_PASSWORD).exit_code == 0
    row = user_row(make_settings(), "root@example.com")
    assert row is not None
    assert row["password_hash"].startswith("$argon2id$")
    assert GOOD_PASSWORD not in row["password_hash"]


def test_create_admin_asks_for_the_password_twice_without_stdin(
    cli_env: dict[str, str], make_settings: Callable[..., Settings]
) -> None:
    result = CliRunner().invoke(
        app,
        ["users", "create-admin", "--email", "root@example.com"],
        input=f"{GOOD_PASSWORD}\n{GOOD_PASSWORD}\n",
        env=cli_env,
    )

    assert result.exit_code == 0, result.output
    assert GOOD_PASSWORD not in result.output  # the prompt does not echo it
    assert user_row(make_settings(), "root@example.com") is not None


@pytest.mark.parametrize(
    ("password", "rule"),
    [
        ("short", "password must be at least 10 characters"),
        ("", "password must be at least 10 characters"),
        ("aaaaaaaaaaaaaaaa", "password must use at least 4 different characters"),
        ("root@example.com", "password must not be your email address"),
    ],
    ids=["short", "empty", "monotonous", "the-email"],
)
def test_a_weak_password_exits_1_with_the_policy_message(
    cli_env: dict[str, str], make_settings: Callable[..., Settings], password: str, rule: str
) -> None:
    result = create_admin(cli_env, "root@example.com", password)

    assert result.exit_code == 1
    assert rule in result.stderr
    assert user_count(make_settings()) == 0


@pytest.mark.parametrize("again", ["root@example.com", "ROOT@example.com"])
def test_a_duplicate_email_exits_1(
    cli_env: dict[str, str], make_settings: Callable[..., Settings], again: str
) -> None:
    assert create_admin(cli_env, "root@example.com", GOOD_PASSWORD).exit_code == 0

    result = create_admin(cli_env, again, "another admin passphrase")

    assert result.exit_code == 1
    assert "root@example.com already exists" in result.stderr
    assert user_count(make_settings()) == 1
    with started(make_settings()) as client:
        login(client, "root@example.com", GOOD_PASSWORD)  # the first password still holds


def test_an_invalid_email_exits_1_naming_the_email(
    cli_env: dict[str, str], make_settings: Callable[..., Settings]
) -> None:
    result = create_admin(cli_env, "not-an-email", GOOD_PASSWORD)

    assert result.exit_code == 1
    assert "email" in result.stderr
    assert user_count(make_settings()) == 0
