"""Shared by the serving tests: endpoint paths and a check for error details."""

from __future__ import annotations

from typing import Any

import orjson

WINE = "/predict"
GENERIC = "/api/v1/models/wine-quality/predict"


def raw(payload: Any) -> bytes:
    return orjson.dumps(payload)


def assert_names(detail: Any, loc: list[Any], rule: str) -> None:
    """Some error in ``detail`` sits at ``loc`` and its message states ``rule``."""
    assert isinstance(detail, list), detail
    found = [e for e in detail if e["loc"] == loc]
    assert found, f"no error at {loc}: {detail}"
    assert any(rule.lower() in e["msg"].lower() for e in found), (rule, found)
