"""The wine data behind the built-in model, browsable over HTTP row by row."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from modelport.builtin.wine import TrainedWine
from tests.datasets.support import DATASETS, RED, all_rows
from tests.helpers import HOSTILE_NAMES
from tests.registry.support import shared_wine_app

COLUMNS = [
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
    "quality",
]


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def client(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    trained_wine: TrainedWine,
) -> Iterator[TestClient]:
    """Shared by this module's read-only tests (overrides the per-test ``client``)."""
    yield from shared_wine_app(request, tmp_path_factory, trained_wine)


def csv_rows(path: Path) -> list[dict[str, float]]:
    """The UCI file read plainly: ';'-separated, header 'fixed acidity', ..., 'pH', 'quality'."""
    with path.open(newline="") as handle:
        reader = csv.reader(handle, delimiter=";")
        header = [name.lower().replace(" ", "_") for name in next(reader)]
        return [dict(zip(header, map(float, record), strict=True)) for record in reader if record]


def test_list_datasets(client: TestClient, wine_csv: Path) -> None:
    response = client.get(DATASETS)

    assert response.status_code == 200
    (dataset,) = response.json()["items"]
    assert dataset["name"] == "winequality-red"
    assert dataset["row_count"] == 1599
    assert dataset["sha256"] == hashlib.sha256(wine_csv.read_bytes()).hexdigest()
    assert "Wine Quality" in dataset["description"]


def test_dataset_detail_describes_its_columns(client: TestClient, wine_csv: Path) -> None:
    response = client.get(RED)

    assert response.status_code == 200
    dataset = response.json()
    assert dataset["name"] == "winequality-red"
    assert dataset["row_count"] == 1599
    assert [column["name"] for column in dataset["columns"]] == COLUMNS
    assert all(column["type"] == "float" for column in dataset["columns"])
    units = {column["name"]: column.get("unit") for column in dataset["columns"]}
    assert units["alcohol"] == "% vol"
    assert dataset["source"] == str(wine_csv)
    assert dataset["created_at"]


def test_rows_match_the_csv_one_row_per_wine(
    client: TestClient, wine_csv: Path, trained_wine: TrainedWine
) -> None:
    expected = csv_rows(wine_csv)

    rows = all_rows(client)

    assert len(expected) == 1599
    assert [row["row_index"] for row in rows] == list(range(1599))
    assert [row["values"] for row in rows] == expected
    splits = [row["split"] for row in rows]
    assert splits.count("train") == 1279
    assert splits.count("holdout") == 320
    training = sorted(i for i, split in enumerate(splits) if split == "train")
    assert training == sorted(trained_wine.train_index.tolist())


def test_rows_page_by_offset_and_limit(client: TestClient, wine_csv: Path) -> None:
    expected = csv_rows(wine_csv)

    page = client.get(f"{RED}/rows", params={"offset": 10, "limit": 5}).json()
    default = client.get(f"{RED}/rows").json()
    tail = client.get(f"{RED}/rows", params={"offset": 1597, "limit": 10}).json()
    beyond = client.get(f"{RED}/rows", params={"offset": 5000}).json()

    assert (page["dataset"], page["total"], page["offset"], page["limit"]) == (
        "winequality-red",
        1599,
        10,
        5,
    )
    assert [row["row_index"] for row in page["rows"]] == [10, 11, 12, 13, 14]
    assert [row["values"] for row in page["rows"]] == expected[10:15]
    assert [row["row_index"] for row in default["rows"]] == list(range(100))
    assert [row["row_index"] for row in tail["rows"]] == [1597, 1598]
    assert beyond["rows"] == []
    assert beyond["total"] == 1599


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": -1}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"offset": -1}, "offset"),
        ({"offset": 10**12}, "offset"),
        ({"offset": "1; DROP TABLE dataset_rows"}, "offset"),
    ],
)
def test_out_of_bounds_paging_is_422_naming_the_parameter(
    client: TestClient, query: dict[str, Any], parameter: str
) -> None:
    response = client.get(f"{RED}/rows", params=query)

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["query", parameter]]
    assert client.get(f"{RED}/rows", params={"limit": 1}).json()["total"] == 1599


@pytest.mark.parametrize("path", [f"{DATASETS}/winequality-white", f"{DATASETS}/nope/rows"])
def test_unknown_dataset_is_404_naming_it(client: TestClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 404
    assert path.split("/")[4] in response.json()["detail"]


@pytest.mark.parametrize(
    "name", [*HOSTILE_NAMES, "winequality%", "winequality_red", "winequality-red\x00"]
)
def test_hostile_names_are_404_and_harm_nothing(client: TestClient, name: str) -> None:
    for suffix in ("", "/rows"):
        response = client.get(f"{DATASETS}/{quote(name, safe='')}{suffix}")
        assert response.status_code == 404, (suffix, response.text)

    assert client.get(RED).json()["row_count"] == 1599
