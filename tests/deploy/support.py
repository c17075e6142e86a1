"""Shared by the deployment-file tests: the repository's paths, the linters' binaries, and the
environment variable names the application reads."""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelport.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
# Read by the container's entry point, not by Settings (deploy/docker/entrypoint.sh, bootstrap.py).
ENTRYPOINT_VARIABLES = {"PORT", "INSTALL_BUILTINS", "BUILTINS_DIR"}


def setting_names() -> set[str]:
    """Every MODELPORT_* variable the application reads: one per Settings field."""
    return {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}


def unknown_settings(names: set[str]) -> set[str]:
    return {name for name in names if name.startswith(ENV_PREFIX)} - setting_names()


def tool(name: str) -> str:
    """A linter installed with the dev dependencies (beside this Python, or on PATH). Missing:
    skipped on a developer's machine, a failure in CI, where requirements.lock installs it."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (pip install -r requirements.lock)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def env_names_in(value: Any) -> Iterator[str]:
    """Variable names an object sets, wherever they sit: `env` lists, environment maps, ConfigMap
    and Secret data."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("environment", "data", "stringData") and isinstance(item, dict):
                yield from (str(name) for name in item)
            if key == "env" and isinstance(item, list):
                yield from (entry["name"] for entry in item if isinstance(entry, dict))
            yield from env_names_in(item)
    elif isinstance(value, list):
        for item in value:
            yield from env_names_in(item)


def names_in_text(text: str) -> set[str]:
    return set(re.findall(rf"\b{ENV_PREFIX}[A-Z0-9_]+\b", text))
