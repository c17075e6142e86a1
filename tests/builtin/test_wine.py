"""The wine recipe: read the UCI file, train a forest that ONNX reproduces, register it."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.ensemble import RandomForestRegressor
from sklearn.metrics import mean_absolute_error, r2_score
from sklearn.model_selection import train_test_split
from sqlalchemy import func, select

from modelport.builtin.wine import (
    FEATURE_NAMES,
    WINE_MODEL_NAME,
    WINE_SHA256,
    WINE_SIGNATURE,
    TrainedWine,
    WineDataError,
    column_name,
    read_wine_csv,
    register_wine,
)
from modelport.datasets.tables import Dataset, DatasetRow
from modelport.db.engine import create_engine, create_session_factory
from modelport.registry import service as registry
from modelport.registry.schemas import ModelDetailOut
from modelport.settings import Settings
from modelport.storage.factory import open_artifact_store
from modelport.storage.protocol import sha256_hex
from tests.helpers import run

SNAKE_CASE_FEATURES = [
    "fixed_acidity",
    "volatile_acidity",
    "citric_acid",
    "residual_sugar",
    "chlorides",
    "free_sulfur_dioxide",
    "total_sulfur_dioxide",
    "density",
    "ph",
    "sulphates",
    "alcohol",
]
BOUNDS = {
    "fixed_acidity": (0, 20),
    "volatile_acidity": (0, 2),
    "citric_acid": (0, 1.5),
    "residual_sugar": (0, 20),
    "chlorides": (0, 1),
    "free_sulfur_dioxide": (0, 100),
    "total_sulfur_dioxide": (0, 400),
    "density": (0.9, 1.1),
    "ph": (2, 5),
    "sulphates": (0, 2.5),
    "alcohol": (8, 16),
}
FIRST_WINE = [7.4, 0.7, 0.0, 1.9, 0.076, 11.0, 34.0, 0.9978, 3.51, 0.56, 9.4]


def _uci_rows(wine_csv: Path) -> list[list[str]]:
    with wine_csv.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle, delimiter=";"))


def _write(path: Path, rows: list[list[str]], delimiter: str = ",") -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


# -- reading ---------------------------------------------------------------------------------


def test_reads_the_uci_file(wine_csv: Path) -> None:
    assert '"fixed acidity";"volatile acidity"' in wine_csv.read_text(encoding="utf-8")[:40]

    wine = read_wine_csv(wine_csv)

    assert wine.features.shape == (1599, 11)
    assert wine.quality.shape == (1599,)
    assert wine.features[0].tolist() == FIRST_WINE
    assert wine.quality[0] == 5
    assert set(np.unique(wine.quality)) <= set(range(11))
    assert wine.sha256 == WINE_SHA256
    assert wine.source == str(wine_csv)


def test_a_comma_separated_copy_gives_identical_numbers(wine_csv: Path, tmp_path: Path) -> None:
    copy = _write(tmp_path / "red-wine.csv", _uci_rows(wine_csv), delimiter=",")
    assert copy.read_text(encoding="utf-8").startswith("fixed acidity,volatile acidity,")

    original, comma = read_wine_csv(wine_csv), read_wine_csv(copy)

    assert np.array_equal(comma.features, original.features)
    assert np.array_equal(comma.quality, original.quality)
    assert comma.sha256 != original.sha256  # a different file, recorded as such


def test_columns_are_found_by_name_in_any_order_and_spelling(
    wine_csv: Path, tmp_path: Path
) -> None:
    """A pandas export with snake_case headers, quality first, still reads the same wines."""
    header, *body = _uci_rows(wine_csv)
    order = [len(header) - 1, *range(len(header) - 1)]
    snake_header = ["quality", *SNAKE_CASE_FEATURES]
    rows = [snake_header, *([row[i] for i in order] for row in body)]
    copy = _write(tmp_path / "export.csv", rows)

    wine = read_wine_csv(copy)

    assert np.array_equal(wine.features, read_wine_csv(wine_csv).features)


def test_feature_names_are_snake_case() -> None:
    assert FEATURE_NAMES == SNAKE_CASE_FEATURES
    assert column_name('"pH"') == "ph"
    assert column_name("free sulfur dioxide") == "free_sulfur_dioxide"
    assert column_name(" Fixed  Acidity ") == "fixed_acidity"


def test_a_missing_column_is_named(wine_csv: Path, tmp_path: Path) -> None:
    rows = [row[:-2] + row[-1:] for row in _uci_rows(wine_csv)]  # drop "alcohol"
    broken = _write(tmp_path / "no-alcohol.csv", rows)

    with pytest.raises(WineDataError, match=r"lacks the columns \['alcohol'\]"):
        read_wine_csv(broken)


@pytest.mark.parametrize(
    ("bad_value", "problem"),
    [("n/a", "not a row of numbers"), ("", "not a row of numbers"), ("nan", "NaN")],
)
def test_a_bad_value_is_reported_with_its_line(
    wine_csv: Path, tmp_path: Path, bad_value: str, problem: str
) -> None:
    rows = _uci_rows(wine_csv)
    rows[4][3] = bad_value  # line 5 of the file
    broken = _write(tmp_path / "bad-row.csv", rows)

    with pytest.raises(WineDataError, match=f"line 5: .*{problem}"):
        read_wine_csv(broken)


def test_a_short_row_is_reported_with_its_line(wine_csv: Path, tmp_path: Path) -> None:
    rows = _uci_rows(wine_csv)
    rows[9] = rows[9][:5]
    broken = _write(tmp_path / "short-row.csv", rows)

    with pytest.raises(WineDataError, match="line 10: not a row of numbers"):
        read_wine_csv(broken)


def test_too_few_rows_to_train_are_refused(wine_csv: Path, tmp_path: Path) -> None:
    tiny = _write(tmp_path / "tiny.csv", _uci_rows(wine_csv)[:11])

    with pytest.raises(WineDataError, match="holds 10 rows"):
        read_wine_csv(tiny)


def test_an_unreadable_path_is_reported(tmp_path: Path) -> None:
    with pytest.raises(WineDataError, match=r"cannot read .*missing\.csv"):
        read_wine_csv(tmp_path / "missing.csv")


# -- training --------------------------------------------------------------------------------


def test_training_records_sane_holdout_metrics(trained_wine: TrainedWine) -> None:
    metrics = trained_wine.metrics

    assert (metrics["train_rows"], metrics["holdout_rows"]) == (1279, 320)
    assert len(trained_wine.train_index) == 1279
    assert 0 < metrics["holdout_mae"] < 0.6
    assert 0.3 < metrics["holdout_r2"] < 1
    assert metrics["onnx_max_abs_diff"] <= 1e-4


def test_onnx_model_reproduces_an_independent_scikit_learn_forest(
    trained_wine: TrainedWine,
) -> None:
    features, quality = trained_wine.data.features, trained_wine.data.quality
    x_train, x_holdout, y_train, y_holdout = train_test_split(
        features, quality, test_size=0.2, random_state=42
    )
    forest = RandomForestRegressor(100, random_state=42).fit(x_train, y_train)
    expected = forest.predict(x_holdout)

    session = ort.InferenceSession(trained_wine.onnx_bytes, providers=["CPUExecutionProvider"])
    (input_spec,) = session.get_inputs()
    (got,) = session.run(None, {input_spec.name: x_holdout.astype(np.float32)})

    assert np.asarray(got).ravel() == pytest.approx(expected, abs=1e-4)
    assert trained_wine.metrics["holdout_mae"] == pytest.approx(
        mean_absolute_error(y_holdout, expected), abs=1e-9
    )
    assert trained_wine.metrics["holdout_r2"] == pytest.approx(
        r2_score(y_holdout, expected), abs=1e-9
    )
    train_rows = {tuple(row) for row in features[trained_wine.train_index].tolist()}
    assert train_rows == {tuple(row) for row in x_train.tolist()}


def test_signature_describes_every_feature_with_exact_bounds(wine_csv: Path) -> None:
    assert WINE_SIGNATURE.task == "regression"
    assert WINE_SIGNATURE.input_names == SNAKE_CASE_FEATURES
    for spec in WINE_SIGNATURE.inputs:
        assert spec.type == "float"
        assert spec.description
        assert spec.unit
        assert (spec.minimum, spec.maximum) == BOUNDS[spec.name]
        low, high = BOUNDS[spec.name]
        assert spec.example is not None
        assert low <= spec.example <= high
    assert (
        list(WINE_SIGNATURE.example_row().values()) == read_wine_csv(wine_csv).features[0].tolist()
    )

    (output,) = WINE_SIGNATURE.outputs
    assert output.name == "predicted_quality"
    assert (output.minimum, output.maximum) == (0, 10)
    assert output.description


def test_every_wine_in_the_file_passes_the_signature(trained_wine: TrainedWine) -> None:
    """The bounds must never refuse a real wine: the UCI file itself is the sample."""
    row_model = WINE_SIGNATURE.row_model()
    for row in trained_wine.data.features.tolist():
        row_model.model_validate(dict(zip(FEATURE_NAMES, row, strict=True)))


# -- registration ----------------------------------------------------------------------------


async def _register(settings: Settings, *trained: TrainedWine) -> list[int]:
    engine = create_engine(settings.database_url)
    store = open_artifact_store(settings)
    try:
        numbers = []
        for wine in trained:
            async with create_session_factory(engine)() as session:
                version = await register_wine(session, store, wine)
                await session.commit()
                numbers.append(version.version)
        return numbers
    finally:
        await engine.dispose()


async def _registry_view(settings: Settings) -> dict[str, Any]:
    engine = create_engine(settings.database_url)
    try:
        async with create_session_factory(engine)() as session:
            model = ModelDetailOut.of(await registry.get_model(session, WINE_MODEL_NAME))
            datasets = list(await session.scalars(select(Dataset).order_by(Dataset.name)))
            splits = dict(
                (
                    await session.execute(
                        select(DatasetRow.split, func.count()).group_by(DatasetRow.split)
                    )
                ).all()
            )
            return {"model": model, "datasets": datasets, "splits": splits}
    finally:
        await engine.dispose()


def test_registering_twice_makes_v2_production_and_reuses_the_dataset(
    settings: Settings, trained_wine: TrainedWine
) -> None:
    assert run(_register(settings, trained_wine, trained_wine)) == [1, 2]

    view = run(_registry_view(settings))
    model: ModelDetailOut = view["model"]
    assert model.aliases == {"production": 2}
    assert model.task == "regression"
    assert [v.version for v in model.versions] == [1, 2]
    latest = model.versions[-1]
    assert latest.flavor == "onnx"
    assert latest.sha256 == sha256_hex(trained_wine.onnx_bytes)
    assert latest.signature == WINE_SIGNATURE.model_dump(mode="json")
    assert latest.metrics["holdout_mae"] == pytest.approx(trained_wine.metrics["holdout_mae"])
    assert latest.details["training_dataset"] == "winequality-red"
    assert latest.details["data_sha256"] == WINE_SHA256

    (dataset,) = view["datasets"]
    assert (dataset.name, dataset.row_count, dataset.sha256) == (
        "winequality-red",
        1599,
        WINE_SHA256,
    )
    assert view["splits"] == {"train": 1279, "holdout": 320}


def test_a_different_file_with_the_same_name_gets_its_own_dataset(
    settings: Settings, trained_wine: TrainedWine
) -> None:
    edited = dataclasses.replace(
        trained_wine,
        data=dataclasses.replace(
            trained_wine.data, sha256="ab" * 32, source="/x/winequality-red.csv"
        ),
    )

    run(_register(settings, trained_wine, edited))

    names = [d.name for d in run(_registry_view(settings))["datasets"]]
    assert names == ["winequality-red", "winequality-red-abababab"]


def test_a_long_file_name_still_registers(settings: Settings, trained_wine: TrainedWine) -> None:
    source = "/data/" + "winequality-red-as-exported-by-the-lab-on-a-friday-afternoon" * 2 + ".csv"
    long_named = dataclasses.replace(
        trained_wine, data=dataclasses.replace(trained_wine.data, source=source)
    )

    assert run(_register(settings, long_named)) == [1]

    (dataset,) = run(_registry_view(settings))["datasets"]
    assert dataset.name.startswith("winequality-red-as-exported")
    assert len(dataset.name) <= 64
