"""CPU-heavy steps (a large CSV import, a large image decode, password hashing) run off the event
loop: while each runs, the liveness probe keeps answering instead of waiting for the step.

A step that ran on the loop would hold every probe for as long as it runs, so the tests compare
the slowest probe with the step's own duration, both measured in the same run, and print the
probes' latencies for the record (the machine is shared: no absolute time is asserted)."""

from __future__ import annotations

import io
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from modelport.settings import Settings
from tests.helpers import bearer, create_account
from tests.images.support import CLASSIFY, built_in_classifier, register_classifier, serve

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def probe_while(client: TestClient, step: Callable[[], None]) -> tuple[list[float], float]:
    """Run ``step`` in the background and probe liveness until it ends: the probes' latencies
    and the step's duration, in seconds."""
    latencies: list[float] = []
    failure: list[BaseException] = []

    def run_step() -> None:
        try:
            step()
        except BaseException as error:  # re-raised in the test's thread
            failure.append(error)

    worker = threading.Thread(target=run_step)
    started = time.perf_counter()
    worker.start()
    while worker.is_alive():
        sent = time.perf_counter()
        assert client.get("/health/live").status_code == 200
        latencies.append(time.perf_counter() - sent)
        time.sleep(0.005)
    duration = time.perf_counter() - started
    worker.join()
    if failure:
        raise failure[0]
    return latencies, duration


def report(name: str, latencies: list[float], duration: float) -> None:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"\n{name}: step {duration * 1000:.0f} ms; {len(ordered)} liveness probes meanwhile, "
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
        f"max {ordered[-1] * 1000:.1f} ms"
    )


def assert_loop_stayed_free(latencies: list[float], duration: float) -> None:
    # Probes kept being answered during the step, and none waited for most of it.
    assert len(latencies) >= 5
    assert max(latencies) < duration / 2


@pytest.fixture
def app_client(settings: Settings) -> Iterator[TestClient]:
    with serve(settings, preload=False) as client:
        yield client


def big_csv(rows: int) -> bytes:
    """About 65 bytes a row: ``rows`` of eight numeric columns and a label."""
    generator = np.random.default_rng(7)
    values = generator.random((rows, 8))
    lines = ["a,b,c,d,e,f,g,h,label"]
    lines.extend(
        ",".join(f"{v:.5f}" for v in row) + f",{int(row[0] > 0.5)}" for row in values.tolist()
    )
    return "\n".join(lines).encode()


def test_a_large_csv_import_leaves_liveness_answering(
    app_client: TestClient, settings: Settings
) -> None:
    email = f"csv-{uuid.uuid4().hex[:8]}@example.com"
    create_account(settings, email)
    headers = bearer(app_client, email)
    data = big_csv(60_000)  # about 3.8 MiB, the size that held the loop for seconds
    answers: list[int] = []

    def upload() -> None:
        response = app_client.post(
            "/api/v1/datasets",
            headers=headers,
            data={"name": "big-import"},
            files={"file": ("big.csv", data, "text/csv")},
        )
        answers.append(response.status_code)
        assert response.status_code == 201, response.text
        assert response.json()["row_count"] == 60_000

    latencies, duration = probe_while(app_client, upload)
    report(f"CSV import of {len(data) / 1_048_576:.1f} MiB", latencies, duration)
    assert answers == [201]
    assert_loop_stayed_free(latencies, duration)


def test_password_hashing_leaves_liveness_answering(
    app_client: TestClient, settings: Settings
) -> None:
    emails = [f"hash-{n}-{uuid.uuid4().hex[:6]}@example.com" for n in range(4)]
    for email in emails:
        create_account(settings, email)
    statuses: list[int] = []

    def sign_in_burst() -> None:
        def sign_in_four_times(email: str) -> None:
            for _ in range(4):
                response = app_client.post(
                    "/api/v1/auth/login",
                    json={"email": email, "password": "correct horse battery"},
                )
                statuses.append(response.status_code)

        threads = [threading.Thread(target=sign_in_four_times, args=(e,)) for e in emails]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    latencies, duration = probe_while(app_client, sign_in_burst)
    report("16 sign-ins (Argon2) from 4 threads", latencies, duration)
    assert statuses == [200] * 16
    assert_loop_stayed_free(latencies, duration)


@pytest.fixture
def classifier_client(settings: Settings) -> Iterator[TestClient]:
    register_classifier(settings, built_in_classifier())
    with serve(settings) as client:
        yield client


def big_png(width: int, height: int) -> bytes:
    """A smooth gradient: many pixels, few bytes (it compresses well)."""
    ramp = np.linspace(0, 255, width, dtype=np.uint8)
    pixels = np.broadcast_to(ramp[np.newaxis, :, np.newaxis], (height, width, 3))
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, "PNG")
    return buffer.getvalue()


def test_a_large_image_decode_leaves_liveness_answering(classifier_client: TestClient) -> None:
    image = big_png(6_000, 6_000)  # 36 megapixels, under the 40-megapixel limit
    answers: list[int] = []

    def classify() -> None:
        response = classifier_client.post(CLASSIFY, files={"file": ("big.png", image, "image/png")})
        answers.append(response.status_code)
        assert response.status_code == 200, response.text
        assert len(response.json()["predictions"]) == 5

    latencies, duration = probe_while(classifier_client, classify)
    report("classifying a 36-megapixel PNG", latencies, duration)
    assert answers == [200]
    assert_loop_stayed_free(latencies, duration)
