"""The whole system under faults: two API servers and a job runner (real processes) sharing
PostgreSQL, Redis and S3, while a load loop sends predictions. Each test takes one part away
mid-load, gives it back, and checks what a user would notice: every answer is a 200 or a 503
with Retry-After (never another 5xx), every 200 has its prediction log row, and the system
recovers. The measured figures are printed (pytest -s shows them)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from modelport.builtin.wine import FEATURE_NAMES, TrainedWine, read_wine_csv
from tests.conftest import POSTGRES_URL
from tests.helpers import wait_until
from tests.processes import kill
from tests.system.harness import LOOK_EVERY, Load, LoadReport, System, running_system

LOG_ROWS_DEADLINE = 60.0  # a hang guard: spooled rows are replayed within seconds


@pytest.fixture(scope="module")
def system(
    postgres_url: str, tmp_path_factory: pytest.TempPathFactory, trained_wine: TrainedWine
) -> Iterator[System]:
    """One system for the module (starting three servers is the slow part); each test gives
    back what it took away. ``postgres_url`` makes PostgreSQL a requirement (a failure with
    CI=true); the system makes a database of its own beside it."""
    root = tmp_path_factory.mktemp("system")
    with running_system(root, POSTGRES_URL, trained_wine) as started:
        yield started


def assert_every_answer_was_kept(system: System, load: Load, report: LoadReport) -> int:
    """No answer but 200 or 503 (with Retry-After), and one log row per 200; seconds until the
    last row reached the database."""
    bad = {status: n for status, n in report.statuses.items() if status not in (200, 503)}
    assert not bad, f"{report.summary()}; bodies: {report.bodies}"
    assert report.retry_after_missing == 0, report.bodies
    assert report.ok > 0, report.summary()

    def logged() -> bool:
        return system.database.logged_successes(load.prefix) >= report.ok

    waited = wait_until(logged, "every 200 answer logged", LOG_ROWS_DEADLINE, interval=0.5)
    rows = system.database.logged_successes(load.prefix)
    assert rows == report.ok, f"{rows} log rows for {report.ok} answers"
    return int(waited)


def test_postgresql_cut_mid_load_loses_no_log_row_and_readiness_recovers(
    system: System,
) -> None:
    # Callers with an API key are answered while their key is remembered (2 s), then 503;
    # anonymous callers of the public model go on being answered from the model in memory,
    # so their log rows pile up past the buffer and go through the spool file.
    server = system.servers[0]
    spooled_metric = "modelport_prediction_log_spooled_rows_total"
    spooled_before = system.metric(spooled_metric, reason="buffer_full")
    with (
        Load(system, "dbcut") as load,
        Load(system, "anonymous-dbcut", anonymous=True) as anonymous,
    ):
        time.sleep(1.5)
        system.proxy.stop()  # every connection to PostgreSQL cut, new ones refused
        cut_at = time.monotonic()
        flipped = wait_until(
            lambda: system.ready(server) == 503, "readiness turning 503", 20, LOOK_EVERY
        )
        time.sleep(2.0)
        during = load.statuses()
        system.proxy.start()
        back = wait_until(
            lambda: all(system.ready(s) == 200 for s in system.servers),
            "ready again",
            30,
            LOOK_EVERY,
        )
        outage = time.monotonic() - cut_at
        time.sleep(1.0)
    report, anonymous_report = load.report, anonymous.report

    waited = assert_every_answer_was_kept(system, load, report)
    assert set(anonymous_report.statuses) == {200}, anonymous_report.summary()
    assert_every_answer_was_kept(system, anonymous, anonymous_report)
    spooled = system.metric(spooled_metric, reason="buffer_full") - spooled_before
    assert spooled > 0  # past the in-memory buffer, rows went through the spool file
    print(
        f"\n[postgres cut] with an API key: {report.summary()}; anonymous: "
        f"{anonymous_report.summary()}; {spooled:.0f} log rows spooled and replayed; "
        f"outage {outage:.1f} s; not ready after {flipped:.1f} s; ready {back:.1f} s after the "
        f"database returned; API-key answers until the end of the outage {during}; log rows "
        f"{report.ok + anonymous_report.ok} of {report.ok + anonymous_report.ok} 200s (last one "
        f"written {waited} s after the load stopped); log rows lost: 0"
    )


def test_redis_stopped_mid_load_the_limiter_does_as_configured_and_resumes(
    system: System,
) -> None:
    # Server a refuses while its limiter cannot reach Redis; b (the default) lets requests
    # through. Either way: counted in a metric, never a 500, and Redis is used again once back.
    closed, open_ = system.restart("a", MODELPORT_RATE_LIMIT_FAIL_OPEN="false"), system.servers[1]
    errors = "modelport_ratelimit_backend_errors_total"
    refused_before = system.metric(errors, outcome="refused")
    allowed_before = system.metric(errors, outcome="allowed")
    with Load(system, "redis") as load:
        time.sleep(1.0)
        system.redis.stop()
        time.sleep(3.0)  # longer than a lease of rate-limit tokens: Redis is asked again
        readiness = {"closed": system.ready(closed), "open": system.ready(open_)}
        redis_state = system.health(open_)["redis"]["status"]
        system.redis.start()
        wait_until(
            lambda: system.ready(closed) == 200,
            "the fail-closed server ready again",
            20,
            LOOK_EVERY,
        )
        time.sleep(1.0)
    report = load.report
    refused = system.metric(errors, outcome="refused") - refused_before
    allowed = system.metric(errors, outcome="allowed") - allowed_before

    assert set(report.of(open_)) == {200}, f"{report.summary()}; bodies: {report.bodies}"
    assert set(report.of(closed)) == {200, 503}, f"{report.summary()}; bodies: {report.bodies}"
    assert "rate limiter cannot be reached" in report.bodies[503]
    assert not report.transport_errors, report.summary()
    assert refused > 0 and allowed > 0
    assert readiness == {"closed": 503, "open": 200}  # Redis is required only when failing closed
    assert redis_state == "down"
    assert_every_answer_was_kept(system, load, report)

    # Redis is back: the limiters use it again (buckets reappear, no more backend errors).
    wait_until(lambda: system.redis.keys() > 0, "rate-limit buckets back in Redis", 20, LOOK_EVERY)
    settled = system.metric(errors, outcome="refused") + system.metric(errors, outcome="allowed")
    with Load(system, "redis-after") as after:
        time.sleep(2.5)
    assert set(after.report.statuses) == {200}, after.report.summary()
    now = system.metric(errors, outcome="refused") + system.metric(errors, outcome="allowed")
    assert now == settled
    print(
        f"\n[redis stopped 3 s] {report.summary()}; fail-closed server {report.of(closed)}, "
        f"fail-open server {report.of(open_)}; limiter checks without Redis: {refused:.0f} "
        f"refused, {allowed:.0f} let through; readiness {readiness}; after Redis returned: "
        f"{after.report.summary()}, 0 new backend errors"
    )


def test_s3_stopped_loaded_models_keep_serving_and_uploads_answer_503(
    system: System,
) -> None:
    base = system.servers[0].base_url
    created = httpx.post(
        f"{base}/api/v1/models",
        json={"name": "uploaded-wine", "task": "regression"},
        headers=system.admin,
        timeout=30,
    )
    assert created.status_code == 201, created.text

    def upload() -> httpx.Response:
        return httpx.post(
            f"{base}/api/v1/models/uploaded-wine/versions",
            files={
                "file": ("wine.onnx", system.trained_wine.onnx_bytes, "application/octet-stream")
            },
            headers=system.admin,
            timeout=60,
        )

    with Load(system, "s3") as load:
        time.sleep(1.0)
        system.s3.stop()
        refused = upload()
        reported = wait_until(
            lambda: system.health(system.servers[0])["artifact_store"]["status"] == "down",
            "the artifact store reported down",
            10,
            LOOK_EVERY,
        )
        readiness = [system.ready(s) for s in system.servers]
        time.sleep(1.0)
        system.s3.start()
    report = load.report

    assert refused.status_code == 503, refused.text
    message = refused.json()["detail"]
    assert "artifact store cannot be reached" in message and "retry" in message, message
    assert system.s3.endpoint_url not in refused.text and "127.0.0.1" not in refused.text
    assert refused.headers.get("retry-after")
    assert set(report.statuses) == {200}, f"{report.summary()}; bodies: {report.bodies}"
    assert readiness == [200, 200]  # loaded models still serve: ready, the store reported down
    assert_every_answer_was_kept(system, load, report)

    wait_until(
        lambda: system.health(system.servers[0])["artifact_store"]["status"] == "up",
        "the artifact store reported up again",
        10,
        LOOK_EVERY,
    )
    accepted = upload()
    assert accepted.status_code == 201, accepted.text
    print(
        f"\n[s3 stopped] {report.summary()}; upload answered {refused.status_code}: "
        f"{message!r}; store reported down after {reported:.1f} s; readiness {readiness}; "
        f"upload after the store returned: {accepted.status_code}"
    )


def test_a_runner_killed_mid_job_is_released_and_the_job_runs_exactly_once(
    system: System, wine_csv: Path
) -> None:
    data = read_wine_csv(wine_csv)
    accepted = httpx.post(
        f"{system.servers[0].base_url}/api/v1/models/retrained-wine/train",
        json={
            "algorithm": "gradient_boosting",
            "params": {"n_estimators": 200, "max_depth": 5},
            "X": data.features.tolist(),
            "y": data.quality.tolist(),
            "feature_names": list(FEATURE_NAMES),
        },
        headers=system.admin,
        timeout=60,
    )
    assert accepted.status_code == 202, accepted.text
    job_url = f"{system.servers[0].base_url}/api/v1/jobs/{accepted.json()['job_id']}"

    def job() -> dict[str, object]:
        body: dict[str, object] = httpx.get(job_url, headers=system.admin, timeout=10).json()
        return body

    wait_until(lambda: job()["status"] == "running", "the runner leasing the job", 30, LOOK_EVERY)
    time.sleep(1.0)  # well into the training
    kill(system.runner)  # SIGKILL: no shutdown, the lease is left to run out
    killed_at = time.monotonic()
    assert job()["status"] == "running"
    system.restart("runner")
    wait_until(
        lambda: job()["status"] != "running" or job()["attempts"] == 2, "re-leased", 60, LOOK_EVERY
    )
    released = time.monotonic() - killed_at
    wait_until(
        lambda: job()["status"] in ("succeeded", "failed"), "the job finishing", 90, LOOK_EVERY
    )
    finished = job()

    assert finished["status"] == "succeeded", finished
    assert finished["attempts"] == 2
    versions = system.database.scalar(
        "SELECT count(*) FROM model_versions v JOIN models m ON m.id = v.model_id "
        "WHERE m.name = 'retrained-wine'"
    )
    assert versions == 1  # the killed attempt left no version; the second made exactly one
    assert finished["result"]["version"] == 1  # type: ignore[index]
    print(
        f"\n[runner SIGKILL] lease {system.job_lease_seconds:g} s; job re-leased "
        f"{released:.1f} s after the kill (runner restart included); succeeded on attempt "
        f"{finished['attempts']}; model versions created: {versions}"
    )


def test_sigterm_under_load_finishes_in_flight_requests_and_keeps_every_log_row(
    system: System,
) -> None:
    target = system.servers[0]
    with Load(system, "sigterm", threads=8) as load:
        time.sleep(2.0)
        target.process.send_signal(signal.SIGTERM)
        code = target.process.wait(timeout=60)
        stopped = load.statuses()
        system.restart("a")
        time.sleep(1.0)
    report = load.report

    assert code in (0, -signal.SIGTERM), target.log
    assert "Traceback" not in target.log
    # Answers: every request the stopping server took was answered; the ones it no longer
    # took were refused at connect (the load moved on to the other server).
    waited = assert_every_answer_was_kept(system, load, report)
    assert set(report.statuses) == {200}, report.summary()
    print(
        f"\n[SIGTERM under load] {report.summary()}; exit status {code}; answers until the "
        f"server stopped {dict(stopped)}; log rows {report.ok} of {report.ok} 200s "
        f"(waited {waited} s); log rows lost: 0"
    )
