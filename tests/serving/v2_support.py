"""Shared by the V2 protocol tests: request bodies, a private model and a real HTTP server."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression

from modelport.builtin.wine import FEATURE_NAMES, WINE_SIGNATURE
from modelport.db.engine import create_engine, create_session_factory
from modelport.ingest.preparation import PreparedModel, prepare_upload
from modelport.registry import service as registry
from modelport.runtimes.signature import Signature
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from tests.helpers import run


def matrix_input(rows: list[dict[str, float]], *, nested: bool = True) -> dict[str, Any]:
    """The wine rows as the model's own 2-D input tensor ``features`` [rows, 11]."""
    matrix = [[row[name] for name in FEATURE_NAMES] for row in rows]
    data: list[Any] = matrix if nested else [value for line in matrix for value in line]
    return {
        "name": "features",
        "shape": [len(rows), len(FEATURE_NAMES)],
        "datatype": "FP32",
        "data": data,
    }


def field_inputs(rows: list[dict[str, float]], datatype: str = "FP64") -> list[dict[str, Any]]:
    """The wine rows as one 1-D tensor per feature."""
    return [
        {"name": name, "shape": [len(rows)], "datatype": datatype, "data": [r[name] for r in rows]}
        for name in FEATURE_NAMES
    ]


def register_model(
    settings: Settings,
    onnx_bytes: bytes,
    name: str,
    *,
    signature: Signature = WINE_SIGNATURE,
    owner: uuid.UUID | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """``onnx_bytes`` as production v1 of ``name``: private to ``owner`` when one is given."""

    async def register() -> None:
        engine = create_engine(settings.database_url)
        try:
            async with create_session_factory(engine)() as session:
                await registry.register_version(
                    session,
                    open_artifact_store(settings),
                    model_name=name,
                    task=signature.task,
                    artifact=onnx_bytes,
                    artifact_suffix=".onnx",
                    flavor="onnx",
                    signature=signature,
                    metrics={},
                    details=details or {},
                    owner_id=owner,
                    public=owner is None,
                )
                await session.commit()
        finally:
            await engine.dispose()

    run(register())


def colour_classifier() -> PreparedModel:
    """A small ONNX classifier (3 features -> red / rose / white), prepared as an upload is."""
    rng = np.random.RandomState(0)
    features = rng.rand(60, 3)
    colours = np.array(["red", "white", "rose"] * 20)
    model = LogisticRegression().fit(features, colours)
    onnx_model = to_onnx(
        model,
        initial_types=[("features", FloatTensorType([None, 3]))],
        options={id(model): {"zipmap": False}},
    )
    return prepare_upload(onnx_model.SerializeToString(), task="classification")
