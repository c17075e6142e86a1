"""Size limits: too many rows or too many bytes is a 413 that says the limit, never a 500."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient

from modelport.builtin.wine import TrainedWine
from modelport.settings import Settings
from tests.helpers import WINE_ROW, register_trained
from tests.registry.support import serve
from tests.serving.support import GENERIC, WINE, assert_names, raw


@pytest.fixture
def limited_client(
    make_settings: Callable[..., Settings], trained_wine: TrainedWine
) -> Iterator[TestClient]:
    settings = make_settings(max_batch_rows=3, max_request_bytes=2048)
    register_trained(settings, trained_wine)
    with serve(settings) as client:
        yield client


def test_more_rows_than_the_limit_is_413(limited_client: TestClient) -> None:
    accepted = limited_client.post(GENERIC, json={"inputs": [WINE_ROW] * 3})
    refused = limited_client.post(GENERIC, json={"inputs": [WINE_ROW] * 4})

    assert accepted.status_code == 200
    assert len(accepted.json()["predictions"]) == 3
    assert refused.status_code == 413
    assert_names(refused.json()["detail"], ["body"], "at most 3 rows")


@pytest.mark.parametrize("url", [WINE, GENERIC])
def test_body_over_the_byte_limit_is_413(limited_client: TestClient, url: str) -> None:
    padded = raw(WINE_ROW)[:-1] + b" " * 2048 + b"}"

    response = limited_client.post(url, content=padded)

    assert response.status_code == 413
    assert_names(response.json()["detail"], ["body"], "larger than 2048 bytes")


def test_streamed_body_over_the_byte_limit_is_413(limited_client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must hold while reading
        yield raw(WINE_ROW)[:-1]
        for _ in range(10):
            yield b" " * 500
        yield b"}"

    response = limited_client.post(GENERIC, content=chunks())

    assert response.status_code == 413
    assert_names(response.json()["detail"], ["body"], "larger than 2048 bytes")
    assert limited_client.post(GENERIC, json=WINE_ROW).status_code == 200
