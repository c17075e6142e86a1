"""Upload a photo, get 201 at once, and the durable job fills in the answer; list, correct and
delete the results; nobody reads another person's images."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from fastapi.testclient import TestClient

from modelport.builtin.imagenet import ConvertedClassifier
from modelport.settings import Settings
from tests.helpers import admin_headers, bearer, create_account, services_of
from tests.images.support import (
    CAT_CLASSES,
    COFFEE_LABELS,
    PREDICTIONS,
    cat,
    coffee,
    new_email,
    picture,
    register_classifier,
    serve,
    stored_path,
    upload,
    wait_for_result,
)


def signed_in(client: TestClient, role: str = "user") -> tuple[uuid.UUID, dict[str, str]]:
    email = new_email()
    user_id = create_account(services_of(client).settings, email, role=role)
    return user_id, bearer(client, email)


def run_one_job(client: TestClient) -> bool:
    """Let the app's job runner take one job now (for apps started with run_jobs=False)."""
    ran: bool = client.portal.call(services_of(client).jobs.run_once)  # type: ignore[union-attr]
    return ran


def test_upload_answers_pending_at_once_and_the_job_classifies_it(
    image_client: TestClient,
) -> None:
    accepted = image_client.post(PREDICTIONS, files={"file": ("chelsea.jpg", cat(), "image/jpeg")})

    assert accepted.status_code == 201, accepted.text
    body = accepted.json()
    assert body["filename"] == "chelsea.jpg"
    assert body["status"] == "pending"
    uuid.UUID(body["id"])

    result = wait_for_result(image_client, body["id"])
    assert result["status"] == "completed"
    assert result["error"] is None
    assert result["content_type"] == "image/jpeg"
    assert (result["width"], result["height"]) == (451, 300)
    assert result["model_name"] == "imagenet-classifier"
    assert result["model_version"] == "1"
    assert result["latency_ms"] > 0
    assert result["completed_at"] is not None
    top5 = result["all_predictions"]
    assert len(top5) == 5
    probabilities = [p["probability"] for p in top5]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 <= p <= 1 for p in probabilities)
    assert len({p["label"] for p in top5}) == 5
    assert result["top_prediction"] == top5[0]["label"] == "Egyptian cat"
    assert top5[0]["class_index"] in CAT_CLASSES
    assert result["confidence"] == probabilities[0]
    assert result["correction"] is None


def test_the_job_behind_an_upload_is_shown_as_succeeded(image_client: TestClient) -> None:
    _, headers = signed_in(image_client)
    accepted = upload(image_client, coffee(), "coffee.jpg", headers)
    result = wait_for_result(image_client, accepted["id"], headers)

    job = image_client.get(f"/api/v1/jobs/{accepted['job_id']}", headers=headers)

    assert job.status_code == 200, job.text
    assert job.json()["kind"] == "classify-image"
    assert job.json()["status"] == "succeeded"
    assert job.json()["attempts"] == 1
    assert job.json()["result"]["image_id"] == accepted["id"]
    assert job.json()["result"]["top_prediction"] == result["top_prediction"]
    assert result["top_prediction"] in COFFEE_LABELS
    _, stranger = signed_in(image_client)
    assert (
        image_client.get(f"/api/v1/jobs/{accepted['job_id']}", headers=stranger).status_code == 404
    )


def test_without_an_image_model_the_upload_fails_with_an_error(
    make_settings: Callable[..., Settings],
) -> None:
    with serve(make_settings(), preload=False) as client:
        accepted = upload(client, cat())
        result = wait_for_result(client, accepted["id"])
        job = client.get(f"/api/v1/jobs/{accepted['job_id']}").json()

    assert result["status"] == "failed"
    assert "imagenet-classifier" in result["error"]
    assert result["top_prediction"] is None
    assert result["all_predictions"] is None
    assert job["status"] == "failed"
    assert job["attempts"] == 1  # retrying cannot help: not retried


def test_a_model_that_cannot_load_leaves_the_image_failed_after_the_retries(
    make_settings: Callable[..., Settings], classifier: ConvertedClassifier
) -> None:
    settings = make_settings()
    register_classifier(settings, classifier)
    model_file = stored_path(settings, classifier.onnx_bytes, ".onnx")
    model_file.unlink()  # the model's artifact is lost from the store

    with serve(settings, preload=False) as client:
        accepted = upload(client, cat())
        result = wait_for_result(client, accepted["id"])
        job = client.get(f"/api/v1/jobs/{accepted['job_id']}").json()

    assert result["status"] == "failed"
    assert "missing" in result["error"]
    assert job["status"] == "failed"
    assert job["attempts"] == 3


