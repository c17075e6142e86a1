"""compose.yaml: the whole platform, its health checks and start order, and only real settings."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.support import ENTRYPOINT_VARIABLES, ROOT, env_names_in, unknown_settings

COMPOSE = ROOT / "compose.yaml"
ENV_EXAMPLE = ROOT / "deploy" / "compose.env.example"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_services_of_the_platform(compose):
    services = compose["services"]
    assert {"api", "jobs", "migrate", "postgres", "redis", "minio"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["redis"]["image"].startswith("redis:7")
    assert "minio" in services["minio"]["image"]
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["api"]["environment"]["MODELPORT_RUN_JOBS"] == "false"
    assert services["jobs"]["environment"]["MODELPORT_RUN_JOBS"] == "true"
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    # Every modelport process shares the cluster settings: database, Redis, S3 store, JWT secret.
    for name in ("api", "jobs", "migrate"):
        environment = services[name]["environment"]
        for shared in ("DATABASE_URL", "REDIS_URL", "ARTIFACT_STORE", "JWT_SECRET"):
            assert f"MODELPORT_{shared}" in environment, (name, shared)
        assert environment["MODELPORT_ARTIFACT_STORE"].startswith("s3://")


def test_health_checks_and_start_order(compose):
    services = compose["services"]
    for name in ("postgres", "redis", "minio", "api", "jobs"):
        assert services[name]["healthcheck"]["test"], name
    for name in ("api", "jobs"):
        depends = services[name]["depends_on"]
        # Migrations are applied once, by `migrate`, before any replica starts.
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        for backing in ("postgres", "redis", "minio"):
            assert depends[backing]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_named_volumes_hold_the_state(compose):
    declared = set(compose["volumes"])
    assert {"postgres-data", "minio-data"} <= declared
    used = {
        mount.split(":", 1)[0]
        for service in compose["services"].values()
        for mount in service.get("volumes", [])
    }
    assert declared == used


def test_every_modelport_variable_is_a_setting(compose):
    names = set(env_names_in(compose))
    assert names, "no environment found"
    assert not unknown_settings(names)
    assert not {n for n in names if not n.startswith("MODELPORT_")} - ENTRYPOINT_VARIABLES - {
        "POSTGRES_DB", "POSTGRES_USER", "POSTGRES_PASSWORD", "MINIO_ROOT_USER",
        "MINIO_ROOT_PASSWORD", "S3_BUCKET",
    }  # fmt: skip


def test_env_example_names_every_variable_the_file_uses():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE.read_text()))
    example = ENV_EXAMPLE.read_text()
    listed = set(re.findall(r"^#? ?([A-Z0-9_]+)=", example, re.M))
    assert used <= listed, used - listed
    # Secrets are left for the user to fill in, never given a value here.
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MODELPORT_JWT_SECRET"):
        assert re.search(rf"^{secret}=$", example, re.M), secret


def test_compose_accepts_the_file(tmp_path):
    command = shutil.which("docker-compose")
    if command is None:
        pytest.skip("docker-compose is not installed (Debian's docker-compose package)")
    env = tmp_path / "compose.env"
    text = ENV_EXAMPLE.read_text()
    for secret in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "MODELPORT_JWT_SECRET"):
        text = text.replace(f"\n{secret}=\n", f"\n{secret}={'s' * 40}\n")
    env.write_text(text)
    result = subprocess.run(
        [command, "--env-file", str(env), "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
