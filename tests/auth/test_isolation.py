"""One user's private models, predictions, datasets and keys are invisible to everyone else:
the answer is the same 404 as for something that does not exist. Owners and admins see them."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.builtin.wine import TrainedWine
from tests.auth.keys_support import (
    KEYS,
    PREDICTIONS,
    create_key,
    key_header,
    register_private_dataset,
    register_private_model,
    sign_up,
)
from tests.helpers import WINE_ROW, flush_log, services_of, settings_for, wait_until_ready
from tests.registry.support import shared_wine_app

MODELS = "/api/v1/models"
DATASETS = "/api/v1/datasets"
PRIVATE_MODEL = "alices-model"
PRIVATE_DATASET = "alices-data"
PRIVATE = f"{MODELS}/{PRIVATE_MODEL}"
PUBLIC_PREDICT_PATHS = (
    "/predict",
    f"{MODELS}/wine-quality/predict",
    f"{MODELS}/wine-quality/versions/1/predict",
)


@dataclass
class People:
    alice_id: uuid.UUID
    alice: dict[str, str]
    bob: dict[str, str]
    bob_key: dict[str, str]
    admin: dict[str, str]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def client(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    trained_wine: TrainedWine,
) -> Iterator[TestClient]:
    """One app per backend for the whole module (signing people up is the slow part); every
    test makes its own keys and predictions, so they do not disturb each other."""
    yield from shared_wine_app(request, tmp_path_factory, trained_wine)


@pytest.fixture(scope="module")
def people(client: TestClient, trained_wine: TrainedWine) -> People:
    """Alice owns a private model and dataset; Bob, with a token and a key, owns nothing."""
    alice_id, alice = sign_up(client)
    _, bob = sign_up(client)
    _, admin = sign_up(client, role="admin")
    settings = services_of(client).settings
    register_private_model(settings, trained_wine, PRIVATE_MODEL, alice_id)
    register_private_dataset(settings, PRIVATE_DATASET, alice_id)
    bob_key = key_header(create_key(client, bob, scopes=["predict", "read", "manage"])["key"])
    return People(alice_id, alice, bob, bob_key, admin)


def same_as_missing(hidden: Any, missing: Any, hidden_name: str, missing_name: str) -> None:
    """``hidden`` must say nothing ``missing`` does not: same status, same body but for the name."""
    assert hidden.status_code == missing.status_code == 404
    assert _without_request_id(hidden) == _renamed(
        _without_request_id(missing), missing_name, hidden_name
    )


def _without_request_id(response: Any) -> Any:
    """The body but for the id every error body quotes (each request has its own)."""
    body = response.json()
    assert body.pop("request_id") == response.headers["x-request-id"]
    return body


def _renamed(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, dict):
        return {k: _renamed(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [_renamed(v, old, new) for v in value]
    return value


MODEL_READS = [
    ("GET", "/api/v1/models/{name}"),
    ("GET", "/api/v1/models/{name}/versions/1"),
    ("GET", "/api/v1/models/{name}/versions/99"),
    ("POST", "/api/v1/models/{name}/predict"),
    ("POST", "/api/v1/models/{name}/predict?alias=staging"),
    ("POST", "/api/v1/models/{name}/versions/1/predict"),
    ("POST", "/api/v1/models/{name}/versions/99/predict"),
]


@pytest.mark.parametrize(("method", "template"), MODEL_READS)
@pytest.mark.parametrize("who", ["bob", "bob_key", "anonymous"])
def test_someone_elses_private_model_looks_missing(
    client: TestClient, people: People, method: str, template: str, who: str
) -> None:
    headers = {} if who == "anonymous" else getattr(people, who)
    hidden = client.request(
        method, template.format(name=PRIVATE_MODEL), json=WINE_ROW, headers=headers
    )
    missing = client.request(
        method, template.format(name="no-such-model"), json=WINE_ROW, headers=headers
    )
    same_as_missing(hidden, missing, PRIVATE_MODEL, "no-such-model")


@pytest.mark.parametrize("who", ["alice", "admin"])
def test_the_owner_and_administrators_use_a_private_model(
    client: TestClient, people: People, who: str
) -> None:
    headers = getattr(people, who)
    shown = client.get(f"{MODELS}/{PRIVATE_MODEL}", headers=headers)
    assert shown.status_code == 200
    assert shown.json()["name"] == PRIVATE_MODEL
    assert client.get(f"{MODELS}/{PRIVATE_MODEL}/versions/1", headers=headers).status_code == 200
    for path in (
        f"{MODELS}/{PRIVATE_MODEL}/predict",
        f"{MODELS}/{PRIVATE_MODEL}/versions/1/predict",
    ):
        answered = client.post(path, json=WINE_ROW, headers=headers)
        assert answered.status_code == 200, answered.text
        assert answered.json()["model_name"] == PRIVATE_MODEL
    # An alias the owner lacks is named as such to the owner (not hidden behind "not found").
    staging = client.post(
        f"{MODELS}/{PRIVATE_MODEL}/predict?alias=staging", json=WINE_ROW, headers=headers
    )
    assert staging.status_code == 404
    assert "staging" in staging.json()["detail"]


def test_the_model_list_shows_public_and_own_models_only(
    client: TestClient, people: People
) -> None:
    def names(headers: dict[str, str]) -> list[str]:
        response = client.get(MODELS, headers=headers)
        assert response.status_code == 200
        return [item["name"] for item in response.json()["items"]]

    assert names(people.alice) == [PRIVATE_MODEL, "wine-quality"]
    assert names(people.admin) == [PRIVATE_MODEL, "wine-quality"]
    assert names(people.bob) == ["wine-quality"]
    assert names(people.bob_key) == ["wine-quality"]
    assert names({}) == ["wine-quality"]


MODEL_CHANGES: list[tuple[str, str, dict[str, Any]]] = [
    ("PATCH", "/api/v1/models/{name}", {"json": {"description": "mine now"}}),
    ("PATCH", "/api/v1/models/{name}", {"json": {"public": True}}),
    ("DELETE", "/api/v1/models/{name}", {}),
    ("PATCH", "/api/v1/models/{name}/versions/1", {"json": {"description": "mine now"}}),
    ("DELETE", "/api/v1/models/{name}/versions/1", {}),
    ("PUT", "/api/v1/models/{name}/aliases/staging", {"json": {"version": 1}}),
    ("DELETE", "/api/v1/models/{name}/aliases/production", {}),
    ("POST", "/api/v1/models/{name}/versions", {"files": {"file": ("m.onnx", b"\x08\x07")}}),
]


@pytest.mark.parametrize(("method", "template", "body"), MODEL_CHANGES)
@pytest.mark.parametrize("who", ["bob", "bob_key"])
def test_someone_elses_private_model_cannot_be_changed_and_looks_missing(
    client: TestClient,
    people: People,
    method: str,
    template: str,
    body: dict[str, Any],
    who: str,
) -> None:
    headers = getattr(people, who)
    before = client.get(PRIVATE, headers=people.alice).json()
    hidden = client.request(method, template.format(name=PRIVATE_MODEL), headers=headers, **body)
    missing = client.request(method, template.format(name="no-such-model"), headers=headers, **body)
    same_as_missing(hidden, missing, PRIVATE_MODEL, "no-such-model")
    assert client.get(PRIVATE, headers=people.alice).json() == before
    assert client.post(f"{PRIVATE}/predict", json=WINE_ROW, headers=people.alice).is_success


@pytest.mark.parametrize("who", ["alice", "admin"])
def test_the_owner_and_administrators_change_a_private_model(
    client: TestClient, people: People, who: str
) -> None:
    headers = getattr(people, who)
    changed = client.patch(PRIVATE, json={"description": f"kept by {who}"}, headers=headers)
    assert changed.status_code == 200, changed.text
    assert client.get(PRIVATE, headers=people.alice).json()["description"] == f"kept by {who}"


# --- the public built-in model --------------------------------------------------------------


@pytest.mark.parametrize("who", ["alice", "bob_key", "admin", "anonymous"])
def test_everyone_sees_and_uses_the_public_model(
    client: TestClient, people: People, who: str
) -> None:
    headers = {} if who == "anonymous" else getattr(people, who)
    assert client.get(f"{MODELS}/wine-quality", headers=headers).status_code == 200
    assert client.post("/predict", json=WINE_ROW, headers=headers).status_code == 200
    generic = client.post(f"{MODELS}/wine-quality/predict", json=WINE_ROW, headers=headers)
    assert generic.status_code == 200


@pytest.fixture
def closed_client(client: TestClient, tmp_path: Path) -> Iterator[TestClient]:
    """A second app on the same database and store, with anonymous predictions turned off."""
    shared = services_of(client).settings
    settings = settings_for(
        tmp_path / "var",
        shared.database_url,
        artifact_store=shared.artifact_store,
        anonymous_predictions=False,
    )
    with TestClient(create_app(settings)) as test_client:
        wait_until_ready(test_client)
        yield test_client


def test_anonymous_predictions_can_be_turned_off(closed_client: TestClient) -> None:
    for path in (
        "/predict",
        f"{MODELS}/wine-quality/predict",
        f"{MODELS}/wine-quality/versions/1/predict",
    ):
        refused = closed_client.post(path, json=WINE_ROW)
        assert refused.status_code == 401, path
        assert "sign in" in refused.json()["detail"]
    assert closed_client.get(f"{MODELS}/wine-quality").status_code == 200  # reading stays open
    _, headers = sign_up(closed_client)
    assert closed_client.post("/predict", json=WINE_ROW, headers=headers).status_code == 200


# --- predictions ----------------------------------------------------------------------------


def _logged_ids(client: TestClient, admin: dict[str, str]) -> dict[str, dict[str, Any]]:
    flush_log(client)
    items = client.get(PREDICTIONS, params={"limit": 500}, headers=admin).json()["items"]
    return {item["request_id"]: item for item in items}


def test_predictions_are_visible_to_their_caller_and_administrators_only(
    client: TestClient, people: People
) -> None:
    _, carol = sign_up(client)  # new people: nobody else's test predicts as them
    _, dave = sign_up(client)
    dave_key = key_header(create_key(client, dave, scopes=["read"])["key"])
    by_carol = client.post("/predict", json=WINE_ROW, headers=carol)
    by_dave = client.post("/predict", json=WINE_ROW, headers=dave)
    by_nobody = client.post("/predict", json=WINE_ROW)
    logged = _logged_ids(client, people.admin)
    carols = logged[by_carol.headers["x-request-id"]]["id"]
    daves = logged[by_dave.headers["x-request-id"]]["id"]
    anonymous = logged[by_nobody.headers["x-request-id"]]["id"]

    assert client.get(f"{PREDICTIONS}/{carols}", headers=carol).status_code == 200
    assert client.get(f"{PREDICTIONS}/{carols}", headers=people.admin).status_code == 200
    missing_id = str(uuid.uuid4())
    for headers in (dave, dave_key):
        missing = client.get(f"{PREDICTIONS}/{missing_id}", headers=headers)
        for hidden_id in (carols, anonymous):
            hidden = client.get(f"{PREDICTIONS}/{hidden_id}", headers=headers)
            same_as_missing(hidden, missing, hidden_id, missing_id)

    def listed(headers: dict[str, str]) -> set[str]:
        page = client.get(PREDICTIONS, params={"limit": 500}, headers=headers).json()
        assert page["total"] == len(page["items"])
        return {item["id"] for item in page["items"]}

    assert listed(carol) == {carols}
    assert listed(dave) == listed(dave_key) == {daves}
    assert {carols, daves, anonymous} <= listed(people.admin)


def test_anonymous_callers_cannot_read_the_prediction_log(client: TestClient) -> None:
    client.post("/predict", json=WINE_ROW)
    for path in (PREDICTIONS, f"{PREDICTIONS}/{uuid.uuid4()}"):
        refused = client.get(path)
        assert refused.status_code == 401
        assert "sign in" in refused.json()["detail"]


def test_the_log_records_who_called(client: TestClient, people: People) -> None:
    key = create_key(client, people.alice, scopes=["predict"])
    with_token = client.post("/predict", json=WINE_ROW, headers=people.alice)
    with_key = client.post("/predict", json=WINE_ROW, headers=key_header(key["key"]))
    anonymous = client.post("/predict", json=WINE_ROW)
    refused = client.post(f"{MODELS}/{PRIVATE_MODEL}/predict", json=WINE_ROW, headers=people.bob)
    assert refused.status_code == 404
    logged = _logged_ids(client, people.admin)

    def caller(response: Any) -> tuple[Any, Any, Any]:
        row = logged[response.headers["x-request-id"]]
        return row["user_id"], row["api_key_id"], row["client_address"]

    alice = str(people.alice_id)
    assert caller(with_token) == (alice, None, "testclient")
    assert caller(with_key) == (alice, key["id"], "testclient")
    assert caller(anonymous) == (None, None, "testclient")
    bob_row = logged[refused.headers["x-request-id"]]
    assert bob_row["user_id"] not in (None, alice)
    assert bob_row["status"] == "error"


# --- datasets -------------------------------------------------------------------------------


DATASET_READS = ["/api/v1/datasets/{name}", "/api/v1/datasets/{name}/rows"]


@pytest.mark.parametrize("template", DATASET_READS)
@pytest.mark.parametrize("who", ["bob", "bob_key", "anonymous"])
def test_someone_elses_private_dataset_looks_missing(
    client: TestClient, people: People, template: str, who: str
) -> None:
    headers = {} if who == "anonymous" else getattr(people, who)
    hidden = client.get(template.format(name=PRIVATE_DATASET), headers=headers)
    missing = client.get(template.format(name="no-such-data"), headers=headers)
    same_as_missing(hidden, missing, PRIVATE_DATASET, "no-such-data")


@pytest.mark.parametrize("who", ["alice", "admin"])
def test_the_owner_and_administrators_read_a_private_dataset(
    client: TestClient, people: People, who: str
) -> None:
    headers = getattr(people, who)
    assert client.get(f"{DATASETS}/{PRIVATE_DATASET}", headers=headers).json()["row_count"] == 3
    rows = client.get(f"{DATASETS}/{PRIVATE_DATASET}/rows", headers=headers).json()["rows"]
    assert [row["values"]["secret"] for row in rows] == [0.0, 1.0, 2.0]


def test_the_dataset_list_shows_public_and_own_datasets_only(
    client: TestClient, people: People
) -> None:
    def names(headers: dict[str, str]) -> set[str]:
        return {item["name"] for item in client.get(DATASETS, headers=headers).json()["items"]}

    public = names({})
    assert public and PRIVATE_DATASET not in public
    assert names(people.bob) == names(people.bob_key) == public
    assert names(people.alice) == names(people.admin) == public | {PRIVATE_DATASET}


# --- API keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("GET", None),
        ("PATCH", {"name": "taken over"}),
        ("PATCH", {"scopes": ["read"]}),
        ("DELETE", None),
    ],
    ids=["read", "rename", "rescope", "revoke"],
)
@pytest.mark.parametrize("who", ["bob", "bob_key"])
def test_someone_elses_api_key_looks_missing(
    client: TestClient, people: People, method: str, body: Any, who: str
) -> None:
    alices = create_key(client, people.alice, name="alice's", scopes=["read"])
    headers = getattr(people, who)
    missing_id = str(uuid.uuid4())
    hidden = client.request(method, f"{KEYS}/{alices['id']}", json=body, headers=headers)
    missing = client.request(method, f"{KEYS}/{missing_id}", json=body, headers=headers)
    same_as_missing(hidden, missing, alices["id"], missing_id)

    unchanged = client.get(f"{KEYS}/{alices['id']}", headers=people.alice).json()
    assert (unchanged["name"], unchanged["scopes"], unchanged["revoked_at"]) == (
        "alice's",
        ["read"],
        None,
    )
    assert client.get(MODELS, headers=key_header(alices["key"])).status_code == 200
    assert alices["id"] not in {k["id"] for k in client.get(KEYS, headers=headers).json()["items"]}


def test_administrators_manage_anyones_key(client: TestClient, people: People) -> None:
    alices = create_key(client, people.alice, name="alice's")
    url = f"{KEYS}/{alices['id']}"
    assert client.get(url, headers=people.admin).json()["name"] == "alice's"
    assert client.patch(url, json={"name": "renamed"}, headers=people.admin).status_code == 200
    assert client.delete(url, headers=people.admin).status_code == 204
    assert client.get(MODELS, headers=key_header(alices["key"])).status_code == 401
    assert client.get(url, headers=people.alice).json()["name"] == "renamed"
