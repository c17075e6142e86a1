"""Two replicas on one database: what one of them changes reaches the other's caches at once.

Each replica remembers who is calling and which version an alias names; here both remember
for five minutes, so only the channel between them (Redis pub/sub, or PostgreSQL LISTEN/NOTIFY
when Redis is not configured) can make the other replica refuse a revoked key or serve a moved
alias in time. The other replica is polled until it applies the change; how long that took is
printed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import make_url

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from tests.auth.keys_support import KEYS, create_key, key_header
from tests.helpers import (
    WINE_ROW,
    bearer,
    create_account,
    register_trained,
    services_of,
    settings_for,
    wait_until,
    wait_until_ready,
)
from tests.monitoring.tcp_proxy import TcpProxy
from tests.ratelimit.support import require_redis

SHARED_SECRET = "replicas-share-this-secret-0123456789abcdef"
# Far longer than PATIENCE: only the channel can make a change apply before the test gives up.
LONG = 300.0  # the most MODELPORT_AUTH_CACHE_SECONDS allows
PATIENCE = 30.0  # generous: the change normally lands within milliseconds
MODELS = "/api/v1/models"
USERS = "/api/v1/users"

# The channel each backend offers: Redis with either database; LISTEN/NOTIFY on PostgreSQL.
pytestmark = pytest.mark.parametrize(
    ("database_url", "channel"),
    [
        pytest.param("sqlite", "redis", id="sqlite-redis"),
        pytest.param("postgres", "redis", id="postgres-redis"),
        pytest.param("postgres", "notify", id="postgres-notify"),
    ],
    indirect=["database_url"],
)

Start = Callable[..., TestClient]


@pytest.fixture
def start_replica(
    database_url: str, channel: str, tmp_path: Path, trained_wine: TrainedWine
) -> Iterator[Start]:
    """Start replicas on one database, artifact store, JWT secret and channel; each remembers
    callers and aliases for five minutes. ``through`` reaches Redis (or, for NOTIFY, the database)
    through a proxy that the test can cut."""
    redis_url = require_redis() if channel == "redis" else None
    store = (tmp_path / "artifacts").as_uri()
    registered = False

    def start(name: str, through: TcpProxy | None = None) -> TestClient:
        nonlocal registered
        db, redis = database_url, redis_url
        if through is not None and redis is not None:
            redis = _via(redis, through)
        elif through is not None:
            db = _via(database_url, through)
        settings = settings_for(
            tmp_path / name,
            db,
            artifact_store=store,
            jwt_secret=SHARED_SECRET,
            redis_url=redis,
            auth_cache_seconds=LONG,
            registry_cache_seconds=LONG,
        )
        if not registered:
            register_trained(settings, trained_wine)
            registered = True
        client = stack.enter_context(TestClient(create_app(settings)))
        wait_until_ready(client)
        wait_until(lambda: bridge_connected(client), "the replica to join the channel", PATIENCE)
        return client

    with ExitStack() as stack:
        yield start


@pytest.fixture
def replicas(start_replica: Start) -> tuple[TestClient, TestClient]:
    return start_replica("replica-1"), start_replica("replica-2")


def _via(url: str, proxy: TcpProxy) -> str:
    return make_url(url).set(host="127.0.0.1", port=proxy.port).render_as_string(False)


def bridge_connected(client: TestClient) -> bool:
    bridge = services_of(client).change_bridge
    assert bridge is not None, "a replica with Redis or PostgreSQL must bridge its changes"
    return bridge.connected


def applied(
    what: str, request: Callable[[], httpx.Response], expected: Callable[[httpx.Response], bool]
) -> httpx.Response:
    """Poll the other replica until its answer shows the change; print how long that took."""
    answers: list[httpx.Response] = []

    def shows_it() -> bool:
        answers.append(request())
        return expected(answers[-1])

    took = wait_until(shows_it, what, PATIENCE)
    print(f"\n{what}: applied on the other replica after {took * 1000:.1f} ms")
    return answers[-1]


def new_user(client: TestClient, role: str = "user") -> tuple[uuid.UUID, str, dict[str, str]]:
    email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
    user_id = create_account(services_of(client).settings, email, role=role)
    return user_id, email, bearer(client, email)


def test_a_key_revoked_on_one_replica_is_refused_by_the_other(
    replicas: tuple[TestClient, TestClient],
) -> None:
    one, two = replicas
    _, _, headers = new_user(one)
    created = create_key(one, headers)
    key = key_header(created["key"])
    assert two.post("/predict", json=WINE_ROW, headers=key).status_code == 200  # now cached

    assert one.delete(f"{KEYS}/{created['id']}", headers=headers).status_code == 204

    refused = applied(
        "key revoked",
        lambda: two.post("/predict", json=WINE_ROW, headers=key),
        lambda answer: answer.status_code != 200,
    )
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]
    # The account's token signed by replica 1 still works on replica 2 (one JWT secret).
    assert two.get(KEYS, headers=headers).json()["items"][0]["revoked_at"] is not None


def test_a_user_disabled_on_one_replica_loses_access_on_the_other(
    replicas: tuple[TestClient, TestClient],
) -> None:
    one, two = replicas
    user_id, _, token = new_user(one)
    key = key_header(create_key(one, token)["key"])
    _, _, admin = new_user(one, role="admin")
    for credentials in (token, key):  # both now cached by replica 2
        assert two.get(MODELS, headers=credentials).status_code == 200

    disabled = one.patch(f"{USERS}/{user_id}", json={"disabled": True}, headers=admin)
    assert disabled.status_code == 200

    for credentials, what in ((token, "account disabled (token)"), (key, "account disabled (key)")):
        refused = applied(
            what,
            partial(two.get, MODELS, headers=credentials),
            lambda answer: answer.status_code != 200,
        )
        assert refused.status_code == 403
        assert "disabled" in refused.json()["detail"]


def test_signing_out_on_one_replica_ends_the_session_on_the_other(
    replicas: tuple[TestClient, TestClient],
) -> None:
    one, two = replicas
    _, email, _ = new_user(one)
    pair = one.post(
        "/api/v1/auth/login", json={"email": email, "password": "correct horse battery"}
    ).json()
    access = {"Authorization": f"Bearer {pair['access_token']}"}
    assert two.get("/api/v1/auth/me", headers=access).status_code == 200

    signed_out = one.post("/api/v1/auth/logout", json={"refresh_token": pair["refresh_token"]})
    assert signed_out.status_code == 204

    refused = applied(
        "session signed out",
        lambda: two.get("/api/v1/auth/me", headers=access),
        lambda answer: answer.status_code != 200,
    )
    assert refused.status_code == 401
    assert "signed out" in refused.json()["detail"]


def test_an_alias_moved_on_one_replica_is_served_by_the_other(
    start_replica: Start, trained_wine: TrainedWine
) -> None:
    one = start_replica("replica-1")
    register_trained(services_of(one).settings, trained_wine)  # v2, now production
    two = start_replica("replica-2")
    assert two.post("/predict", json=WINE_ROW).json()["model_version"] == "2"
    _, _, admin = new_user(one, role="admin")

    moved = one.put(f"{MODELS}/wine-quality/aliases/production", json={"version": 1}, headers=admin)
    assert moved.status_code == 200

    served = applied(
        "alias moved",
        lambda: two.post("/predict", json=WINE_ROW),
        lambda answer: answer.json().get("model_version") != "2",
    )
    assert served.status_code == 200
    assert served.json()["model_version"] == "1"


@pytest.fixture
def channel_proxy(channel: str, database_url: str) -> Iterator[TcpProxy]:
    """A proxy in front of the channel's server (Redis, or PostgreSQL for NOTIFY); requested
    before the replicas, so it outlives them."""
    upstream = make_url(require_redis() if channel == "redis" else database_url)
    proxy = TcpProxy(upstream.host or "127.0.0.1", upstream.port or 6379)
    proxy.start()
    yield proxy
    proxy.stop()


def test_a_replica_whose_channel_dropped_rereads_what_it_missed_and_hears_again(
    channel_proxy: TcpProxy, start_replica: Start
) -> None:
    """Replica 2 loses its channel (the proxy to Redis, or for NOTIFY to the database, is cut)
    while a key is revoked: it misses that message. Once it reconnects it reads what it holds
    again before trusting it, and the next revocation reaches it through the channel."""
    proxy = channel_proxy
    one = start_replica("replica-1")
    two = start_replica("replica-2", through=proxy)
    _, _, headers = new_user(one)
    missed, heard = (create_key(one, headers) for _ in range(2))
    for created in (missed, heard):
        answer = two.get(MODELS, headers=key_header(created["key"]))
        assert answer.status_code == 200

    proxy.stop()
    wait_until(
        lambda: not bridge_connected(two), "replica 2 to notice its channel is gone", PATIENCE
    )
    assert one.delete(f"{KEYS}/{missed['id']}", headers=headers).status_code == 204
    proxy.start()
    wait_until(lambda: bridge_connected(two), "replica 2 to reconnect", PATIENCE)

    refused = two.get(MODELS, headers=key_header(missed["key"]))
    assert refused.status_code == 401
    assert "revoked" in refused.json()["detail"]

    assert two.get(MODELS, headers=key_header(heard["key"])).status_code == 200
    assert one.delete(f"{KEYS}/{heard['id']}", headers=headers).status_code == 204
    refused = applied(
        "key revoked after reconnecting",
        lambda: two.get(MODELS, headers=key_header(heard["key"])),
        lambda answer: answer.status_code != 200,
    )
    assert refused.status_code == 401
