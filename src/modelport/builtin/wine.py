"""The built-in wine-quality regressor: read the UCI CSV, train, convert to ONNX, register."""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from sqlalchemy.ext.asyncio import AsyncSession

from modelport.datasets import service as datasets
from modelport.registry import service as registry
from modelport.registry.tables import ModelVersion
from modelport.runtimes.signature import FieldSpec, Signature
from modelport.storage.protocol import ArtifactStore

WINE_MODEL_NAME = "wine-quality"
WINE_FILE_NAME = "winequality-red.csv"
WINE_SHA256 = "57050ed70cee37ffe2617ad7a7717e4fbe71514c42341c781c1bbba93a7a21f5"
TARGET = "quality"
ONNX_TOLERANCE = 1e-4

# (name, description, unit, minimum, maximum, example from the first red wine in the UCI file)
_FEATURES: list[tuple[str, str, str, float, float, float]] = [
    ("fixed_acidity", "Fixed acidity (mostly tartaric acid)", "g/dm³", 0, 20, 7.4),
    ("volatile_acidity", "Volatile acidity (acetic acid)", "g/dm³", 0, 2, 0.7),
    ("citric_acid", "Citric acid", "g/dm³", 0, 1.5, 0.0),
    ("residual_sugar", "Sugar left after fermentation", "g/dm³", 0, 20, 1.9),
    ("chlorides", "Sodium chloride", "g/dm³", 0, 1, 0.076),
    ("free_sulfur_dioxide", "Free SO₂", "mg/dm³", 0, 100, 11.0),
    ("total_sulfur_dioxide", "Free and bound SO₂", "mg/dm³", 0, 400, 34.0),
    ("density", "Density", "g/cm³", 0.9, 1.1, 0.9978),
    ("ph", "Acidity on the pH scale", "pH", 2, 5, 3.51),
    ("sulphates", "Potassium sulphate", "g/dm³", 0, 2.5, 0.56),
    ("alcohol", "Alcohol content", "% vol", 8, 16, 9.4),
]
FEATURE_NAMES = [name for name, *_ in _FEATURES]

WINE_SIGNATURE = Signature(
    task="regression",
    inputs=tuple(
        FieldSpec(name=n, description=d, unit=u, minimum=lo, maximum=hi, example=ex)
        for n, d, u, lo, hi, ex in _FEATURES
    ),
    outputs=(
        FieldSpec(
            name="predicted_quality",
            description="Quality score a panel of tasters would give",
            minimum=0,
            maximum=10,
        ),
    ),
)


class WineDataError(ValueError):
    """The wine CSV cannot be used; the message says what is wrong with it."""


@dataclass(frozen=True)
class WineData:
    features: np.ndarray  # (rows, 11) float64, columns in FEATURE_NAMES order
    quality: np.ndarray  # (rows,) float64
    sha256: str
    source: str


@dataclass(frozen=True)
class TrainedWine:
    onnx_bytes: bytes
    metrics: dict[str, float]
    train_index: np.ndarray
    data: WineData


def column_name(header: str) -> str:
    """'fixed acidity' -> 'fixed_acidity', 'pH' -> 'ph'."""
    return "_".join(header.strip().strip('"').lower().split())


