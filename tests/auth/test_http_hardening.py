"""Hostile input and browsers: SQL metacharacters never reach SQL as code, oversized bodies are
refused, CORS allows only configured origins, and every response carries security headers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from tests.auth.keys_support import KEYS, PREDICTIONS, create_key, key_header, more_apps, sign_up
from tests.helpers import WINE_ROW, flush_log, services_of, settings_for, wait_until_ready
from tests.ratelimit.support import closed_port_url
from tests.registry.support import shared_wine_app

MODELS = "/api/v1/models"
USERS = "/api/v1/users"

# Classic injection shapes, a NUL (PostgreSQL refuses it in text) and non-ASCII.
PAYLOADS = [
    "' OR '1'='1",
    "'; DROP TABLE users; --",
    '" OR 1=1 --',
    "1 UNION SELECT key_hash FROM api_keys",
    "%' OR email LIKE '%",
    "\\'; SELECT pg_sleep(5); --",
    "admin'/*",
    "nul\x00byte",
    "caf\u00e9 \u2603 '",
]
PAYLOAD_IDS = ["or", "drop", "double-quote", "union", "like", "backslash", "comment", "nul", "utf8"]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def client(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    trained_wine: TrainedWine,
) -> Iterator[TestClient]:
    yield from shared_wine_app(request, tmp_path_factory, trained_wine)


@pytest.fixture(scope="module")
def admin(client: TestClient) -> dict[str, str]:
    return sign_up(client, role="admin")[1]


@pytest.fixture
def another_app(client: TestClient, tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    with more_apps(client, tmp_path) as start:
        yield start


def refused_cleanly(response: Any, *allowed: int) -> None:
    """A 4xx with a JSON message, never a 500 (which would mean SQL or a driver choked)."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    if allowed:
        assert response.status_code in allowed, (response.status_code, response.text)
    assert "detail" in response.json()


def counts(client: TestClient, admin: dict[str, str]) -> tuple[int, int]:
    users = client.get(USERS, params={"limit": 500}, headers=admin).json()["items"]
    keys = client.get(KEYS, headers=admin).json()["items"]
    return len(users), len(keys)


@pytest.mark.parametrize("payload", PAYLOADS, ids=PAYLOAD_IDS)
def test_sql_metacharacters_in_account_paths_and_filters_are_refused(
    client: TestClient, admin: dict[str, str], payload: str
) -> None:
    before = counts(client, admin)
    segment = quote(payload, safe="")
    for method in ("GET", "PATCH", "DELETE"):
        refused = client.request(method, f"{KEYS}/{segment}", json={"name": "x"}, headers=admin)
        refused_cleanly(refused, 404, 422)  # 404: a "/" in the id makes it another path
    promote = client.patch(f"{USERS}/{segment}", json={"role": "admin"}, headers=admin)
    refused_cleanly(promote, 404, 422)
    for name in ("offset", "limit"):
        refused_cleanly(client.get(USERS, params={name: payload}, headers=admin), 422)
    for name in ("status", "since", "until", "offset", "limit"):
        refused_cleanly(client.get(PREDICTIONS, params={name: payload}, headers=admin), 422)
    assert counts(client, admin) == before


@pytest.mark.parametrize("payload", PAYLOADS, ids=PAYLOAD_IDS)
def test_sql_metacharacters_in_sign_in_and_tokens_are_refused(
    client: TestClient,
    another_app: Callable[..., TestClient],
    admin: dict[str, str],
    payload: str,
) -> None:
    before = counts(client, admin)
    # An app of its own: the failed sign-ins below slow down this address on that app only.
    fresh = another_app("sign-in")
    for body in (
        {"email": payload, "password": "correct horse battery"},
        {"email": f"{payload}@example.com", "password": payload},
        {"email": "admin@example.com' --", "password": payload},
    ):
        refused_cleanly(fresh.post("/api/v1/auth/login", json=body), 401, 422)
    registered = fresh.post(
        "/api/v1/auth/register", json={"email": payload, "password": "correct horse battery"}
    )
    refused_cleanly(registered, 422)
    for path in ("/api/v1/auth/refresh", "/api/v1/auth/logout"):
        refused_cleanly(fresh.post(path, json={"refresh_token": payload}), 401)
    if "\x00" not in payload:  # HTTP headers cannot carry NUL at all
        raw = payload.encode()
        for headers in (
            {"Authorization": b"Bearer " + raw},
            {"X-API-Key": b"mp_" + raw + b"x" * 20},
        ):
            refused_cleanly(fresh.get("/api/v1/auth/me", headers=headers), 401)
    assert counts(client, admin) == before


