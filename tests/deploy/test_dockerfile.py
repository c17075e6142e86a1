"""The Dockerfile passes hadolint and keeps the promises the deployment guide makes about it."""

from __future__ import annotations

import re
import subprocess

from tests.deploy.support import ROOT, tool

DOCKERFILE = ROOT / "Dockerfile"


def _hadolint(path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("hadolint"), "--no-color", str(path)], capture_output=True, text=True, check=False
    )


def test_hadolint_passes():
    result = _hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_finds_the_mistakes_it_is_here_for(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install -y curl\nRUN cd /tmp\n")
    result = _hadolint(bad)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3008", "DL3003"):  # untagged base, unpinned apt, cd in RUN
        assert rule in result.stdout


def test_final_stage_runs_unprivileged_with_a_health_check():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim-bookworm$", text, re.M)
    final = text[text.rindex("\nFROM ") :]
    assert "FROM ${BASE_IMAGE}\n" in final
    user = re.search(r"^USER (\S+)$", final, re.M)
    assert user is not None and user.group(1).split(":")[0] not in ("0", "root")
    assert "HEALTHCHECK" in final and "/opt/modelport/healthcheck.py" in final
    assert "/health/live" in (ROOT / "deploy" / "docker" / "healthcheck.py").read_text()
    # The final stage copies the built virtualenv and installs nothing from the network.
    assert "requirements" not in final


def test_build_context_leaves_out_local_state():
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"  # an allow-list: what is not named stays out (.venv, var/, .env)
    assert "!src/" in rules
    allowed = [rule for rule in rules if rule.startswith("!")]
    assert not [rule for rule in allowed if "venv" in rule or "var" in rule]
