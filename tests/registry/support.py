"""Registry helpers for tests: hand-made ONNX models, aliases and artifact files."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper
from sqlalchemy import delete

from modelport.app import create_app
from modelport.builtin.wine import FEATURE_NAMES, WINE_SIGNATURE, TrainedWine
from modelport.db.base import Base
from modelport.db.engine import create_engine, create_session_factory
from modelport.registry import service as registry
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from tests.helpers import register_trained, run, settings_for, wait_until_ready


def linear_wine_onnx(weights: dict[str, float], bias: float, then: str | None = None) -> bytes:
    """A valid ONNX model over the 11 wine features: ``sum(weights[f] * f) + bias``, passed
    through the unary ONNX operator ``then`` (e.g. ``"Sqrt"``) when given."""
    w = np.zeros((len(FEATURE_NAMES), 1), dtype=np.float32)
    for name, weight in weights.items():
        w[FEATURE_NAMES.index(name), 0] = weight
    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["weighted"]),
        helper.make_node("Add", ["weighted", "B"], ["linear" if then else "variable"]),
    ]
    if then:
        nodes.append(helper.make_node(then, ["linear"], ["variable"]))
    graph = helper.make_graph(
        nodes,
        "linear-wine",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, len(FEATURE_NAMES)])],
        [helper.make_tensor_value_info("variable", TensorProto.FLOAT, [None, 1])],
        [
            numpy_helper.from_array(w, "W"),
            numpy_helper.from_array(np.array([bias], dtype=np.float32), "B"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def register_onnx(
    settings: Settings,
    onnx_bytes: bytes,
    name: str = "wine-quality",
    alias: str | None = "production",
    owner_id: uuid.UUID | None = None,
    public: bool = True,
) -> int:
    """Register ``onnx_bytes`` with the wine signature as the next version of ``name`` (owned by
    ``owner_id`` and private when ``public`` is False)."""

    async def register() -> int:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                version = await registry.register_version(
                    session,
                    open_artifact_store(settings),
                    model_name=name,
                    task="regression",
                    artifact=onnx_bytes,
                    artifact_suffix=".onnx",
                    flavor="onnx",
                    signature=WINE_SIGNATURE,
                    metrics={},
                    details={"algorithm": "hand-made linear"},
                    alias=alias,
                    owner_id=owner_id,
                    public=public,
                )
                await session.commit()
                return version.version
        finally:
            await engine.dispose()

    return int(run(register()))


def point_alias(settings: Settings, name: str, alias: str, version: int) -> None:
    """Point ``alias`` of model ``name`` at ``version`` (what an operator does to promote)."""

    async def move() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                model = await registry.get_model(session, name)
                target = registry.find_version(model, version)
                await registry.set_alias(session, model.id, alias, target.id)
                await session.commit()
        finally:
            await engine.dispose()

    run(move())


def artifact_file(settings: Settings, name: str, version: int) -> Path:
    """The file in the local store that holds one version's artifact."""

    async def lookup() -> str:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                ref = await registry.resolve(session, name, version)
                return ref.artifact_uri
        finally:
            await engine.dispose()

    return Path(unquote(urlsplit(str(run(lookup()))).path))


@contextmanager
def serve(settings: Settings, *, wait: bool = True) -> Iterator[TestClient]:
    """A started app for ``settings``; ``wait`` until the production models are preloaded."""
    with TestClient(create_app(settings)) as client:
        if wait:
            wait_until_ready(client)
        yield client


async def _empty(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            for table in reversed(Base.metadata.sorted_tables):
                await connection.execute(delete(table))
    finally:
        await engine.dispose()


def shared_wine_app(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    trained: TrainedWine,
) -> Iterator[TestClient]:
    """Body of a module-scoped fixture parametrized over ("sqlite", "postgres"): the wine
    model registered in an emptied database and the app started, shared by read-only tests.

    Keep such a module free of tests using ``database_url``: that fixture empties the
    database under the shared app."""
    url: str = request.getfixturevalue(f"{request.param}_url")
    run(_empty(url))
    settings = settings_for(tmp_path_factory.mktemp("shared"), url)
    register_trained(settings, trained)
    try:
        with serve(settings) as client:
            yield client
    finally:
        run(_empty(url))
