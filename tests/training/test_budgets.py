"""Training budgets: a job that would cost too much is refused when submitted; one that runs
past its time or memory limit, or trains a model too large to store, is stopped and failed
with a message saying which limit and what to change, while the server goes on with other
jobs; and its process does not outlive the server."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.settings import Settings
from modelport.training import budget
from tests.helpers import bearer, create_account

TRAIN = "/api/v1/models/{}/train"
CHILD = "modelport.training.child"


def random_rows(rows: int, features: int = 4, seed: int = 0) -> dict[str, Any]:
    """Noise: nothing to learn, so unlimited trees grow as deep as the rows allow."""
    rng = np.random.default_rng(seed)
    return {
        "X": rng.integers(0, 10_000, size=(rows, features)).tolist(),
        "y": rng.integers(0, 1000, size=rows).tolist(),
    }


def small_rows() -> dict[str, Any]:
    rows = [[(i * 37) % 101 / 10, (i * 11) % 13 / 3] for i in range(120)]
    return {"X": rows, "y": [2 * a - b for a, b in rows]}


@pytest.fixture
def start(
    make_settings: Callable[..., Settings],
) -> Iterator[Callable[..., tuple[TestClient, dict[str, str]]]]:
    """Start the app with the given settings and a signed-in user."""
    clients: list[TestClient] = []

    def started(**overrides: Any) -> tuple[TestClient, dict[str, str]]:
        settings = make_settings(job_poll_seconds=0.05, **overrides)
        create_account(settings, "trainer@example.com")
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return client, bearer(client, "trainer@example.com")

    yield started
    for client in clients:
        client.__exit__(None, None, None)


def submit(client: TestClient, headers: dict[str, str], model: str, body: dict[str, Any]) -> str:
    response = client.post(TRAIN.format(model), json=body, headers=headers)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def finished(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def training_children() -> list[int]:
    """This process's training processes still alive (not zombies)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == os.getpid() and state != "Z" and CHILD.encode() in cmdline:
            found.append(int(entry.name))
    return found


# --- refused when submitted -------------------------------------------------------------------


def test_the_forest_that_ran_for_seven_minutes_is_refused_when_submitted(
    start: Callable[..., tuple[TestClient, dict[str, str]]],
) -> None:
    client, headers = start()
    body = {
        "algorithm": "random_forest",
        "params": {"n_estimators": 500, "max_depth": 64},
        **random_rows(20_000, features=2),
    }

    response = client.post(TRAIN.format("huge-forest"), json=body, headers=headers)

    assert response.status_code == 422, response.text
    message = response.json()["detail"][0]["msg"]
    assert "20,000 rows x 500 trees x depth 64" in message
    assert "MODELPORT_TRAINING_MAX_COST" in message
    assert "lower n_estimators or max_depth" in message
    # Nothing was kept: no model, no job.
    assert client.get("/api/v1/models/huge-forest", headers=headers).status_code == 404


def test_a_registered_dataset_too_large_for_the_forest_is_refused_before_queueing(
    start: Callable[..., tuple[TestClient, dict[str, str]]],
) -> None:
    client, headers = start(training_max_cost=1_000_000)
    data = random_rows(2_000, features=3)
    csv = "a,b,c,y\n" + "\n".join(
        ",".join(map(str, [*row, y])) for row, y in zip(data["X"], data["y"], strict=True)
    )
    created = client.post(
        "/api/v1/datasets",
        files={"file": ("rows.csv", csv.encode(), "text/csv")},
        data={"name": "rows"},
        headers=headers,
    )
    assert created.status_code == 201, created.text

    response = client.post(
        TRAIN.format("from-rows"),
        json={"algorithm": "random_forest", "dataset": "rows", "target": "y"},
        headers=headers,
    )

    assert response.status_code == 422, response.text
    message = response.json()["detail"][0]["msg"]
    counted = budget.unlimited_depth(2_000)
    assert f"2,000 rows x 100 trees x unlimited depth counted as {counted}" in message
    assert "over the limit of 1,000,000 per job (MODELPORT_TRAINING_MAX_COST)" in message


