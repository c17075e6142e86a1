"""The HTTP edge as an attacker sees it: nothing untrusted is read before the caller is allowed,
and addresses, buckets and sign-in throttling cannot be gamed. Every test runs against the real
app on SQLite and PostgreSQL; the upload tests against a real server over a real socket."""

from __future__ import annotations

import random
import select
import socket
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete

from modelport.app import create_app
from modelport.db.base import Base
from modelport.db.engine import create_engine
from modelport.settings import Settings
from tests.auth.accounts_support import from_address
from tests.helpers import bearer, create_account, live_server, run, settings_for
from tests.ratelimit.support import require_redis

MiB = 2**20
UPLOAD_BYTES = 200 * MiB  # what the attacker's upload declares
PIECE_BYTES = 64 * 1024
PACE_SECONDS = 0.25  # how long the slow client waits for an answer before each next piece
GIVE_UP_BYTES = 4 * MiB  # 2 % of the upload sent and still no answer: the server reads it
BOUNDARY = "attacker-boundary"
PASSWORD = "correct horse battery"  # what tests.helpers.create_account gives everyone
AUTH = "/api/v1/auth"


async def _empty(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                await connection.execute(delete(table))
    finally:
        await engine.dispose()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest) -> Iterator[str]:
    """One emptied database per backend for the whole module; every test makes its own
    accounts, models and addresses, so tests do not disturb each other."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    run(_empty(url))
    yield url
    run(_empty(url))


@pytest.fixture(scope="module")
def start_app(
    database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., TestClient]]:
    """Started apps on the module's database, one per name, with the settings given."""
    apps: dict[str, TestClient] = {}
    with ExitStack() as stack:

        def start(name: str, **overrides: Any) -> TestClient:
            if name not in apps:
                settings = settings_for(tmp_path_factory.mktemp(name), database, **overrides)
                apps[name] = stack.enter_context(TestClient(create_app(settings)))
            return apps[name]

        yield start


def new_email(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}@example.com"


def random_address() -> str:
    """An address no other test (or earlier run sharing Redis) has used."""
    return f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"


# --- a real server and a slow client ---------------------------------------------------------


