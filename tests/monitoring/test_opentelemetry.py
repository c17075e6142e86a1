"""FastAPI's native OpenTelemetry is off unless MODELPORT_OPENTELEMETRY turns it on: then a
process that configures a tracer provider gets a span for each request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace

from modelport.app import create_app
from tests.helpers import settings_for


class RecordingTracer(trace.NoOpTracer):
    def __init__(self, names: list[str]) -> None:
        self.names = names

    def start_span(self, name: str, *args: Any, **kwargs: Any) -> trace.Span:
        self.names.append(name)
        return trace.INVALID_SPAN


class RecordingProvider(trace.TracerProvider):
    """A tracer provider as an OpenTelemetry SDK would install one, keeping span names."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return RecordingTracer(self.names)


@pytest.mark.parametrize("enabled", [True, False])
def test_requests_are_traced_only_when_opentelemetry_is_turned_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    provider = RecordingProvider()
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    settings = settings_for(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    settings = settings.model_copy(update={"opentelemetry": enabled})

    with TestClient(create_app(settings)) as client:
        assert client.get("/health/live").status_code == 200

    assert ("GET" in provider.names) is enabled  # the server span of the request
    assert bool(provider.names) is enabled
