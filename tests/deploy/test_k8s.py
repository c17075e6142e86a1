"""deploy/k8s renders with kustomize, validates against the Kubernetes schemas offline, and
keeps the promises of the deployment guide: probes, limits, non-root, read-only root, one
migration Job, an autoscaler and a disruption budget, real settings only, no real secrets."""

from __future__ import annotations

import copy
import subprocess
from functools import cache

import pytest
import yaml

from tests.deploy.support import (
    ENTRYPOINT_VARIABLES,
    K8S,
    OVERLAYS,
    env_names_in,
    tool,
    unknown_settings,
)

KUBERNETES_VERSION = "1.37.0"


@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    result = subprocess.run(
        [tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def one(docs, kind: str, name: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def validate(tmp_path, docs) -> subprocess.CompletedProcess[str]:
    """kubernetes-validate (its schemas ship in the package: no network) on these documents."""
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    return subprocess.run(
        [tool("kubernetes-validate"), "--strict", "-k", KUBERNETES_VERSION, str(manifest)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_against_the_kubernetes_schemas(overlay, tmp_path):
    docs = rendered(overlay)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Job", "HorizontalPodAutoscaler"} <= kinds
    assert "PodDisruptionBudget" in kinds
    result = validate(tmp_path, docs)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_is_not_vacuous(tmp_path):
    deployment = copy.deepcopy(one(rendered("dev"), "Deployment", "modelport-api"))
    deployment["spec"]["replicas"] = "two"
    result = validate(tmp_path, [deployment])
    assert result.returncode != 0 and "spec.replicas" in result.stdout + result.stderr
    deployment["spec"]["replicas"] = 2
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    result = validate(tmp_path, [deployment])
    assert result.returncode != 0 and "readinesProbe" in result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_unprivileged_on_a_read_only_root(overlay):
    docs = rendered(overlay)
    pods = [
        (d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in docs
        if d["kind"] in ("Deployment", "Job")
    ]
    assert len(pods) == 3
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        # Service links would put MODELPORT_PORT=tcp://... into the pod, which is a setting.
        assert pod["enableServiceLinks"] is False, name
        assert pod["automountServiceAccountToken"] is False, name
        writable = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            assert mounts["/var/lib/modelport"] in writable and mounts["/tmp"] in writable
            resources = container["resources"]
            assert resources["requests"]["cpu"] and resources["requests"]["memory"], name
            assert resources["limits"]["memory"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_probes_scaling_and_roles(overlay):
    docs = rendered(overlay)
    api = one(docs, "Deployment", "modelport-api")
    container = api["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert container["args"] == ["serve"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["MODELPORT_RUN_JOBS"] == "false"
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0

    jobs = one(docs, "Deployment", "modelport-jobs")
    jobs_container = jobs["spec"]["template"]["spec"]["containers"][0]
    jobs_env = {e["name"]: e.get("value") for e in jobs_container["env"]}
    assert jobs_env["MODELPORT_RUN_JOBS"] == "true"

    hpa = one(docs, "HorizontalPodAutoscaler", "modelport-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "modelport-api"
    }  # fmt: skip
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(docs, "PodDisruptionBudget", "modelport-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = one(docs, "Service", "modelport-api")
    assert service["spec"]["selector"].items() <= labels.items()
    migrate = one(docs, "Job", "modelport-migrate")
    assert migrate["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_prod_renders_no_secret_and_dev_only_placeholders():
    assert not [d for d in rendered("prod") if d["kind"] == "Secret"]
    (secret,) = [d for d in rendered("dev") if d["kind"] == "Secret"]
    for name, value in secret["stringData"].items():
        assert "REPLACE_ME" in value, f"{name} holds something other than a placeholder"
    prod_api = one(rendered("prod"), "Deployment", "modelport-api")
    assert prod_api["spec"]["template"]["spec"]["containers"][0]["envFrom"][1] == {
        "secretRef": {"name": "modelport-secrets"}
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_named_is_a_real_setting(overlay):
    names = set(env_names_in(list(rendered(overlay))))
    assert len(names) > 10
    assert not unknown_settings(names)
    assert not {n for n in names if not n.startswith("MODELPORT_")} - ENTRYPOINT_VARIABLES
