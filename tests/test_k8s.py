"""The Kubernetes path validated offline: kustomize renders every overlay, built-in kinds pass
the Kubernetes schema strictly, the custom resources have the structure the operator needs,
the rules and dashboards are the Compose lab's own, and the security settings hold."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, rule_groups

K8S = ROOT / "k8s"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
BUILT_IN = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"}
KUBERNETES_VERSION = "1.30.0"
# The usual short names, as kubectl knows them.
SHORT_KINDS = {"horizontalpodautoscaler": "hpa", "poddisruptionbudget": "pdb"}


def kustomize(folder: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing, and CI must not skip the Kubernetes checks")
        pytest.skip("kubectl is not installed: install it to render and validate k8s/")
    result = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def objects(request) -> list[dict]:
    """The rendered objects of one overlay."""
    return kustomize(request.param)


def one(objects: list[dict], kind: str, name: str) -> dict:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def test_there_is_a_local_overlay():
    assert K8S / "overlays" / "local" in OVERLAYS


def test_generated_files_are_current():
    result = subprocess.run([sys.executable, str(K8S / "generate.py"), "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_built_in_kinds_pass_the_schema_strictly(objects):
    import kubernetes_validate

    checked = 0
    for obj in objects:
        if obj["kind"] in BUILT_IN:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            checked += 1
    assert checked >= 9


def crd_problems(obj: dict) -> str | None:
    """What prometheus-operator's CRD schema refuses in a custom resource, or None.

    The models are generated from the CRDs: types, enums and patterns are checked when an
    object is parsed. They ignore fields they do not know, so a round trip that loses or
    changes anything shows a field the CRD does not have.
    """
    from cloudcoil.models.prometheus_operator import v1, v1alpha1
    from pydantic import ValidationError

    modules = {"monitoring.coreos.com/v1": v1, "monitoring.coreos.com/v1alpha1": v1alpha1}
    model = getattr(modules[obj["apiVersion"]], obj["kind"])
    try:
        parsed = model.model_validate(obj)
    except ValidationError as error:
        return str(error)
    round_trip = json.loads(parsed.model_dump_json(by_alias=True, exclude_unset=True))
    return None if round_trip == obj else f"fields the CRD does not know: {obj} became {round_trip}"


def test_custom_resources_pass_the_operators_crd_schemas(objects):
    checked = set()
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            assert crd_problems(obj) is None, crd_problems(obj)
            checked.add(obj["kind"])
    assert checked == {"ServiceMonitor", "PrometheusRule", "AlertmanagerConfig"}


def test_the_crd_check_catches_a_misspelt_field_and_a_bad_duration(objects):
    monitor = one(objects, "ServiceMonitor", "hvs-api-monitor")
    misspelt = {**monitor, "spec": {**monitor["spec"], "endpoint": monitor["spec"]["endpoints"]}}
    assert "the CRD does not know" in crd_problems(misspelt)
    bad_interval = {**monitor, "spec": {**monitor["spec"], "endpoints": [{"port": "http-api", "interval": "15 s"}]}}
    assert "interval" in crd_problems(bad_interval)


def test_every_object_is_labelled_and_namespaced(objects):
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "hvs-lab", obj["metadata"]["name"]
        assert "app.kubernetes.io/name" in labels
        assert obj["metadata"]["namespace"] in ("default", "monitoring")


def test_files_are_named_component_kind():
    for path in (K8S / "base").rglob("*.yaml"):
        if path.name == "kustomization.yaml":
            continue
        kinds = {doc["kind"].lower() for doc in yaml.safe_load_all(path.read_text()) if doc}
        assert len(kinds) == 1, path.name
        kind = kinds.pop()
        assert path.stem.endswith("-" + SHORT_KINDS.get(kind, kind)), path.name


def test_service_monitor_is_the_users_and_produces_the_compose_job(objects):
    monitor = one(objects, "ServiceMonitor", "hvs-api-monitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["namespace"] == "monitoring"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    spec = monitor["spec"]
    assert spec["selector"] == {"matchLabels": {"app": "hvs-api"}}
    assert spec["namespaceSelector"] == {"matchNames": ["default"]}
    assert spec["endpoints"] == [{"port": "http-api", "path": "/metrics", "interval": "15s"}]
    service = one(objects, "Service", "hvs-api-service")
    assert service["metadata"]["namespace"] == "default"
    assert [p["name"] for p in service["spec"]["ports"]] == ["http-api"]
    # The job label comes from the Service's `app` label: the Compose lab's job name.
    compose_job = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]["job_name"]
    assert service["metadata"]["labels"][spec["jobLabel"]] == compose_job == "hvs-api"


def test_prometheus_rule_holds_the_compose_rules_and_passes_promtool(objects, tmp_path):
    rule = one(objects, "PrometheusRule", "hvs-api")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    assert rule["spec"]["groups"] == rule_groups()
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_are_the_compose_files(objects):
    maps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"].get("labels", {}).get("grafana_dashboard")]
    shipped = {p.name: p.read_text() for p in (ROOT / "grafana" / "dashboards").glob("*.json")}
    found = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == "monitoring"
        found.update(config_map["data"])
    assert found == shipped
    for text in found.values():
        assert all(p["datasource"]["uid"] == "prometheus" for p in json.loads(text)["panels"])


def test_alert_routing_reaches_the_receiver(objects):
    config = one(objects, "AlertmanagerConfig", "hvs-api")
    assert config["metadata"]["labels"]["release"] == "prometheus"
    spec = config["spec"]
    receivers = {r["name"] for r in spec["receivers"]}
    assert spec["route"]["receiver"] in receivers
    assert {r["receiver"] for r in spec["route"]["routes"]} <= receivers
    assert {m["value"] for r in spec["route"]["routes"] for m in r["matchers"]} == {"critical", "warning"}
    receiver = one(objects, "Service", "hvs-alert-receiver")
    host = f"http://{receiver['metadata']['name']}.{receiver['metadata']['namespace']}.svc:{receiver['spec']['ports'][0]['port']}"
    for r in spec["receivers"]:
        for hook in r["webhookConfigs"]:
            assert hook["url"].startswith(host + "/alerts/")
    assert (
        one(objects, "ConfigMap", "hvs-runbook")["data"]["runbook.md"] == (ROOT / "prometheus/runbook.md").read_text()
    )
    values = yaml.safe_load((K8S / "helm-values.yaml").read_text())
    selector = values["alertmanager"]["alertmanagerSpec"]["alertmanagerConfigSelector"]["matchLabels"]
    assert selector.items() <= config["metadata"]["labels"].items()


def test_api_deployment_is_hardened_and_sized(objects):
    deployment = one(objects, "Deployment", "hvs-api")
    assert "replicas" not in deployment["spec"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    assert pod["terminationGracePeriodSeconds"] >= 25
    for container in pod["containers"] + pod["initContainers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert container["imagePullPolicy"] == "IfNotPresent" and container["image"] == "hvs-prediction-api:latest"
        assert container["resources"]["limits"] and container["resources"]["requests"]
    [api] = pod["containers"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/health"
    assert api["readinessProbe"]["httpGet"]["path"] == "/ready"
    env = {e["name"]: e for e in api["env"]}
    assert env["WORKERS"]["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert env["FAULT_INJECTION_ENABLED"]["value"] == "false"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in api["volumeMounts"]}
    assert volumes[mounts["/tmp"]]["emptyDir"]["medium"] == "Memory"
    assert env["MLRUNS_DIR"]["value"] in mounts and "emptyDir" in volumes[mounts[env["MLRUNS_DIR"]["value"]]]


def test_autoscaling_disruption_and_network_policy(objects):
    hpa = one(objects, "HorizontalPodAutoscaler", "hvs-api")
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["scaleTargetRef"]["name"] == "hvs-api"
    assert one(objects, "PodDisruptionBudget", "hvs-api")["spec"]["minAvailable"] == 1
    policy = one(objects, "NetworkPolicy", "hvs-api")["spec"]
    assert policy["podSelector"] == {"matchLabels": {"app": "hvs-api"}} and policy["policyTypes"] == ["Ingress"]
    [rule] = policy["ingress"]
    sources = rule["from"]
    assert {"podSelector": {"matchLabels": {"hvs-api-client": "true"}}} in sources
    assert any(
        s.get("namespaceSelector") and s["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "prometheus"
        for s in sources
    )


def test_checkov_finds_no_unexplained_failure(tmp_path):
    rendered = tmp_path / "rendered.yaml"
    rendered.write_text(yaml.safe_dump_all(kustomize(K8S / "overlays" / "local")))
    checkov = os.environ.get("CHECKOV", str(ROOT / ".venv-checkov" / "bin" / "checkov"))
    assert Path(checkov).exists(), f"{checkov} is missing: `make test` installs checkov in .venv-checkov"
    command = [checkov, "-f", str(rendered), "--framework", "kubernetes", "--output", "json", "--skip-download"]
    # No network here: don't fetch the vendor's guideline mapping either.
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    report = json.loads(result.stdout)
    results = report["results"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in results["failed_checks"]]
    assert failed == [], "\n".join(failed)
    assert report["summary"]["passed"] > 100
    # Every skip is declared on its object with a reason (the checkov.io/skipN annotations).
    assert results["skipped_checks"]
    for skipped in results["skipped_checks"]:
        assert len(skipped["check_result"]["suppress_comment"]) > 30, skipped["check_id"]