def test_an_image_whose_stored_file_was_damaged_fails(image_settings: Settings) -> None:
    with serve(image_settings.model_copy(update={"run_jobs": False})) as client:
        accepted = upload(client, cat())
        stored_path(image_settings, cat(), ".jpg").write_bytes(b"overwritten")
        assert run_one_job(client)
        result = client.get(f"{PREDICTIONS}/{accepted['id']}").json()

    assert result["status"] == "failed"
    assert "sha256" in result["error"]


# --- listing --------------------------------------------------------------------------------


def test_list_is_newest_first_paginated_and_only_your_own(image_client: TestClient) -> None:
    _, mine = signed_in(image_client)
    _, theirs = signed_in(image_client)
    ids = [upload(image_client, picture(i), f"p{i}.png", mine)["id"] for i in range(5)]
    upload(image_client, picture(99), "other.png", theirs)
    upload(image_client, picture(98), "anonymous.png")

    first = image_client.get(PREDICTIONS, params={"limit": 2}, headers=mine)
    rest = image_client.get(PREDICTIONS, params={"offset": 2, "limit": 10}, headers=mine)

    assert first.status_code == 200, first.text
    assert first.json()["total"] == 5
    assert (first.json()["offset"], first.json()["limit"]) == (0, 2)
    listed = [item["id"] for item in first.json()["items"] + rest.json()["items"]]
    assert listed == list(reversed(ids))
    created = [item["created_at"] for item in first.json()["items"] + rest.json()["items"]]
    assert created == sorted(created, reverse=True)


def test_listing_needs_a_signed_in_caller(image_client: TestClient) -> None:
    upload(image_client, picture(1))

    response = image_client.get(PREDICTIONS)

    assert response.status_code == 401
    assert "sign in" in response.json()["detail"]


def test_an_admin_lists_everyone_s_images(image_client: TestClient) -> None:
    _, user = signed_in(image_client)
    upload(image_client, picture(1), "users.png", user)
    upload(image_client, picture(2), "anonymous.png")

    listed = image_client.get(PREDICTIONS, headers=admin_headers(image_client)).json()

    assert listed["total"] == 2
    assert {item["filename"] for item in listed["items"]} == {"users.png", "anonymous.png"}


def test_list_filters_by_status(image_settings: Settings) -> None:
    with serve(image_settings.model_copy(update={"run_jobs": False})) as client:
        _, headers = signed_in(client)
        first = upload(client, picture(1), "first.png", headers)
        upload(client, picture(2), "second.png", headers)
        assert run_one_job(client)  # the oldest job first

        def listed(status: str) -> list[str]:
            page = client.get(PREDICTIONS, params={"status": status}, headers=headers)
            assert page.status_code == 200, page.text
            return [item["filename"] for item in page.json()["items"]]

        assert listed("completed") == ["first.png"]
        assert listed("pending") == ["second.png"]
        assert listed("failed") == []
        assert client.get(f"{PREDICTIONS}/{first['id']}", headers=headers).json()["status"] == (
            "completed"
        )
        assert (
            client.get(PREDICTIONS, params={"status": "lost"}, headers=headers).status_code == 422
        )


def test_list_filters_by_label_of_the_model_or_the_correction(image_client: TestClient) -> None:
    _, headers = signed_in(image_client)
    kitten = upload(image_client, cat(), "cat.jpg", headers)
    cup = upload(image_client, coffee(), "coffee.jpg", headers)
    wait_for_result(image_client, kitten["id"], headers)
    espresso = wait_for_result(image_client, cup["id"], headers)

    def labelled(label: str) -> list[str]:
        page = image_client.get(PREDICTIONS, params={"label": label}, headers=headers)
        return [item["filename"] for item in page.json()["items"]]

    assert labelled("Egyptian cat") == ["cat.jpg"]
    assert labelled(espresso["top_prediction"]) == ["coffee.jpg"]
    assert labelled("tabby") == []
    image_client.put(f"{PREDICTIONS}/{kitten['id']}", json={"label": "tabby"}, headers=headers)
    assert labelled("tabby") == ["cat.jpg"]


# --- corrections ----------------------------------------------------------------------------