def test_an_email_with_a_quote_signs_up_and_in(client: TestClient) -> None:
    """Quotes are legal in email addresses: bound as data, they work like any other letter."""
    body = {"email": "o'brien--@example.com", "password": "correct horse battery"}
    created = client.post("/api/v1/auth/register", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["email"] == body["email"]
    assert client.post("/api/v1/auth/login", json=body).status_code == 200


@pytest.mark.parametrize("payload", PAYLOADS, ids=PAYLOAD_IDS)
def test_sql_metacharacters_in_names_find_nothing(
    client: TestClient, admin: dict[str, str], payload: str
) -> None:
    segment = quote(payload, safe="")
    for path in (
        f"{MODELS}/{segment}",
        f"{MODELS}/{segment}/versions/1",
        f"/api/v1/datasets/{segment}",
        f"/api/v1/datasets/{segment}/rows",
    ):
        refused_cleanly(client.get(path, headers=admin), 404)
    refused_cleanly(client.post(f"{MODELS}/{segment}/predict", json=WINE_ROW), 404)
    # The refused prediction above is logged under the name as sent (NUL made visible): the
    # filter finds exactly that, no wider match.
    flush_log(client)
    filtered = client.get(PREDICTIONS, params={"model": payload}, headers=admin)
    assert filtered.status_code == 200
    names = {item["model_name"] for item in filtered.json()["items"]}
    # (With a "/" in it the name splits the path: no such route, nothing logged.)
    assert names == (set() if "/" in payload else {payload.replace("\x00", "\ufffd")})
    assert client.get(MODELS, headers=admin).json()["total"] >= 1


@pytest.mark.parametrize("payload", [p for p in PAYLOADS if "\x00" not in p])
def test_a_key_name_full_of_metacharacters_is_stored_as_written(
    client: TestClient, admin: dict[str, str], payload: str
) -> None:
    created = create_key(client, admin, name=payload)
    assert client.get(f"{KEYS}/{created['id']}", headers=admin).json()["name"] == payload
    renamed = client.patch(f"{KEYS}/{created['id']}", json={"name": payload[::-1]}, headers=admin)
    assert renamed.json()["name"] == payload[::-1]


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_key_name_with_a_nul_is_refused(
    client: TestClient, admin: dict[str, str], method: str
) -> None:
    created = create_key(client, admin, name="plain")
    path = KEYS if method == "POST" else f"{KEYS}/{created['id']}"
    refused_cleanly(client.request(method, path, json={"name": "nul\x00byte"}, headers=admin), 422)


# --- oversized bodies -----------------------------------------------------------------------

LIMIT = 2048


def _chunks(body: bytes) -> Iterator[bytes]:
    for start in range(0, len(body), 512):
        yield body[start : start + 512]


@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "chunked"])
def test_oversized_bodies_on_account_endpoints_are_refused(
    client: TestClient, another_app: Callable[..., TestClient], streamed: bool
) -> None:
    small = another_app("small", max_request_bytes=LIMIT)
    _, headers = sign_up(small)
    user_id = small.get("/api/v1/auth/me", headers=headers).json()["id"]
    key_id = create_key(small, headers)["id"]
    big = "x" * (2 * LIMIT)
    email = "too-big@example.com"
    for method, path, body in (
        ("POST", "/api/v1/auth/register", {"email": email, "password": big}),
        ("POST", "/api/v1/auth/login", {"email": email, "password": big}),
        ("POST", "/api/v1/auth/refresh", {"refresh_token": big}),
        ("POST", "/api/v1/auth/logout", {"refresh_token": big}),
        ("POST", KEYS, {"name": big}),
        ("PATCH", f"{KEYS}/{key_id}", {"name": big}),
        ("PATCH", f"{USERS}/{user_id}", {"role": big}),
    ):
        content = orjson.dumps(body)
        sent: Any = _chunks(content) if streamed else content
        response = small.request(
            method, path, content=sent, headers={**headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 413, (path, response.text)
        [problem] = response.json()["detail"]
        assert problem["type"] == "too_large"
        assert str(LIMIT) in problem["msg"]
    assert (
        small.post("/api/v1/auth/login", json={"email": email, "password": "x" * 12}).status_code
        == 401
    )
    assert [k["name"] for k in small.get(KEYS, headers=headers).json()["items"]] == ["test key"]


def test_an_overlong_password_within_the_body_limit_is_a_422(client: TestClient) -> None:
    body = {"email": "long@example.com", "password": "x" * 1025}
    for path in ("/api/v1/auth/register", "/api/v1/auth/login"):
        refused_cleanly(client.post(path, json=body), 422)


# --- CORS -----------------------------------------------------------------------------------

OK_ORIGIN = "https://ok.example"
EVIL_ORIGIN = "https://evil.example"


def preflight(client: TestClient, origin: str) -> Any:
    return client.options(
        MODELS,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "X-API-Key",
        },
    )


def test_cors_allows_only_the_configured_origins(
    client: TestClient, another_app: Callable[..., TestClient]
) -> None:
    browser = another_app("cors", cors_allow_origins=[OK_ORIGIN])
    allowed = preflight(browser, OK_ORIGIN)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == OK_ORIGIN
    assert "x-api-key" in allowed.headers["access-control-allow-headers"].lower()
    answered = browser.get(MODELS, headers={"Origin": OK_ORIGIN})
    assert answered.headers["access-control-allow-origin"] == OK_ORIGIN
    exposed = answered.headers["access-control-expose-headers"].lower()
    assert {"x-ratelimit-remaining", "retry-after", "x-request-id"} <= set(exposed.split(", "))
    assert "access-control-allow-credentials" not in answered.headers

    for origin in (EVIL_ORIGIN, "null", OK_ORIGIN + ".evil.example", "http://ok.example"):
        assert_not_allowed(browser, origin)
    for origin in (OK_ORIGIN, EVIL_ORIGIN):  # default settings allow no origin at all
        assert_not_allowed(client, origin)


def assert_not_allowed(client: TestClient, origin: str) -> None:
    assert "access-control-allow-origin" not in preflight(client, origin).headers, origin
    answered = client.get(MODELS, headers={"Origin": origin})
    assert answered.status_code == 200  # served, but the browser will not hand it to the page
    assert "access-control-allow-origin" not in answered.headers, origin


def test_cors_origins_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODELPORT_CORS_ALLOW_ORIGINS", f"{OK_ORIGIN}, https://also.example")
    settings = settings_for(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}")
    assert settings.cors_allow_origins == [OK_ORIGIN, "https://also.example"]


# --- security headers -----------------------------------------------------------------------


def hardening_problems(response: Any, docs: bool = False) -> list[str]:
    """What is missing from the security headers every response must carry."""
    headers = response.headers
    wanted = {
        "x-content-type-options": {"nosniff"},
        "x-frame-options": {"DENY"},
        "referrer-policy": {"no-referrer", "same-origin", "strict-origin"},
    }
    problems = [name for name, values in wanted.items() if headers.get(name) not in values]
    policy = headers.get("content-security-policy", "")
    if "frame-ancestors 'none'" not in policy:
        problems.append("content-security-policy frame-ancestors")
    if not docs and "default-src 'none'" not in policy:
        problems.append("content-security-policy default-src")
    return problems


def test_every_kind_of_response_carries_the_security_headers(
    client: TestClient, another_app: Callable[..., TestClient], admin: dict[str, str]
) -> None:
    _, user = sign_up(client)
    reader = key_header(create_key(client, user, scopes=["read"])["key"])
    responses = {
        "ok": client.get("/ping"),
        "json": client.get(MODELS),
        "openapi": client.get("/openapi.json"),
        "metrics": client.get("/metrics", headers=admin),
        "predicted": client.post("/predict", json=WINE_ROW),
        "not-found": client.get("/no/such/page"),
        "no-model": client.get(f"{MODELS}/no-such-model"),
        "method": client.get("/api/v1/auth/login"),
        "unauthorized": client.get(PREDICTIONS),
        "forbidden": client.post("/predict", json=WINE_ROW, headers=reader),
        "invalid": client.post("/predict", json={"ph": 1}),
        "preflight": preflight(client, OK_ORIGIN),
    }
    small = another_app("small", max_request_bytes=LIMIT, rate_limit_anonymous_per_minute=1)
    responses["too-large"] = small.post("/api/v1/auth/login", content=b"x" * (LIMIT + 1))
    responses["too-large-chunked"] = small.post(
        "/api/v1/auth/login", content=_chunks(b" " * 3 * LIMIT)
    )
    small.get(MODELS)
    responses["rate-limited"] = small.get(MODELS)
    closed = another_app("closed", redis_url=closed_port_url(), rate_limit_fail_open=False)
    responses["unavailable"] = closed.get(MODELS)
    expected = {"too-large": 413, "too-large-chunked": 413, "rate-limited": 429, "unavailable": 503}
    assert {name: responses[name].status_code for name in expected} == expected
    problems = {name: hardening_problems(r) for name, r in responses.items()}
    assert {name: found for name, found in problems.items() if found} == {}


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_pages_carry_the_security_headers(client: TestClient, path: str) -> None:
    page = client.get(path)
    assert page.status_code == 200
    assert hardening_problems(page, docs=True) == []
    # The docs load Swagger UI / ReDoc from their CDN and nothing else from elsewhere.
    assert "https://cdn.jsdelivr.net" in page.headers["content-security-policy"]


def test_an_unexpected_error_carries_the_security_headers(
    client: TestClient, tmp_path: Path
) -> None:
    shared = services_of(client).settings
    settings = settings_for(tmp_path, shared.database_url, artifact_store=shared.artifact_store)
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug in a route")

    with TestClient(app, raise_server_exceptions=False) as broken:
        wait_until_ready(broken)
        response = broken.get("/boom")
    assert response.status_code == 500
    assert "a bug in a route" not in response.text
    assert hardening_problems(response) == []
