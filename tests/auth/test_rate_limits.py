"""Rate limits over HTTP: a token bucket per API key, per user and per anonymous address,
shared through Redis by every replica, and what happens when Redis is away."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from modelport.settings import Settings
from tests.auth.keys_support import KEYS, PREDICTIONS, create_key, key_header, sign_up
from tests.helpers import WINE_ROW, register_trained, wait_until_ready
from tests.ratelimit.support import backend_errors, closed_port_url, require_redis

MODELS = "/api/v1/models"
ONE_BACKEND = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def serve(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine, tmp_path: Path
) -> Iterator[Callable[..., TestClient]]:
    """Start apps (replicas) on one database and artifact store, with the settings given."""
    store = (tmp_path / "artifacts").as_uri()
    stack = ExitStack()
    registered = False

    def start(name: str = "app", **overrides: Any) -> TestClient:
        nonlocal registered
        settings = make_settings(var_dir=tmp_path / name, artifact_store=store, **overrides)
        if not registered:
            register_trained(settings, trained_wine)
            registered = True
        client = stack.enter_context(TestClient(create_app(settings)))
        wait_until_ready(client)
        return client

    with stack:
        yield start


def limit_state(response: Any) -> tuple[int, int, int]:
    """(limit, remaining, reset) from the X-RateLimit-* headers, which must all be there."""
    headers = response.headers
    values = (
        headers["x-ratelimit-limit"],
        headers["x-ratelimit-remaining"],
        headers["x-ratelimit-reset"],
    )
    limit, remaining, reset = (int(value) for value in values)
    assert 0 <= remaining <= limit and reset >= 0
    return limit, remaining, reset


def assert_limited(response: Any, per_minute: int) -> None:
    """A 429 that says what happened and when to come back."""
    assert response.status_code == 429, response.text
    assert f"rate limit of {per_minute} requests per minute" in response.json()["detail"]
    retry_after = int(response.headers["retry-after"])
    assert 1 <= retry_after <= 60 / per_minute + 1
    assert limit_state(response)[:2] == (per_minute, 0)


def test_anonymous_callers_share_a_strict_limit_per_address(
    serve: Callable[..., TestClient],
) -> None:
    client = serve(rate_limit_anonymous_per_minute=3, rate_limit_user_per_minute=100)
    answered = [client.post("/predict", json=WINE_ROW) for _ in range(3)]
    assert [r.status_code for r in answered] == [200, 200, 200]
    assert [limit_state(r)[:2] for r in answered] == [(3, 2), (3, 1), (3, 0)]
    assert limit_state(answered[-1])[2] > 0  # seconds until the bucket is full again

    assert_limited(client.post("/predict", json=WINE_ROW), 3)
    assert_limited(client.get(MODELS), 3)  # one bucket per address, whatever the endpoint

    _, headers = sign_up(client)  # signed in, the same address is no longer anonymous
    for _ in range(5):
        response = client.post("/predict", json=WINE_ROW, headers=headers)
        assert response.status_code == 200
    assert limit_state(response)[:2] == (100, 95)


def test_registration_counts_against_the_anonymous_limit(
    serve: Callable[..., TestClient],
) -> None:
    client = serve(rate_limit_anonymous_per_minute=2)
    body = {"email": "someone@example.com", "password": "correct horse battery"}
    assert client.post("/api/v1/auth/register", json=body).status_code == 201
    duplicate = client.post("/api/v1/auth/register", json=body)
    assert duplicate.status_code == 409
    assert limit_state(duplicate)[:2] == (2, 0)
    other = {"email": "other@example.com", "password": "correct horse battery"}
    assert_limited(client.post("/api/v1/auth/register", json=other), 2)


def test_each_user_has_their_own_bucket(serve: Callable[..., TestClient]) -> None:
    client = serve(rate_limit_user_per_minute=3, rate_limit_anonymous_per_minute=100)
    _, alice = sign_up(client)
    _, bob = sign_up(client)
    for expected in (2, 1, 0):
        answered = client.get(MODELS, headers=alice)
        assert limit_state(answered)[:2] == (3, expected)
    assert_limited(client.post("/predict", json=WINE_ROW, headers=alice), 3)
    assert_limited(client.get("/api/v1/auth/me", headers=alice), 3)

    assert client.get(MODELS, headers=bob).status_code == 200
    assert limit_state(client.get(MODELS))[0] == 100  # anonymous: a bucket of its own


def test_each_api_key_has_its_own_bucket_with_the_default_limit(
    serve: Callable[..., TestClient],
) -> None:
    client = serve(rate_limit_api_key_per_minute=2, rate_limit_user_per_minute=100)
    _, headers = sign_up(client)
    first = key_header(create_key(client, headers)["key"])
    second = key_header(create_key(client, headers)["key"])

    assert [limit_state(client.get(MODELS, headers=first))[:2] for _ in range(2)] == [
        (2, 1),
        (2, 0),
    ]
    assert_limited(client.post("/predict", json=WINE_ROW, headers=first), 2)
    assert limit_state(client.get(MODELS, headers=second))[:2] == (2, 1)
    assert client.get(MODELS, headers=headers).status_code == 200  # the owner's token: own bucket


def test_a_limit_stored_on_the_key_wins_over_the_default(
    serve: Callable[..., TestClient],
) -> None:
    client = serve(rate_limit_api_key_per_minute=2, rate_limit_user_per_minute=100)
    _, admin = sign_up(client, role="admin")
    created = create_key(client, admin, rate_limit_per_minute=4)
    key = key_header(created["key"])
    assert [client.get(MODELS, headers=key).status_code for _ in range(4)] == [200] * 4
    assert_limited(client.get(MODELS, headers=key), 4)

    raised = client.patch(
        f"{KEYS}/{created['id']}", json={"rate_limit_per_minute": 50}, headers=admin
    )
    assert raised.status_code == 200
    assert limit_state(client.get(MODELS, headers=key))[0] == 50
    default = key_header(create_key(client, admin)["key"])
    assert limit_state(client.get(MODELS, headers=default))[0] == 2


def test_refusals_after_the_limiter_ran_carry_the_limit_headers(
    serve: Callable[..., TestClient],
) -> None:
    client = serve(rate_limit_anonymous_per_minute=10, rate_limit_api_key_per_minute=10)
    refused = [
        client.post("/predict", json={**WINE_ROW, "ph": -1}),  # 422: out of range
        client.post("/predict", content=b"{not json"),  # 422: not JSON
        client.post(f"{MODELS}/no-such-model/predict", json=WINE_ROW),  # 404
        client.get(f"{MODELS}/no-such-model"),  # 404
        client.get(PREDICTIONS),  # 401: anonymous callers may not read the log
    ]
    assert [r.status_code for r in refused] == [422, 422, 404, 404, 401]
    assert [limit_state(r)[:2] for r in refused] == [(10, n) for n in (9, 8, 7, 6, 5)]

    _, headers = sign_up(client)
    reader = key_header(create_key(client, headers, scopes=["read"])["key"])
    forbidden = client.post("/predict", json=WINE_ROW, headers=reader)
    assert forbidden.status_code == 403
    assert limit_state(forbidden)[:2] == (10, 9)


@pytest.mark.parametrize(
    "headers",
    [key_header("mp_" + "G" * 43), {"Authorization": "Bearer guessed.token.value"}],
    ids=["guessed-key", "guessed-token"],
)
def test_refused_credentials_use_up_the_anonymous_allowance(
    serve: Callable[..., TestClient], headers: dict[str, str]
) -> None:
    client = serve(rate_limit_anonymous_per_minute=3)
    guesses = [client.get(MODELS, headers=headers) for _ in range(3)]
    assert [r.status_code for r in guesses] == [401, 401, 401]
    assert [limit_state(r)[:2] for r in guesses] == [(3, 2), (3, 1), (3, 0)]
    assert_limited(client.get(MODELS, headers=headers), 3)
    assert_limited(client.get(MODELS), 3)


# --- Redis: one bucket for every replica ----------------------------------------------------


def test_replicas_sharing_redis_share_each_bucket(serve: Callable[..., TestClient]) -> None:
    redis_url = require_redis(flush=True)
    limits = {"rate_limit_anonymous_per_minute": 3, "rate_limit_api_key_per_minute": 2}
    one = serve("replica-1", redis_url=redis_url, **limits)
    two = serve("replica-2", redis_url=redis_url, **limits)

    assert [limit_state(one.post("/predict", json=WINE_ROW))[1] for _ in range(2)] == [2, 1]
    assert limit_state(two.post("/predict", json=WINE_ROW))[:2] == (3, 0)
    assert_limited(two.post("/predict", json=WINE_ROW), 3)
    assert_limited(one.get(MODELS), 3)

    _, headers = sign_up(one)
    key = key_header(create_key(one, headers)["key"])
    assert limit_state(two.get(MODELS, headers=key))[:2] == (2, 1)
    assert limit_state(one.get(MODELS, headers=key))[:2] == (2, 0)
    assert_limited(two.get(MODELS, headers=key), 2)


def test_replicas_leasing_from_redis_honour_a_key_s_limit(
    serve: Callable[..., TestClient],
) -> None:
    redis_url = require_redis(flush=True)
    # A lease of a quarter of the bucket (10 tokens) per replica: most requests ask no one.
    settings = {
        "redis_url": redis_url,
        "rate_limit_api_key_per_minute": 40,
        "rate_limit_lease_fraction": 0.25,
        "rate_limit_user_per_minute": 1000,
    }
    one = serve("replica-1", **settings)
    two = serve("replica-2", **settings)
    _, headers = sign_up(one)
    key = key_header(create_key(one, headers)["key"])

    answers = [
        (one if n % 2 else two).post("/predict", json=WINE_ROW, headers=key) for n in range(60)
    ]
    statuses = [r.status_code for r in answers]
    # Tokens leave Redis before they are spent, so never more than the bucket (a token refills
    # every 1.5 s: at most a few during the test); both replicas kept asking, so no lease was
    # left unspent either.
    assert 40 <= statuses.count(200) <= 40 + 5
    assert set(statuses) == {200, 429}
    assert {limit_state(response)[0] for response in answers} == {40}
    assert_limited(answers[-1], 40)


@ONE_BACKEND
def test_an_unreachable_redis_lets_requests_through_by_default(
    serve: Callable[..., TestClient], caplog: pytest.LogCaptureFixture
) -> None:
    client = serve(redis_url=closed_port_url(), rate_limit_anonymous_per_minute=1)
    before = backend_errors(client, "allowed")
    with caplog.at_level(logging.WARNING, logger="modelport.ratelimit"):
        answered = [client.post("/predict", json=WINE_ROW) for _ in range(3)]
    assert [r.status_code for r in answered] == [200, 200, 200]  # a limit of 1 not applied
    assert backend_errors(client, "allowed") == before + 3
    warnings = [r for r in caplog.records if "rate limiter backend unreachable" in r.message]
    assert len(warnings) == 3
    assert {r.levelno for r in warnings} == {logging.WARNING}


@ONE_BACKEND
def test_an_unreachable_redis_refuses_requests_when_told_to_fail_closed(
    serve: Callable[..., TestClient],
) -> None:
    client = serve(redis_url=closed_port_url(), rate_limit_fail_open=False)
    before = backend_errors(client, "refused")
    for method, path in (("POST", "/predict"), ("GET", MODELS), ("POST", "/api/v1/auth/login")):
        body = {"email": "a@example.com", "password": "x" * 12} if "login" in path else WINE_ROW
        refused = client.request(method, path, json=body)
        assert refused.status_code == 503, path
        assert "rate limiter cannot be reached" in refused.json()["detail"]
        assert refused.headers["retry-after"] == "1"
    assert backend_errors(client, "refused") >= before + 3
