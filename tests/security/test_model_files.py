"""An attacker with nothing but an account they registered themselves uploads model files built
to read the server's files or to make it import code. Through the real API, on SQLite and
PostgreSQL: every such upload is refused with a 400 that says what to do, and a file that reaches
storage by any other way still serves nothing of the server's files and imports nothing."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest
from fastapi.testclient import TestClient

from modelport.app import create_app
from modelport.db.engine import create_engine, create_session_factory
from modelport.ingest.preparation import infer_onnx_signature
from modelport.registry import service as registry
from modelport.runtimes.signature import FieldSpec, Signature
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from tests.helpers import bearer, run
from tests.ingest.hostile_onnx import SECRET_MARKER, VARIANTS, hostile_onnx, plant_secrets
from tests.ingest.hostile_skops import RE_EXPORTS, RUNS_ON_IMPORT, skops_naming

MODELS = "/api/v1/models"
PASSWORD = "correct horse battery"
ROW = {"x0": 1.0, "x1": 2.0, "x2": 3.0}


@dataclass
class Attacker:
    client: TestClient
    headers: dict[str, str]
    user_id: uuid.UUID
    settings: Settings
    locations: dict[str, str]  # external-data locations naming a secret the server can read

    def create(self, name: str) -> None:
        body = {"name": name, "task": "regression"}
        response = self.client.post(MODELS, json=body, headers=self.headers)
        assert response.status_code == 201, response.text

    def upload(self, name: str, data: bytes) -> tuple[int, str]:
        response = self.client.post(
            f"{MODELS}/{name}/versions",
            files={"file": ("model.bin", data, "application/octet-stream")},
            headers=self.headers,
        )
        detail = response.json().get("detail") if response.status_code == 400 else None
        return response.status_code, str(detail or response.text)

    def predict(self, name: str) -> tuple[int, str]:
        response = self.client.post(f"{MODELS}/{name}/predict", json=ROW, headers=self.headers)
        return response.status_code, response.text

    def versions(self, name: str) -> list[object]:
        response = self.client.get(f"{MODELS}/{name}", headers=self.headers)
        assert response.status_code == 200, response.text
        return list(response.json()["versions"])


@pytest.fixture
def attacker(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Attacker]:
    """The server started in a working directory that holds a secret; an account registered
    through the API, as anyone may."""
    workdir, locations = plant_secrets(tmp_path / "server")
    monkeypatch.chdir(workdir)
    with TestClient(create_app(settings)) as client:
        email = f"mallory-{uuid.uuid4().hex[:8]}@example.com"
        created = client.post("/api/v1/auth/register", json={"email": email, "password": PASSWORD})
        assert created.status_code == 201, created.text
        yield Attacker(
            client,
            bearer(client, email, PASSWORD),
            uuid.UUID(created.json()["id"]),
            settings,
            locations,
        )


def store_directly(
    attacker: Attacker, name: str, data: bytes, flavor: str, signature: Signature
) -> None:
    """Put ``data`` in the registry as the attacker's private model without the upload checks:
    what an artifact that got into storage some other way looks like to the server."""

    async def register() -> None:
        engine = create_engine(attacker.settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                await registry.register_version(
                    session,
                    open_artifact_store(attacker.settings),
                    model_name=name,
                    task="regression",
                    artifact=data,
                    artifact_suffix=".onnx" if flavor == "onnx" else ".skops",
                    flavor=flavor,
                    signature=signature,
                    metrics={},
                    details={},
                    alias="production",
                    owner_id=attacker.user_id,
                    public=False,
                )
                await session.commit()
        finally:
            await engine.dispose()

    run(register())


# --- ONNX external data ------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_no_onnx_upload_with_external_data_is_accepted(
    attacker: Attacker, variant: str, subtests: pytest.Subtests
) -> None:
    attacker.create("stolen")

    for kind, location in attacker.locations.items():
        with subtests.test(location=kind):
            status, detail = attacker.upload("stolen", hostile_onnx(variant, location))
            assert status == 400, detail
            assert "external file" in detail
            assert "onnx.save(model, path, save_as_external_data=False)" in detail
            assert location not in detail

    assert attacker.versions("stolen") == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_stored_onnx_model_with_external_data_predicts_nothing_from_the_file(
    attacker: Attacker, variant: str, subtests: pytest.Subtests
) -> None:
    for kind, location in attacker.locations.items():
        with subtests.test(location=kind):
            data = hostile_onnx(variant, location)
            signature = infer_onnx_signature(onnx.load_from_string(data), "regression")
            store_directly(attacker, f"bypass-{kind}", data, "onnx", signature)

            status, body = attacker.predict(f"bypass-{kind}")

            assert status == 503, body
            assert str(SECRET_MARKER) not in body
            assert location not in body


# --- skops: nothing imported because a file names it ---------------------------------------------


@pytest.fixture
def f2py_unloaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """numpy.f2py.__main__ not imported yet; were it ever run, it would only print its usage."""
    monkeypatch.delitem(sys.modules, RUNS_ON_IMPORT[0], raising=False)
    monkeypatch.setattr(sys, "argv", ["f2py"])


@pytest.mark.usefixtures("f2py_unloaded")
def test_a_skops_upload_naming_a_module_that_runs_on_import_is_400_and_not_imported(
    attacker: Attacker,
) -> None:
    attacker.create("runner")

    status, detail = attacker.upload("runner", skops_naming(*RUNS_ON_IMPORT))

    assert status == 400, detail
    assert "numpy.f2py.__main__.main" in detail
    assert "does not trust" in detail
    assert RUNS_ON_IMPORT[0] not in sys.modules
    assert attacker.versions("runner") == []


def test_skops_uploads_naming_re_exported_objects_are_400(
    attacker: Attacker, subtests: pytest.Subtests
) -> None:
    attacker.create("re-exported")

    for (module, name), really in RE_EXPORTS.items():
        with subtests.test(name=f"{module}.{name}", really=really):
            status, detail = attacker.upload("re-exported", skops_naming(module, name))
            assert status == 400, detail
            assert f"{module}.{name}" in detail
            assert "does not trust" in detail

    assert attacker.versions("re-exported") == []


@pytest.mark.usefixtures("f2py_unloaded")
def test_a_stored_skops_model_naming_a_module_is_not_imported_when_served(
    attacker: Attacker,
) -> None:
    signature = Signature(
        task="regression",
        inputs=tuple(FieldSpec(name=name, type="float") for name in ROW),
        outputs=(FieldSpec(name="prediction", type="float"),),
    )
    store_directly(attacker, "stored-runner", skops_naming(*RUNS_ON_IMPORT), "sklearn", signature)

    status, body = attacker.predict("stored-runner")

    assert status == 503, body
    assert RUNS_ON_IMPORT[0] not in sys.modules
