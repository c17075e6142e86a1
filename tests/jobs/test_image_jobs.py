"""Image classification as a durable job: an upload accepted while no worker runs is
classified after a restart, and two servers sharing one database classify each image once."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from modelport.builtin.imagenet import ConvertedClassifier
from modelport.db.engine import create_engine
from modelport.monitoring.tables import PredictionRecord
from modelport.settings import Settings
from tests.helpers import flush_log, run, services_of
from tests.images.support import (
    PREDICTIONS,
    cat,
    picture,
    register_classifier,
    serve,
    upload,
    wait_for_result,
)


def classifications_logged(database_url: str) -> Counter[str]:
    """How many background classifications the prediction log holds, per image id."""

    async def query() -> Counter[str]:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as connection:
                rows = await connection.execute(
                    select(PredictionRecord.request_id, PredictionRecord.inputs).where(
                        PredictionRecord.model_name == "imagenet-classifier"
                    )
                )
                return Counter(
                    inputs["image_id"]
                    for request_id, inputs in rows
                    if request_id.startswith("job:")
                )
        finally:
            await engine.dispose()

    counted: Counter[str] = run(query())
    return counted


def wait_for_job(client: TestClient, job_id: str, within: float = 60.0) -> dict[str, Any]:
    """The job once it has finished: the image is marked done in the job's own work, and the
    job row a moment later, when the runner records the outcome."""
    deadline = time.monotonic() + within
    while True:
        job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running") or time.monotonic() > deadline:
            return job
        time.sleep(0.05)


def test_a_pending_upload_survives_a_restart(
    make_settings: Callable[..., Settings], classifier: ConvertedClassifier
) -> None:
    settings = make_settings(run_jobs=False)
    register_classifier(settings, classifier)
    with serve(settings) as client:
        accepted = upload(client, cat(), "cat.jpg")
        assert client.get(f"{PREDICTIONS}/{accepted['id']}").json()["status"] == "pending"
        assert client.get(f"/api/v1/jobs/{accepted['job_id']}").json()["status"] == "queued"

    with serve(make_settings(run_jobs=True, job_poll_seconds=0.1)) as restarted:
        result = wait_for_result(restarted, accepted["id"])
        job = wait_for_job(restarted, accepted["job_id"])

    assert result["status"] == "completed"
    assert result["top_prediction"] == "Egyptian cat"
    assert (job["status"], job["attempts"]) == ("succeeded", 1)


def test_two_servers_on_one_database_classify_each_image_exactly_once(
    make_settings: Callable[..., Settings],
    classifier: ConvertedClassifier,
    database_url: str,
) -> None:
    settings = make_settings(run_jobs=True, job_poll_seconds=0.05)
    register_classifier(settings, classifier)

    with serve(settings) as first, serve(settings) as second:
        servers = (first, second)
        accepted = [upload(servers[n % 2], picture(n, (64, 64)), f"p{n}.png") for n in range(10)]
        results = [wait_for_result(servers[n % 2], a["id"]) for n, a in enumerate(accepted)]
        for server in servers:
            flush_log(server)
        ran = [services_of(server).jobs.completed for server in servers]
        jobs = [first.get(f"/api/v1/jobs/{a['job_id']}").json() for a in accepted]

    assert all(result["status"] == "completed" for result in results)
    assert sum(ran) == len(accepted)
    assert classifications_logged(database_url) == Counter({a["id"]: 1 for a in accepted})
    assert all((job["status"], job["attempts"]) == ("succeeded", 1) for job in jobs)
