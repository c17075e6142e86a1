"""The CI/CD workflow passes actionlint and has the jobs the deployment guide describes."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.deploy.support import ROOT, tool

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def _actionlint(*paths) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("actionlint"), "-no-color", *map(str, paths)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )


def test_actionlint_passes():
    assert WORKFLOWS
    result = _actionlint(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_finds_the_mistakes_it_is_here_for(tmp_path):
    bad = tmp_path / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  x:\n    runs-on: ubuntu-24.04\n    needs: [missing]\n"
        "    steps:\n      - run: echo ${{ github.nope.nope }}\n"
    )
    result = _actionlint(bad)
    assert result.returncode != 0
    assert "missing" in result.stdout


@pytest.fixture(scope="module")
def ci() -> dict:
    return yaml.safe_load((ROOT / ".github" / "workflows" / "ci.yml").read_text())


def test_jobs_cover_lint_tests_image_and_deploy(ci):
    jobs = ci["jobs"]
    assert {"lint", "test", "image", "deploy"} <= set(jobs)
    lint_steps = " ".join(step.get("run", "") for step in jobs["lint"]["steps"])
    assert "ruff check" in lint_steps and "mypy" in lint_steps
    for name in ("test", "image"):
        services = jobs[name]["services"]
        assert services["postgres"]["image"].startswith("postgres:")
        assert services["redis"]["image"].startswith("redis:")
    image_steps = " ".join(str(step) for step in jobs["image"]["steps"])
    assert "smoke_test.py" in image_steps


def test_push_and_deploy_only_for_version_tags(ci):
    triggers = ci.get("on", ci.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["push"]["tags"] == ["v*"]
    pushes = [s for s in ci["jobs"]["image"]["steps"] if "docker push" in s.get("run", "")]
    assert pushes and all(s["if"] == "github.ref_type == 'tag'" for s in pushes)
    deploy = ci["jobs"]["deploy"]
    assert deploy["if"] == "github.ref_type == 'tag'"
    assert set(deploy["needs"]) == {"test", "image"}
    # Secrets are named, never written down.
    assert deploy["env"]["HF_TOKEN"] == "${{ secrets.HF_TOKEN }}"
    assert ci["permissions"] == {"contents": "read"}