@dataclass
class Edge:
    """The app behind uvicorn on a real port, and who is calling."""

    port: int
    settings: Settings
    alice: dict[str, str]  # owns the private model alices-model
    bob: dict[str, str]  # signed in, owns nothing of alice's
    bob_read_key: dict[str, str]  # an API key of bob's with only the read scope

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def edge(database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    # Upload limits far above the attack, so only the caller check can stop it early.
    settings = settings_for(
        tmp_path_factory.mktemp("edge"),
        database,
        max_upload_bytes=256 * MiB,
        max_model_upload_bytes=256 * MiB,
        anonymous_predictions=False,
        run_jobs=False,
    )
    with live_server(settings, "/health/live") as port:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as client:
            people = {}
            for name in ("alice", "bob"):
                email = new_email(name)
                create_account(settings, email)
                answer = client.post(f"{AUTH}/login", json={"email": email, "password": PASSWORD})
                people[name] = {"Authorization": f"Bearer {answer.json()['access_token']}"}
            created = client.post(
                "/api/v1/models",
                json={"name": "alices-model", "task": "regression", "public": False},
                headers=people["alice"],
            )
            assert created.status_code == 201, created.text
            key = client.post(
                "/api/v1/api-keys", json={"name": "read", "scopes": ["read"]}, headers=people["bob"]
            )
            assert key.status_code == 201, key.text
        yield Edge(port, settings, people["alice"], people["bob"], {"X-API-Key": key.json()["key"]})


def slow_upload() -> Iterator[bytes]:
    """A 200 MB multipart body, one small piece at a time."""
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="huge.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    yield head
    filler = b"a," * (PIECE_BYTES // 2)
    left = UPLOAD_BYTES - len(head)
    while left > 0:
        piece = filler[: min(PIECE_BYTES, left)]
        left -= len(piece)
        yield piece


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    body_bytes_sent: int  # how much of the upload had been handed over when the answer came


def _read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < int(
            _headers(data).get("content-length", "0")
        ):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass  # the server closes without reading the rest; what it sent is already here
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, _headers(data), body


def _headers(data: bytes) -> dict[str, str]:
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def post_slowly(edge: Edge, path: str, headers: dict[str, str]) -> Answer:
    """POST a 200 MB multipart upload, handing over the next piece only after waiting a moment
    for an answer; stops as soon as the server answers."""
    request = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {UPLOAD_BYTES}"]
    request.append(f"Content-Type: multipart/form-data; boundary={BOUNDARY}")
    request.extend(f"{name}: {value}" for name, value in headers.items())
    sent = 0
    with socket.create_connection(("127.0.0.1", edge.port), timeout=30) as sock:
        sock.sendall(("\r\n".join(request) + "\r\n\r\n").encode())
        for piece in slow_upload():
            if select.select([sock], [], [], PACE_SECONDS)[0]:
                break  # the server answered
            if sent >= GIVE_UP_BYTES:
                pytest.fail(f"no answer after {sent} bytes of the body: the server is reading it")
            try:
                sock.sendall(piece)
            except OSError:
                break  # closed on us: the answer is waiting
            sent += len(piece)
        status, answer_headers, body = _read_answer(sock)
    return Answer(status, answer_headers, body, sent)


# Upload routes x callers who may not use them: (route, caller, expected status).
REFUSED_UPLOADS = [
    ("/api/v1/models/alices-model/versions", "anonymous", 401),
    ("/api/v1/models/alices-model/versions", "read-key", 403),
    ("/api/v1/models/alices-model/versions", "bob", 404),  # not his: not even its existence
    ("/api/v1/datasets", "anonymous", 401),
    ("/api/v1/datasets", "read-key", 403),
    ("/api/v1/images/predictions", "anonymous", 401),  # anonymous predictions are off here
    ("/api/v1/images/predictions", "read-key", 403),
    ("/api/v1/models/new-model/train", "anonymous", 401),
    ("/api/v1/models/new-model/train", "read-key", 403),
]


def caller_headers(edge: Edge, caller: str) -> dict[str, str]:
    return {"anonymous": {}, "read-key": edge.bob_read_key, "bob": edge.bob}[caller]


@pytest.mark.parametrize(("path", "caller", "status"), REFUSED_UPLOADS)
def test_an_upload_is_refused_after_its_headers_not_after_its_body(
    edge: Edge, path: str, caller: str, status: int
) -> None:
    answer = post_slowly(edge, path, caller_headers(edge, caller))

    assert answer.status == status, answer.body
    assert b"detail" in answer.body
    # The answer came while at most 2 % of the 200 MB had been handed over ...
    assert answer.body_bytes_sent <= GIVE_UP_BYTES
    # ... and the server hangs up rather than go on receiving the rest.
    assert answer.headers.get("connection") == "close"


def test_a_json_route_refuses_a_large_multipart_body_before_reading_it(edge: Edge) -> None:
    # The caller may predict, but /predict takes JSON: a multipart type earns no upload limit.
    answer = post_slowly(edge, "/predict", edge.bob)

    assert answer.status == 413, answer.body
    assert str(edge.settings.max_request_bytes).encode() in answer.body
    assert answer.body_bytes_sent <= GIVE_UP_BYTES


def test_an_allowed_upload_still_goes_through(edge: Edge) -> None:
    csv = "x,y\n" + "\n".join(f"{i},{i * 2}" for i in range(20))
    response = httpx.post(
        f"{edge.url}/api/v1/datasets",
        files={"file": ("pairs.csv", csv.encode(), "text/csv")},
        data={"name": f"pairs-{uuid.uuid4().hex[:8]}", "description": "twenty pairs"},
        headers=edge.bob,
    )

    assert response.status_code == 201, response.text
    assert (response.json()["row_count"], response.json()["description"]) == (20, "twenty pairs")


# --- the JSON limit follows the route, not the Content-Type ----------------------------------


@pytest.mark.parametrize(
    "path", ["/predict", "/v2/models/wine-quality/infer", f"{AUTH}/login", f"{AUTH}/register"]
)
@pytest.mark.parametrize("streamed", [False, True], ids=["declared", "streamed"])
def test_a_multipart_content_type_does_not_lift_the_json_limit(
    start_app: Callable[..., TestClient], path: str, streamed: bool
) -> None:
    client = start_app("json-limit")
    limit = client.app.state.services.settings.max_request_bytes  # type: ignore[attr-defined]
    body = b"x" * (2 * limit)
    content: Any = iter([body[:limit], body[limit:]]) if streamed else body

    response = client.post(
        path, content=content, headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    )

    assert response.status_code == 413, response.text
    assert str(limit) in response.text


# --- rate-limit costs follow the price of the work -------------------------------------------


@pytest.mark.parametrize(
    ("work", "cost", "send"),
    [
        (
            "training",
            60,
            lambda c, h: c.post(
                "/api/v1/models/priced/train",
                json={"algorithm": "ridge", "X": [[1.0], [2.0], [3.0]], "y": [1.0, 2.0, 3.0]},
                headers=h,
            ),
        ),
        (
            "model upload",
            30,
            lambda c, h: c.post(
                "/api/v1/models/priced/versions", files={"file": ("m.onnx", b"x")}, headers=h
            ),
        ),
        (
            "dataset upload",
            10,
            lambda c, h: c.post("/api/v1/datasets", files={"file": ("d.csv", b"x")}, headers=h),
        ),
        (
            "image upload",
            10,
            lambda c, h: c.post(
                "/api/v1/images/predictions", files={"file": ("p.png", b"x")}, headers=h
            ),
        ),
    ],
)
def test_heavier_work_takes_more_of_the_rate_limit(
    start_app: Callable[..., TestClient],
    work: str,
    cost: int,
    send: Callable[[TestClient, dict[str, str]], httpx.Response],
) -> None:
    client = start_app("priced", run_jobs=False)
    email = new_email("spender")
    create_account(client.app.state.services.settings, email, role="admin")  # type: ignore[attr-defined]
    # A key whose bucket holds exactly one such request and one read.
    created = client.post(
        "/api/v1/api-keys",
        json={
            "name": "metered",
            "scopes": ["predict", "read", "manage"],
            "rate_limit_per_minute": cost + 1,
        },
        headers=bearer(client, email),
    )
    assert created.status_code == 201, created.text
    key = {"X-API-Key": created.json()["key"]}

    first, second = send(client, key), send(client, key)

    assert first.status_code != 429, (work, first.text)
    assert second.status_code == 429, (work, second.text)
    assert f"this request costs {cost}" in second.json()["detail"]
    # What is left still pays for a read, which costs one.
    assert client.get("/api/v1/models", headers=key).status_code == 200


# --- addresses cannot be chosen by the caller ------------------------------------------------


def test_only_a_trusted_proxy_names_the_client(start_app: Callable[..., TestClient]) -> None:
    client = start_app("proxied", trusted_proxies="10.0.0.0/24", rate_limit_anonymous_per_minute=3)

    def read(source: str, forwarded_for: str) -> int:
        answer = from_address(client, source).get(
            "/api/v1/models", headers={"X-Forwarded-For": forwarded_for}
        )
        return answer.status_code

    # Through the proxy (10.0.0.2) each client it names has a bucket of its own ...
    assert [read("10.0.0.2", "198.51.100.7") for _ in range(4)] == [200, 200, 200, 429]
    assert read("10.0.0.2", "198.51.100.8") == 200
    # ... and writing another address in front of the one the proxy appended changes nothing.
    assert read("10.0.0.2", "6.6.6.6, 198.51.100.7") == 429
    # Straight from elsewhere the header is the caller's own claim: the socket address counts.
    direct = [read("203.0.113.9", f"198.51.100.{20 + n}") for n in range(4)]
    assert direct == [200, 200, 200, 429]


def test_an_ipv6_caller_cannot_take_a_fresh_bucket_per_address(
    start_app: Callable[..., TestClient],
) -> None:
    client = start_app("ipv6", rate_limit_anonymous_per_minute=3)
    prefix = f"2001:db8:{random.randrange(1, 0xFFFF):x}:1"

    answers = [
        from_address(client, f"{prefix}::{n + 1:x}").get("/api/v1/models").status_code
        for n in range(4)
    ]

    assert answers == [200, 200, 200, 429]


# --- sign-in throttling cannot be aimed at someone else, nor raced ---------------------------


@pytest.fixture(params=["memory", "redis"])
def sign_in_app(request: pytest.FixtureRequest, start_app: Callable[..., TestClient]) -> TestClient:
    """Default sign-in limits (5 failures per account from one address), buckets in memory or
    shared through the real Redis."""
    if request.param == "redis":
        return start_app("sign-in-redis", redis_url=require_redis())
    return start_app("sign-in-memory")


def sign_in(client: TestClient, email: str, password: str) -> int:
    body = {"email": email, "password": password}
    return client.post(f"{AUTH}/login", json=body).status_code


def test_wrong_passwords_for_someone_s_email_do_not_lock_them_out(sign_in_app: TestClient) -> None:
    victim = new_email("victim")
    create_account(sign_in_app.app.state.services.settings, victim)  # type: ignore[attr-defined]
    attacker = from_address(sign_in_app, random_address())

    guesses = [sign_in(attacker, victim, f"guess number {n}") for n in range(8)]

    assert guesses == [401] * 5 + [429] * 3
    assert sign_in(attacker, victim, PASSWORD) == 429  # right or not, this guesser is stopped
    # The owner, at another address, signs in at once.
    assert sign_in(from_address(sign_in_app, random_address()), victim, PASSWORD) == 200


def test_concurrent_wrong_passwords_are_judged_one_at_a_time(sign_in_app: TestClient) -> None:
    victim = new_email("raced")
    create_account(sign_in_app.app.state.services.settings, victim)  # type: ignore[attr-defined]
    attacker = from_address(sign_in_app, random_address())

    with ThreadPoolExecutor(max_workers=40) as pool:
        answers = list(pool.map(lambda n: sign_in(attacker, victim, f"guess {n}"), range(40)))

    assert sorted(answers) == [401] * 5 + [429] * 35


def test_a_right_password_does_not_use_up_the_allowance(sign_in_app: TestClient) -> None:
    owner = new_email("owner")
    create_account(sign_in_app.app.state.services.settings, owner)  # type: ignore[attr-defined]
    laptop = from_address(sign_in_app, random_address())

    # More sign-ins than the 5 failures allowed: each gives its reserved attempt back.
    assert [sign_in(laptop, owner, PASSWORD) for _ in range(6)] == [200] * 6
    assert sign_in(laptop, owner, "a typo") == 401