def read_wine_csv(path: Path) -> WineData:
    """Read the UCI file (';' with a quoted header) or a ','-separated copy of it."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WineDataError(f"cannot read {path}: {exc.strerror}") from None
    text = raw.decode("utf-8-sig", errors="replace")
    first_line = text.split("\n", 1)[0]
    delimiter = ";" if ";" in first_line else ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [column_name(h) for h in next(reader, [])]
    missing = [c for c in [*FEATURE_NAMES, TARGET] if c not in header]
    if missing:
        raise WineDataError(f"{path} lacks the columns {missing}; is it the UCI wine quality CSV?")
    positions = [header.index(c) for c in [*FEATURE_NAMES, TARGET]]
    values = []
    for line_number, record in enumerate(reader, start=2):
        if not record:
            continue
        try:
            row = [float(record[i]) for i in positions]
        except (ValueError, IndexError):
            raise WineDataError(f"{path}, line {line_number}: not a row of numbers") from None
        if not all(math.isfinite(value) for value in row):  # float() accepts "nan" and "inf"
            raise WineDataError(f"{path}, line {line_number}: a value is NaN or infinite")
        values.append(row)
    if len(values) < 50:
        raise WineDataError(f"{path} holds {len(values)} rows; at least 50 are needed to train")
    table = np.array(values, dtype=np.float64)
    return WineData(
        features=table[:, :-1],
        quality=table[:, -1],
        sha256=hashlib.sha256(raw).hexdigest(),
        source=str(path),
    )


def train_wine(data: WineData) -> TrainedWine:
    """RandomForest(100, seed 42) on an 80/20 split (seed 42), converted and checked in ONNX."""
    # Imported here: the server imports this module for the signature, and scikit-learn with
    # skl2onnx would add some 150 MB to every worker that never trains.
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.metrics import mean_absolute_error, r2_score
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(data.quality))
    train_idx, test_idx = train_test_split(indices, test_size=0.2, random_state=42)
    model = RandomForestRegressor(n_estimators=100, random_state=42, n_jobs=-1)
    model.fit(data.features[train_idx], data.quality[train_idx])
    holdout = data.features[test_idx]
    expected = model.predict(holdout)
    onnx_model = to_onnx(
        model, initial_types=[("features", FloatTensorType([None, len(FEATURE_NAMES)]))]
    )
    onnx_bytes = onnx_model.SerializeToString()
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"features": holdout.astype(np.float32)})
    max_diff = float(np.max(np.abs(np.asarray(got).ravel() - expected)))
    if max_diff > ONNX_TOLERANCE:
        raise RuntimeError(f"ONNX conversion differs from scikit-learn by {max_diff:.2e}")
    metrics = {
        "holdout_mae": float(mean_absolute_error(data.quality[test_idx], expected)),
        "holdout_r2": float(r2_score(data.quality[test_idx], expected)),
        "onnx_max_abs_diff": max_diff,
        "train_rows": len(train_idx),
        "holdout_rows": len(test_idx),
    }
    return TrainedWine(onnx_bytes=onnx_bytes, metrics=metrics, train_index=train_idx, data=data)


def _dataset_columns() -> list[dict[str, Any]]:
    columns = [
        {"name": spec.name, "type": "float", "unit": spec.unit, "description": spec.description}
        for spec in WINE_SIGNATURE.inputs
    ]
    columns.append({"name": TARGET, "type": "float", "description": "Tasters' median score"})
    return columns


async def register_wine(
    session: AsyncSession, store: ArtifactStore, trained: TrainedWine, name: str = WINE_MODEL_NAME
) -> ModelVersion:
    """Store the wines as a dataset (reused when the same file was stored before), register the
    ONNX model as the next version of ``name`` and point ``production`` at it. Caller commits."""
    data = trained.data
    dataset = await datasets.find_by_sha256(session, data.sha256)
    if dataset is None:
        # Dataset names hold 64 characters; leave room for the "-<sha256[:8]>" suffix below.
        stem = Path(data.source).stem.lower().replace("_", "-")[:55]
        taken = await datasets.find_by_name(session, stem) is not None
        in_train = set(trained.train_index.tolist())
        dataset = await datasets.register_dataset(
            session,
            name=f"{stem}-{data.sha256[:8]}" if taken else stem,
            description="UCI Wine Quality (Cortez et al., 2009), CC BY 4.0",
            columns=_dataset_columns(),
            rows=[
                {**dict(zip(FEATURE_NAMES, row, strict=True)), TARGET: q}
                for row, q in zip(data.features.tolist(), data.quality.tolist(), strict=True)
            ],
            splits=["train" if i in in_train else "holdout" for i in range(len(data.quality))],
            source=data.source,
            sha256=data.sha256,
            public=True,  # built-in data, like the built-in model
        )
    return await registry.register_version(
        session,
        store,
        model_name=name,
        task="regression",
        artifact=trained.onnx_bytes,
        artifact_suffix=".onnx",
        flavor="onnx",
        signature=WINE_SIGNATURE,
        metrics=trained.metrics,
        details={
            "algorithm": "RandomForestRegressor",
            "parameters": {"n_estimators": 100, "random_state": 42},
            "split": {"holdout_fraction": 0.2, "random_state": 42},
            "training_dataset": dataset.name,
            "data_sha256": data.sha256,
        },
        model_description="Predicts the quality (0-10) of a red vinho verde wine from 11 "
        "physicochemical measurements. Built in; trained on the UCI Wine Quality data.",
    )
