"""Requests generated from the OpenAPI document, sent to the real app in process, as four callers.

Every operation is called as an anonymous caller, a signed-in user, an administrator and with a
user's API key; schemathesis generates valid and invalid requests from the document and checks
each answer: never 5xx, a documented status, a body and headers matching the documented schema,
invalid requests refused, required credentials enforced.

The app runs once per module on SQLite with the wine model loaded. MODELPORT_FUZZ_EXAMPLES sets
how many requests each operation gets per caller in the fuzzing phase (a few by default; `make
fuzz` asks for many more); MODELPORT_FUZZ_SEED (default: a fixed seed, so CI runs are
repeatable) picks the requests; `make fuzz` draws a new one each run.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig
from schemathesis.python import asgi

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from modelport.db.migrate import upgrade
from tests.helpers import create_account, register_trained, settings_for

EXAMPLES = int(os.environ.get("MODELPORT_FUZZ_EXAMPLES", "3"))
SEED = int(os.environ.get("MODELPORT_FUZZ_SEED", "20240611"))
# The coverage phase (every boundary and every kind of invalid value the document allows,
# unexpected methods included) is most of the requests: by default only the administrator,
# whom no route refuses, runs it; MODELPORT_FUZZ_ALL_PHASES=1 runs it for every caller.
ALL_PHASES = os.environ.get("MODELPORT_FUZZ_ALL_PHASES", "") == "1"
PASSWORD = "correct horse battery"

# Checks that cannot hold for an operation whose valid input is more than its schema can say,
# each with the reason (docs/reliability.md lists them):
CONTENT_BEYOND_SCHEMA = [
    # The body's fields are the model's signature, known only once a model is chosen; a
    # schema-valid body for another model is rightly 422.
    "/predict",
    "/api/v1/models/{name}/predict",
    "/api/v1/models/{name}/versions/{version}/predict",
    "/v2/models/{name}/infer",
    "/v2/models/{name}/versions/{version}/infer",
    # Files: a model, a CSV or an image is judged by its bytes, which no schema describes.
    "/api/v1/models/{name}/versions",
    "/api/v1/datasets",
    "/api/v1/images/predictions",
    "/api/v1/models/{name}/train",
    # The password policy (at least 4 different characters, not the email address) and the
    # email syntax say more than a JSON Schema can.
    "/api/v1/auth/register",
]


def _config(coverage: bool) -> SchemathesisConfig:
    return SchemathesisConfig.from_dict(
        {
            "seed": SEED,
            "phases": {"coverage": {"enabled": coverage}},
            "operations": [
                {
                    "include-path": CONTENT_BEYOND_SCHEMA,
                    "checks": {"positive_data_acceptance": {"enabled": False}},
                }
            ],
        }
    )


def _document() -> dict[str, Any]:
    """The app's OpenAPI document (building the app starts nothing: no database, no files)."""
    never_started = settings_for(
        var_dir=Path("/nonexistent/modelport-fuzz"), database_url="sqlite+aiosqlite://"
    )
    return create_app(never_started).openapi()


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


class LongLivedApp:
    """The app as schemathesis sees it: schemathesis starts and stops an app's lifespan around
    every operation's test, so the real app's lifespan is run here once instead, on the event
    loop schemathesis sends requests on, and the lifespan it asks for is declined."""

    def __init__(self) -> None:
        self.app = FastAPI()  # the real one is set by the fixture
        self.callers: dict[str, dict[str, str]] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("lifespan runs once, in LongLivedApp")  # read as "not supported"
        if self._task is None:
            self.loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._lifespan())
            while not self._started.is_set():
                await asyncio.sleep(0.01)
        await self.app(scope, receive, send)

    async def _lifespan(self) -> None:
        assert self._stop is not None
        async with self.app.router.lifespan_context(self.app):
            self._started.set()
            await self._stop.wait()

    def stop(self) -> None:
        if self.loop is None or self._task is None or self._stop is None:
            return
        stop, task = self._stop, self._task

        async def finish() -> None:
            stop.set()
            await task

        asyncio.run_coroutine_threadsafe(finish(), self.loop).result(timeout=60)


APP = LongLivedApp()
DOCUMENT = _document()
thorough = schemathesis.openapi.from_dict(DOCUMENT, config=_config(coverage=True))
quick = schemathesis.openapi.from_dict(DOCUMENT, config=_config(coverage=ALL_PHASES))
for _schema in (thorough, quick):
    _schema.app = APP  # every request, and every probe a check sends, goes to the app in process


@pytest.fixture(scope="module")
def fuzzed_app(
    tmp_path_factory: pytest.TempPathFactory, trained_wine: TrainedWine
) -> Iterator[LongLivedApp]:
    """The app with the wine model registered and loaded, a user, an admin and the user's key."""
    root = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite+aiosqlite:///{root / 'modelport.db'}"
    upgrade(url)
    # Jobs stay queued: training random forests on generated data would only slow the run.
    app_settings = settings_for(var_dir=root / "var", database_url=url, run_jobs=False)
    register_trained(app_settings, trained_wine)
    app = APP
    app.app = create_app(app_settings)
    callers = app.callers
    callers["anonymous"] = {}
    with asgi.get_client(app) as client:
        for role in ("user", "admin"):
            email = f"{role}-{uuid.uuid4().hex[:8]}@example.com"
            create_account(app_settings, email, PASSWORD, role=role)
            body = {"email": email, "password": PASSWORD}
            signed_in = client.post("/api/v1/auth/login", json=body)
            assert signed_in.status_code == 200, signed_in.text
            callers[role] = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
        created = client.post("/api/v1/api-keys", json={"name": "fuzz"}, headers=callers["user"])
        assert created.status_code == 201, created.text
        callers["api_key"] = {"X-API-Key": created.json()["key"]}
        deadline = time.monotonic() + 60
        while client.get("/health/ready").status_code != 200:
            assert time.monotonic() < deadline, "the wine model never loaded"
            time.sleep(0.05)
    yield app
    with contextlib.suppress(Exception):
        app.stop()


CREDENTIAL_HEADERS = {"authorization", "x-api-key"}


def fuzz(case: Any, app: LongLivedApp, caller: str) -> None:
    """Send the case as ``caller``. A signed-in caller sends only its own credentials: beside a
    valid API key the server would ignore a generated Bearer token (the key is read first), and
    a generated key beside a valid token would only make the case a 401 (the anonymous run
    sends generated credentials alone, and those must be refused)."""
    credentials = app.callers[caller]
    if credentials and case.headers:
        case.headers = {
            name: value
            for name, value in case.headers.items()
            if name.lower() not in CREDENTIAL_HEADERS
        }
    case.call_and_validate(headers=dict(credentials))


@quick.parametrize()
@FUZZ
def test_anonymous(case: Any, fuzzed_app: LongLivedApp) -> None:
    fuzz(case, fuzzed_app, "anonymous")


@quick.parametrize()
@FUZZ
def test_user(case: Any, fuzzed_app: LongLivedApp) -> None:
    fuzz(case, fuzzed_app, "user")


@thorough.parametrize()
@FUZZ
def test_admin(case: Any, fuzzed_app: LongLivedApp) -> None:
    fuzz(case, fuzzed_app, "admin")


@quick.parametrize()
@FUZZ
def test_api_key(case: Any, fuzzed_app: LongLivedApp) -> None:
    fuzz(case, fuzzed_app, "api_key")
