"""The Kubernetes manifests, offline: the kustomize base and the production overlay render, every
resource validates against the Kubernetes schema (kubernetes-validate, strict), and the pieces
fit together (selectors, probes, resources, scrape annotations, config keys that are settings)."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from config.settings import Settings
from tests.conftest import ROOT

K8S = ROOT / "k8s"
KUBERNETES_VERSION = "1.32.0"
Resource = dict[str, Any]


def load_docs(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge as used here: maps merge, lists of named items merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else value
        return out
    if isinstance(base, list) and isinstance(patch, list):
        key = next(
            (k for k in ("name", "metadata") if all(isinstance(i, dict) and k in i for i in base)),
            None,
        )
        if key is None:
            return patch
        ident = (lambda i: i[key]["name"]) if key == "metadata" else (lambda i: i[key])
        out_list = list(base)
        for item in patch:
            at = [n for n, old in enumerate(out_list) if ident(old) == ident(item)]
            if at:
                out_list[at[0]] = merge(out_list[at[0]], item)
            else:
                out_list.append(item)
        return out_list
    return patch


def render(directory: Path) -> list[Resource]:
    """The subset of kustomize these manifests use: resources, namespace, labels (not in
    selectors), images, and strategic-merge patches from files."""
    spec = yaml.safe_load((directory / "kustomization.yaml").read_text())
    resources: list[Resource] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        resources += render(path) if path.is_dir() else load_docs(path)
    resources = copy.deepcopy(resources)
    for patch_entry in spec.get("patches", []):
        for patch in load_docs(directory / patch_entry["path"]):
            targets = [
                r
                for r in resources
                if r["kind"] == patch["kind"] and r["metadata"]["name"] == patch["metadata"]["name"]
            ]
            assert len(targets) == 1, f"patch {patch['kind']}/{patch['metadata']['name']}"
            resources[resources.index(targets[0])] = merge(targets[0], patch)
    for label in spec.get("labels", []):
        for r in resources:
            r["metadata"].setdefault("labels", {}).update(label["pairs"])
    for r in resources:
        if "namespace" in spec and r["kind"] != "Namespace":
            r["metadata"]["namespace"] = spec["namespace"]
        for container in containers(r):
            for image in spec.get("images", []):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    new_tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (
                        f":{new_tag}" if new_tag else ""
                    )
    return resources


def containers(resource: Resource) -> list[dict[str, Any]]:
    spec = resource.get("spec", {})
    if resource["kind"] == "Job" or "template" in spec:
        return list(spec["template"]["spec"]["containers"])
    return []


def by_kind(resources: list[Resource], kind: str) -> dict[str, Resource]:
    return {r["metadata"]["name"]: r for r in resources if r["kind"] == kind}


def setting_env_names() -> set[str]:
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(f"ROLLUP_{name.upper()}")
        alias = field.validation_alias
        if alias is not None and hasattr(alias, "choices"):
            names.update(str(c) for c in alias.choices)
    return names


OVERLAYS = {"base": K8S / "base", "production": K8S / "overlays" / "production"}


@pytest.fixture(params=sorted(OVERLAYS), scope="module")
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[Resource]]:
    return request.param, render(OVERLAYS[request.param])


def test_every_resource_is_valid_kubernetes(rendered: tuple[str, list[Resource]]) -> None:
    _, resources = rendered
    assert len(resources) >= 13
    for resource in resources:
        kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


def test_validation_rejects_a_broken_resource() -> None:
    # The check above can fail: a misspelt field is caught.
    deployment = copy.deepcopy(by_kind(render(OVERLAYS["base"]), "Deployment")["rollup-api"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_roles_are_complete(rendered: tuple[str, list[Resource]]) -> None:
    _, resources = rendered
    deployments = by_kind(resources, "Deployment")
    statefulsets = by_kind(resources, "StatefulSet")
    services = by_kind(resources, "Service")
    pdbs = by_kind(resources, "PodDisruptionBudget")
    assert set(deployments) == {"rollup-ingest", "rollup-api", "rollup-live"}
    assert set(statefulsets) == {"rollup-worker"}
    roles = {"rollup-ingest", "rollup-api", "rollup-worker", "rollup-live"}
    assert roles <= set(services) & set(pdbs)
    # Each role's pods run that role.
    for name, workload in {**deployments, **statefulsets}.items():
        (container,) = containers(workload)
        assert container["args"] == [name.removeprefix("rollup-")], name
    hpa = by_kind(resources, "HorizontalPodAutoscaler")["rollup-ingest"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rollup-ingest"
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert "rollup-migrate" in by_kind(resources, "Job")

    worker = statefulsets["rollup-worker"]
    claim = worker["spec"]["volumeClaimTemplates"][0]["metadata"]["name"]
    (container,) = containers(worker)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert env["ROLLUP_WORKER_DATA_DIR"] == mounts[claim]  # RocksDB lives on the volume


def test_pods_are_probed_sized_scraped_and_unprivileged(
    rendered: tuple[str, list[Resource]],
) -> None:
    _, resources = rendered
    config = by_kind(resources, "ConfigMap")["rollup-config"]["data"]
    workloads = [
        *by_kind(resources, "Deployment").values(),
        *by_kind(resources, "StatefulSet").values(),
    ]
    for workload in workloads:
        template = workload["spec"]["template"]
        labels = template["metadata"]["labels"]
        assert workload["spec"]["selector"]["matchLabels"].items() <= labels.items()
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert template["spec"]["securityContext"]["runAsNonRoot"] is True
        for container in template["spec"]["containers"]:
            ports = {p["name"]: p["containerPort"] for p in container["ports"]}
            assert int(annotations["prometheus.io/port"]) in ports.values()
            for probe in ("readinessProbe", "livenessProbe"):
                get = container[probe]["httpGet"]
                assert get["path"].startswith("/api/health"), (workload["metadata"], probe)
                assert get["port"] in ports
            assert container["livenessProbe"]["httpGet"]["path"].endswith("probe=liveness")
            requests = container["resources"]["requests"]
            assert {"cpu", "memory"} <= set(requests)
            assert "memory" in container["resources"]["limits"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            refs = {next(iter(ref.values()))["name"] for ref in container["envFrom"]}
            assert refs == {"rollup-config", "rollup-secrets"}
        # Services and PDBs select the pods of their workload.
        name = workload["metadata"]["name"]
        for kind in ("Service", "PodDisruptionBudget"):
            target = by_kind(resources, kind)[name]
            selector = target["spec"]["selector"]
            selector = selector.get("matchLabels", selector)
            assert selector.items() <= labels.items(), (kind, name)
    # The worker and the live role serve their metrics where the pod annotations say.
    assert config["ROLLUP_WORKER_WEB_PORT"] == "6066"
    assert config["ROLLUP_WORKER_WEB_HOST"] == "0.0.0.0"
    assert config["ROLLUP_LIVE_WEB_PORT"] == "6067"
    assert config["ROLLUP_LIVE_WEB_HOST"] == "0.0.0.0"


def test_config_keys_are_settings(
    rendered: tuple[str, list[Resource]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, resources = rendered
    known = setting_env_names()
    config = by_kind(resources, "ConfigMap")["rollup-config"]["data"]
    secret = by_kind(resources, "Secret")["rollup-secrets"]["stringData"]
    unknown = (set(config) | set(secret)) - known
    assert not unknown, f"not settings (typo?): {sorted(unknown)}"
    # And the values parse from the environment, as the roles would read them.
    for key, value in {**config, **secret}.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.topic_partitions == int(config["ROLLUP_TOPIC_PARTITIONS"])
    assert settings.worker_web_host == "0.0.0.0" and settings.log_format == "json"


def test_production_overlay(rendered: tuple[str, list[Resource]]) -> None:
    name, resources = rendered
    if name != "production":
        pytest.skip("overlay only")
    config = by_kind(resources, "ConfigMap")["rollup-config"]["data"]
    assert config["CLICKHOUSE_CLUSTER"] and config["ROLLUP_LOG_FORMAT"] == "json"
    assert config["KAFKA_BROKERS"]  # base keys survive the patch
    workers = by_kind(resources, "StatefulSet")["rollup-worker"]["spec"]["replicas"]
    assert workers <= int(config["ROLLUP_TOPIC_PARTITIONS"])  # idle workers beyond that
    for resource in resources:
        assert resource["metadata"].get("namespace", "rollup") == "rollup"
        for container in containers(resource):
            assert not container["image"].endswith(":latest"), container["image"]
            assert container["image"].startswith("registry.example.com/rollup:")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("name", sorted(OVERLAYS))
def test_kubectl_kustomize_agrees(name: str) -> None:
    # The real kustomize, where present, renders the same resources as the renderer above.
    done = subprocess.run(
        ["kubectl", "kustomize", str(OVERLAYS[name])], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    real = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    ours = render(OVERLAYS[name])
    key = lambda r: (r["kind"], r["metadata"]["name"])  # noqa: E731
    assert sorted(map(key, real)) == sorted(map(key, ours))
    real_by_key = {key(r): r for r in real}
    for resource in ours:
        twin = real_by_key[key(resource)]
        assert twin.get("spec") == resource.get("spec"), key(resource)
        assert twin.get("data") == resource.get("data"), key(resource)
        kubernetes_validate.validate(twin, KUBERNETES_VERSION, strict=True)


def test_dockerfile_is_multi_stage_non_root_and_complete() -> None:
    # No Docker engine here: check the file against the project and the manifests.
    import tomllib

    text = (ROOT / "Dockerfile").read_text()
    stages = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(stages) >= 2 and " AS runtime" in stages[-1]
    assert any(" AS build" in stage for stage in stages)
    # The dashboard and tracker bundles are built in the image and served from where it says.
    assert "COPY --from=web" in text and "ROLLUP_WEB_DIST_DIR=/app/web-dist" in text
    user = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] == "10001"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package in project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert f"COPY {package} {package}" in text, package
    assert "--no-dev" in text and "--frozen" in text
    for resource in render(OVERLAYS["base"]):
        template = resource.get("spec", {}).get("template", {})
        context = template.get("spec", {}).get("securityContext")
        if context is not None:
            assert context["runAsUser"] == 10001, resource["metadata"]["name"]
