"""A caller who hangs up before sending the whole body is not a server error."""

from __future__ import annotations

import asyncio
import logging

import pytest
from starlette.requests import Request
from starlette.types import Message, Receive, Scope, Send

from modelport.http.middleware import RequestContextMiddleware


def test_a_caller_who_leaves_mid_body_is_no_error(caplog: pytest.LogCaptureFixture) -> None:
    """wrk and impatient clients hang up mid-request: no 500, no error in the log."""

    async def reads_body(scope: Scope, receive: Receive, send: Send) -> None:
        await Request(scope, receive).body()

    app = RequestContextMiddleware(reads_body, max_body_bytes=1024)
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {"type": "http", "method": "POST", "path": "/predict", "headers": []}
    with caplog.at_level(logging.INFO):
        asyncio.run(app(scope, receive, send))

    assert sent == []  # nobody is there to answer
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(getattr(r, "status", None) == 499 for r in caplog.records)