@pytest.mark.parametrize(
    ("algorithm", "params", "expected"),
    [
        ("logistic_regression", {"max_iter": 5000}, "2,000 rows x max_iter 5,000"),
        ("gradient_boosting", {"n_estimators": 500}, "2,000 rows x 500 trees x depth 3"),
    ],
)
def test_each_algorithm_is_priced_by_its_own_passes_over_the_rows(
    start: Callable[..., tuple[TestClient, dict[str, str]]],
    algorithm: str,
    params: dict[str, Any],
    expected: str,
) -> None:
    client, headers = start(training_max_cost=2_000_000)
    rows = random_rows(2_000, features=2)
    if algorithm == "logistic_regression":
        rows["y"] = [value % 2 for value in rows["y"]]

    refused = client.post(
        TRAIN.format("priced"),
        json={"algorithm": algorithm, "params": params, **rows},
        headers=headers,
    )
    fits = client.post(
        TRAIN.format("linear"), json={"algorithm": "linear_regression", **rows}, headers=headers
    )

    assert refused.status_code == 422, refused.text
    assert expected in refused.json()["detail"][0]["msg"]
    assert fits.status_code == 202, fits.text  # 2,000 rows x 2 features


# --- stopped while running --------------------------------------------------------------------


def test_a_job_past_its_time_limit_is_stopped_and_the_next_job_runs(
    start: Callable[..., tuple[TestClient, dict[str, str]]],
) -> None:
    client, headers = start(training_time_limit_seconds=8, training_max_cost=10**10)
    slow = submit(
        client,
        headers,
        "slow-forest",
        {"algorithm": "random_forest", "params": {"n_estimators": 500}, **random_rows(20_000)},
    )
    quick = submit(client, headers, "quick", {"algorithm": "ridge", **small_rows()})

    began = time.monotonic()
    stopped = finished(client, headers, slow)
    took = time.monotonic() - began
    after = finished(client, headers, quick)

    print(f"\nthe slow job failed {took:.1f} s after it was submitted (8 s of training)")
    assert (stopped["status"], stopped["attempts"]) == ("failed", 1)
    assert stopped["error"].startswith("training stopped after 8 s")
    assert "MODELPORT_TRAINING_TIME_LIMIT_SECONDS" in stopped["error"]
    assert "lower n_estimators or max_depth" in stopped["error"]
    assert after["status"] == "succeeded", after["error"]
    model = client.get("/api/v1/models/slow-forest", headers=headers).json()
    assert model["latest_version"] is None
    assert training_children() == []


def test_a_job_past_its_memory_limit_is_stopped_with_a_message(
    start: Callable[..., tuple[TestClient, dict[str, str]]],
) -> None:
    client, headers = start(training_memory_limit_bytes=64 * 1024**2)

    job = finished(
        client,
        headers,
        submit(
            client,
            headers,
            "big-forest",
            {"algorithm": "random_forest", "params": {"n_estimators": 300}, **random_rows(5_000)},
        ),
    )

    assert (job["status"], job["attempts"]) == ("failed", 1)
    assert "needed more memory than the limit of 64.0 MB per job" in job["error"]
    assert "MODELPORT_TRAINING_MEMORY_LIMIT_BYTES" in job["error"]


def test_a_model_over_the_artifact_limit_is_not_stored(
    start: Callable[..., tuple[TestClient, dict[str, str]]],
) -> None:
    client, headers = start(training_max_artifact_bytes=64 * 1024)

    job = finished(
        client,
        headers,
        submit(
            client,
            headers,
            "wide-forest",
            {"algorithm": "random_forest", "params": {"n_estimators": 50}, **random_rows(500)},
        ),
    )

    assert job["status"] == "failed"
    assert (
        "over the limit of 64 KB per model (MODELPORT_TRAINING_MAX_ARTIFACT_BYTES)" in job["error"]
    )
    model = client.get("/api/v1/models/wide-forest", headers=headers).json()
    assert model["latest_version"] is None


def test_the_training_process_ends_with_the_server(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(job_poll_seconds=0.05, training_max_cost=10**10)
    create_account(settings, "trainer@example.com")
    with TestClient(create_app(settings)) as client:
        headers = bearer(client, "trainer@example.com")
        submit(
            client,
            headers,
            "endless",
            {"algorithm": "random_forest", "params": {"n_estimators": 500}, **random_rows(20_000)},
        )
        deadline = time.monotonic() + 60
        while not (children := training_children()):
            assert time.monotonic() < deadline, "the training process never started"
            time.sleep(0.05)
    # The server has shut down while the job ran: its training process is gone with it.

    assert children and training_children() == []
