"""Shared by the dataset tests."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

DATASETS = "/api/v1/datasets"
RED = f"{DATASETS}/winequality-red"


def all_rows(client: TestClient) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    while True:
        page = client.get(f"{RED}/rows", params={"offset": len(rows), "limit": 1000}).json()
        rows.extend(page["rows"])
        if not page["rows"]:
            return rows
