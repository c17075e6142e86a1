"""One account's queue never holds up everyone else's: owners take turns, an owner has at most
MODELPORT_JOBS_PER_OWNER jobs running, and image classification has its own lane, so it never
waits behind a training."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from modelport.builtin.imagenet import ConvertedClassifier
from modelport.jobs.runner import JobRunner
from modelport.jobs.tables import Job
from modelport.settings import Settings
from tests.helpers import bearer, create_account, run, wait_until_async
from tests.images.support import cat, register_classifier, serve, upload, wait_for_result
from tests.jobs.support import Recorder, enqueue, finish, lease, load, sessions

ALICE, BOB, CAROL = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()


def test_an_owner_at_the_cap_waits_while_another_owners_job_runs(database_url: str) -> None:
    async def scenario() -> None:
        async with sessions(database_url) as factory:
            alice = await enqueue(factory, count=4, owner_id=ALICE)
            (bob,) = await enqueue(factory, owner_id=BOB)

            first = await lease(factory, "worker-1", per_owner=1)
            second = await lease(factory, "worker-2", per_owner=1)
            third = await lease(factory, "worker-3", per_owner=1)

            assert first is not None and first.id == alice[0]
            assert second is not None and second.id == bob  # not Alice's older second job
            assert third is None  # both owners are at their cap
            assert await finish(factory, alice[0], "worker-1", result={})
            after = await lease(factory, "worker-3", per_owner=1)
            assert after is not None and after.id == alice[1]

    run(scenario())


def test_owners_take_turns_on_a_single_worker(database_url: str) -> None:
    async def scenario() -> None:
        async with sessions(database_url) as factory:
            alice = await enqueue(factory, count=3, owner_id=ALICE)
            (bob,) = await enqueue(factory, owner_id=BOB)
            (carol,) = await enqueue(factory, owner_id=CAROL)

            order = []
            while (job := await lease(factory, "the-only-worker")) is not None:
                order.append(job.id)
                assert await finish(factory, job.id, "the-only-worker", result={})

            assert order == [alice[0], bob, carol, alice[1], alice[2]]

    run(scenario())


class Blocking(Recorder):
    """A handler that holds each job until released: a training that takes minutes."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()

    async def __call__(self, job: Job) -> dict[str, Any]:
        self.calls[job.id] += 1
        await self.release.wait()
        return {"number": job.payload["number"]}


def test_a_quick_lane_runs_while_a_long_job_holds_the_other(database_url: str) -> None:
    async def scenario() -> None:
        training, images = Blocking(), Recorder()
        async with sessions(database_url) as factory:
            runner = JobRunner(factory, poll_seconds=0.05, jobs_per_owner=1)
            runner.register("train", training, lane="training")
            runner.register("classify", images, lane="images")
            long_jobs = await enqueue(factory, count=3, kind="train", owner_id=ALICE)
            runner.start()
            try:
                await wait_until_async(lambda: _has_run(training), "a training job to start")
                queued_at = time.monotonic()
                (image,) = await enqueue(factory, kind="classify", owner_id=BOB)
                runner.notify()

                async def classified() -> bool:
                    return (await load(factory, image)).status == "succeeded"

                await wait_until_async(classified, "the image job to finish")
                waited = time.monotonic() - queued_at
                statuses = [(await load(factory, job_id)).status for job_id in long_jobs]
            finally:
                training.release.set()
                await runner.close()

            print(f"\nimage job waited {waited * 1000:.0f} ms while a training job ran")
            assert statuses == ["running", "queued", "queued"]

    run(scenario())


async def _has_run(handler: Recorder) -> bool:
    return bool(handler.calls)


def _sample_rows(n: int = 200) -> dict[str, Any]:
    rows = [[(i * 37) % 101 / 10, (i * 11) % 13 / 3] for i in range(n)]
    return {"X": rows, "y": [2 * a - b for a, b in rows]}


def test_an_image_is_classified_while_another_users_trainings_wait(
    make_settings: Callable[..., Settings], classifier: ConvertedClassifier
) -> None:
    settings = make_settings(job_poll_seconds=0.05)
    register_classifier(settings, classifier)
    for email in ("alice@example.com", "bob@example.com", "carol@example.com"):
        create_account(settings, email)
    with serve(settings) as client:
        alice = bearer(client, "alice@example.com")
        trainings = [
            _train(client, alice, "alice-model", {"algorithm": "ridge", **_sample_rows()})
            for _ in range(4)
        ]
        carol = _train(
            client,
            bearer(client, "carol@example.com"),
            "carol-model",
            {"algorithm": "ridge", **_sample_rows()},
        )
        bob = bearer(client, "bob@example.com")
        started = time.monotonic()
        accepted = upload(client, cat(), "cat.jpg", headers=bob)
        result = wait_for_result(client, accepted["id"], headers=bob)
        waited = time.monotonic() - started
        alice_when_classified = _statuses(client, alice, trainings)
        _wait_for(client, bearer(client, "carol@example.com"), carol)
        alice_when_carol_done = _statuses(client, alice, trainings)

    print(
        f"\nimage job waited {waited * 1000:.0f} ms behind 4 queued trainings of another user;"
        f" Alice's jobs then: {alice_when_classified}"
    )
    assert result["status"] == "completed"
    assert result["top_prediction"] == "Egyptian cat"
    assert alice_when_classified.count("queued") >= 2  # classified long before they ran
    # Carol queued after Alice's four, yet ran before Alice's last ones: owners take turns.
    assert "queued" in alice_when_carol_done


def _train(client: TestClient, headers: dict[str, str], model: str, body: dict[str, Any]) -> str:
    response = client.post(f"/api/v1/models/{model}/train", json=body, headers=headers)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["job_id"]
    return job_id


def _statuses(client: TestClient, headers: dict[str, str], job_ids: list[str]) -> list[str]:
    return [
        client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()["status"] for job_id in job_ids
    ]


def _wait_for(client: TestClient, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/api/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("succeeded", "failed"):
            assert job["status"] == "succeeded", job["error"]
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")
