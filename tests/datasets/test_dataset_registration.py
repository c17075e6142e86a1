"""Registering wine data: the same file is stored once, different data gets its own name."""

from __future__ import annotations

import dataclasses

import numpy as np
from fastapi.testclient import TestClient

from modelport.builtin.wine import TrainedWine
from modelport.settings import Settings
from tests.datasets.support import DATASETS, RED, all_rows
from tests.helpers import register_trained


def test_registering_the_same_data_again_reuses_the_dataset(
    client: TestClient, settings: Settings, trained_wine: TrainedWine
) -> None:
    register_trained(settings, trained_wine)
    register_trained(settings, trained_wine, name="wine-quality-copy")

    datasets = client.get(DATASETS).json()["items"]
    version = client.get("/api/v1/models/wine-quality/versions/2").json()
    copy = client.get("/api/v1/models/wine-quality-copy/versions/1").json()

    assert [(d["name"], d["row_count"]) for d in datasets] == [("winequality-red", 1599)]
    assert len(all_rows(client)) == 1599
    assert version["details"]["training_dataset"] == "winequality-red"
    assert copy["details"]["training_dataset"] == "winequality-red"


def test_different_data_under_the_same_file_name_gets_its_own_dataset(
    client: TestClient, settings: Settings, trained_wine: TrainedWine
) -> None:
    data = trained_wine.data
    first_100 = dataclasses.replace(
        data, features=data.features[:100], quality=data.quality[:100], sha256="ab" * 32
    )
    smaller = dataclasses.replace(
        trained_wine, data=first_100, train_index=np.arange(80, dtype=np.int64)
    )

    register_trained(settings, smaller, name="wine-small")

    names = [(d["name"], d["row_count"]) for d in client.get(DATASETS).json()["items"]]
    assert names == [("winequality-red", 1599), ("winequality-red-abababab", 100)]
    rows = client.get(f"{DATASETS}/winequality-red-abababab/rows", params={"limit": 1000})
    assert [r["split"] for r in rows.json()["rows"]] == ["train"] * 80 + ["holdout"] * 20
    assert client.get(RED).json()["row_count"] == 1599
