"""Training over HTTP: 202 and a durable job that registers a verified new version."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.settings import Settings
from tests.helpers import bearer, create_account

TRAIN = "/api/v1/models/{}/train"


@pytest.fixture
def app(make_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = make_settings(job_poll_seconds=0.05)
    create_account(settings, "trainer@example.com")
    with TestClient(create_app(settings)) as client:
        yield client, bearer(client, "trainer@example.com")


def finished_job(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    """Poll the job until it ends (a bounded wait, not a timing assertion)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def sample(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get("/api/v1/ml/sample-data", params={"n": 120, "features": 3, **params})
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data


def test_sample_data_is_a_learnable_regression(app: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = app

    data = sample(client, noise=0)

    assert len(data["X"]) == 120 and len(data["X"][0]) == 3 and len(data["y"]) == 120
    assert data["feature_names"] == ["x0", "x1", "x2"]
    # noise=0: y is exactly the linear combination the coefficients describe
    x0 = data["X"][0]
    assert sum(c * v for c, v in zip(data["coefficients"], x0, strict=True)) == pytest.approx(
        data["y"][0], abs=1e-3
    )
    assert client.get("/api/v1/ml/sample-data", params={"n": 5}).status_code == 422


@pytest.mark.parametrize(
    "algorithm", ["linear_regression", "ridge", "random_forest", "gradient_boosting"]
)
def test_inline_rows_train_a_new_version_with_holdout_metrics(
    app: tuple[TestClient, dict[str, str]], algorithm: str
) -> None:
    client, headers = app
    data = sample(client)

    accepted = client.post(
        TRAIN.format("sample"),
        json={
            "algorithm": algorithm,
            "X": data["X"],
            "y": data["y"],
            "params": {"n_estimators": 20}
            if algorithm in ("random_forest", "gradient_boosting")
            else {},
        },
        headers=headers,
    )

    assert accepted.status_code == 202, accepted.text
    job = finished_job(client, headers, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert result["version"] == 1
    assert result["metrics"]["holdout_rows"] == 24
    assert result["metrics"]["holdout_r2"] > 0.5
    row = dict(zip(data["feature_names"], data["X"][0], strict=True))
    answer = client.post("/api/v1/models/sample/predict", json=row, headers=headers)
    assert answer.status_code == 200, answer.text
    version = client.get("/api/v1/models/sample/versions/1", headers=headers).json()
    assert version["metrics"]["holdout_r2"] == pytest.approx(result["metrics"]["holdout_r2"])
    assert version["details"]["source_flavor"] in ("skops", "sklearn")


def test_csv_upload_trains_a_classifier(app: tuple[TestClient, dict[str, str]]) -> None:
    client, headers = app
    lines = ["size,weight,kind"] + [
        f"{i % 10},{(i % 10) * 2 + 0.5},{'big' if i % 10 >= 5 else 'small'}" for i in range(80)
    ]

    accepted = client.post(
        TRAIN.format("sizes"),
        files={"file": ("sizes.csv", "\n".join(lines).encode(), "text/csv")},
        data={"algorithm": "logistic_regression", "target": "kind"},
        headers=headers,
    )

    assert accepted.status_code == 202, accepted.text
    job = finished_job(client, headers, accepted.json()["job_id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["metrics"]["holdout_accuracy"] == 1.0
    answer = client.post(
        "/api/v1/models/sizes/predict", json={"size": 9, "weight": 18.5}, headers=headers
    ).json()
    assert answer["predictions"][0]["label"] == "big"
    assert set(answer["predictions"][0]["probabilities"]) == {"big", "small"}


def test_registered_dataset_trains_and_a_second_job_adds_version_2(
    app: tuple[TestClient, dict[str, str]],
) -> None:
    client, headers = app
    data = sample(client)
    csv = "x0,x1,x2,y\n" + "\n".join(
        ",".join(str(v) for v in [*row, y]) for row, y in zip(data["X"], data["y"], strict=True)
    )
    created = client.post(
        "/api/v1/datasets",
        files={"file": ("data.csv", csv.encode(), "text/csv")},
        data={"name": "samples"},
        headers=headers,
    )
    assert created.status_code == 201, created.text
    assert created.json()["row_count"] == 120

    for expected_version in (1, 2):
        accepted = client.post(
            TRAIN.format("from-dataset"),
            json={"algorithm": "ridge", "dataset": "samples", "target": "y"},
            headers=headers,
        )
        job = finished_job(client, headers, accepted.json()["job_id"])
        assert job["result"]["version"] == expected_version

    model = client.get("/api/v1/models/from-dataset", headers=headers).json()
    assert model["aliases"] == {"production": 1}  # later versions wait to be promoted


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"algorithm": "ridge"}, "body"),
        ({"algorithm": "ridge", "X": [[1.0]], "y": [1.0, 2.0]}, "body"),
        ({"algorithm": "sorcery", "X": [[1.0]], "y": [1.0]}, "algorithm"),
        ({"algorithm": "ridge", "dataset": "nope", "target": "y"}, None),
        (
            {"algorithm": "ridge", "X": [[1.0], [2.0]], "y": [1, 2], "params": {"depth": 3}},
            "params",
        ),
        (
            {
                "algorithm": "random_forest",
                "X": [[1.0]],
                "y": [1],
                "params": {"n_estimators": 100000},
            },
            "params",
        ),
        ({"algorithm": "ridge", "X": [[1.0], [1.0, 2.0]], "y": [1, 2]}, "X"),
    ],
)
def test_bad_training_requests_are_refused_with_a_reason(
    app: tuple[TestClient, dict[str, str]], body: dict[str, Any], field: str | None
) -> None:
    client, headers = app

    response = client.post(TRAIN.format("bad"), json=body, headers=headers)

    if field is None:
        assert response.status_code == 404  # the dataset does not exist (or is not theirs)
        return
    assert response.status_code == 422, response.text
    assert any(
        field in map(str, error["loc"]) or field == "body" for error in response.json()["detail"]
    )


def test_data_that_cannot_train_fails_the_job_with_a_message(
    app: tuple[TestClient, dict[str, str]],
) -> None:
    client, headers = app

    accepted = client.post(
        TRAIN.format("tiny"),
        json={"algorithm": "ridge", "X": [[1.0], [2.0], [3.0]], "y": [1, 2, 3]},
        headers=headers,
    )

    job = finished_job(client, headers, accepted.json()["job_id"])
    assert job["status"] == "failed"
    assert "at least 10" in job["error"]


def test_training_needs_an_account(app: tuple[TestClient, dict[str, str]]) -> None:
    client, _ = app

    response = client.post(TRAIN.format("x"), json={"algorithm": "ridge", "X": [[1]], "y": [1]})

    assert response.status_code in (401, 403)


def test_a_job_accepted_before_a_restart_runs_after_it(
    make_settings: Callable[..., Settings],
) -> None:
    quiet = make_settings(run_jobs=False)
    create_account(quiet, "patient@example.com")
    with TestClient(create_app(quiet)) as client:
        headers = bearer(client, "patient@example.com")
        data = sample(client)
        accepted = client.post(
            TRAIN.format("later"),
            json={"algorithm": "ridge", "X": data["X"], "y": data["y"]},
            headers=headers,
        )
        job_id = accepted.json()["job_id"]
        assert client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()["status"] == "queued"

    with TestClient(create_app(make_settings(job_poll_seconds=0.05))) as client:
        headers = bearer(client, "patient@example.com")
        job = finished_job(client, headers, job_id)

    assert job["status"] == "succeeded"
    assert job["attempts"] == 1