def test_a_correction_is_kept_beside_the_model_s_answer(image_client: TestClient) -> None:
    user_id, headers = signed_in(image_client)
    accepted = upload(image_client, cat(), "cat.jpg", headers)
    model_answer = wait_for_result(image_client, accepted["id"], headers)
    before = datetime.now(UTC)

    response = image_client.put(
        f"{PREDICTIONS}/{accepted['id']}",
        json={"label": "tabby", "confidence": 0.9},
        headers=headers,
    )

    assert response.status_code == 200, response.text
    again = image_client.get(f"{PREDICTIONS}/{accepted['id']}", headers=headers).json()
    for body in (response.json(), again):
        correction = body["correction"]
        assert correction["label"] == "tabby"
        assert correction["confidence"] == 0.9
        assert correction["corrected_by"] == str(user_id)
        assert datetime.fromisoformat(correction["corrected_at"]) >= before
        assert body["top_prediction"] == model_answer["top_prediction"] == "Egyptian cat"
        assert body["all_predictions"] == model_answer["all_predictions"]


def test_a_correction_without_confidence_is_certain_and_bad_ones_are_refused(
    image_client: TestClient,
) -> None:
    _, headers = signed_in(image_client)
    image_id = upload(image_client, picture(3), headers=headers)["id"]
    url = f"{PREDICTIONS}/{image_id}"

    assert (
        image_client.put(url, json={"label": "dog"}, headers=headers).json()["correction"][
            "confidence"
        ]
        == 1.0
    )
    assert image_client.put(url, json={"label": ""}, headers=headers).status_code == 422
    refused = image_client.put(url, json={"label": "dog", "confidence": 1.5}, headers=headers)
    assert refused.status_code == 422


# --- deleting -------------------------------------------------------------------------------


def test_delete_removes_the_record_and_the_stored_image(
    image_client: TestClient, image_settings: Settings
) -> None:
    _, headers = signed_in(image_client)
    data = picture(7)
    accepted = upload(image_client, data, "seven.png", headers)
    wait_for_result(image_client, accepted["id"], headers)
    stored = stored_path(image_settings, data, ".png")
    assert stored.is_file()
    assert stored.is_relative_to(image_settings.var_dir / "artifacts")

    response = image_client.delete(f"{PREDICTIONS}/{accepted['id']}", headers=headers)

    assert response.status_code == 204
    assert image_client.get(f"{PREDICTIONS}/{accepted['id']}", headers=headers).status_code == 404
    assert image_client.get(PREDICTIONS, headers=headers).json()["total"] == 0
    assert not stored.exists()


def test_delete_keeps_a_file_another_record_still_uses(
    image_client: TestClient, image_settings: Settings
) -> None:
    _, headers = signed_in(image_client)
    data = picture(8)
    first = upload(image_client, data, "first.png", headers)
    second = upload(image_client, data, "second.png", headers)
    stored = stored_path(image_settings, data, ".png")

    assert image_client.delete(f"{PREDICTIONS}/{first['id']}", headers=headers).status_code == 204
    assert stored.is_file()
    assert wait_for_result(image_client, second["id"], headers)["status"] == "completed"

    assert image_client.delete(f"{PREDICTIONS}/{second['id']}", headers=headers).status_code == 204
    assert not stored.exists()


def test_an_image_deleted_before_its_job_ran_is_skipped(image_settings: Settings) -> None:
    with serve(image_settings.model_copy(update={"run_jobs": False})) as client:
        accepted = upload(client, picture(4))
        holder = {"X-Delete-Token": accepted["delete_token"]}  # an anonymous upload's key
        assert client.delete(f"{PREDICTIONS}/{accepted['id']}", headers=holder).status_code == 204
        assert run_one_job(client)
        job = client.get(f"/api/v1/jobs/{accepted['job_id']}").json()

    assert job["status"] == "succeeded"
    assert "deleted" in job["result"]["skipped"]


# --- isolation ------------------------------------------------------------------------------


def test_another_user_s_image_is_not_found(image_client: TestClient, tmp_path: Path) -> None:
    _, owner = signed_in(image_client)
    _, stranger = signed_in(image_client)
    image_id = upload(image_client, picture(5), headers=owner)["id"]
    url = f"{PREDICTIONS}/{image_id}"

    for headers in (stranger, {}):  # another user, and an anonymous caller
        assert image_client.get(url, headers=headers).status_code == 404
        assert image_client.put(url, json={"label": "x"}, headers=headers).status_code == 404
        assert image_client.delete(url, headers=headers).status_code == 404
    assert image_client.get(PREDICTIONS, headers=stranger).json()["total"] == 0
    mine = image_client.get(url, headers=owner).json()
    assert mine["correction"] is None
    assert image_client.get(url, headers=admin_headers(image_client)).status_code == 200


def test_an_unknown_image_is_404(image_client: TestClient) -> None:
    response = image_client.get(f"{PREDICTIONS}/{uuid.uuid4()}")

    assert response.status_code == 404
    assert "not found" in response.json()["detail"]
