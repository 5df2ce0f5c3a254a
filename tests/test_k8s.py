"""The Kubernetes path validated offline: kustomize renders every overlay, built-in kinds pass
the Kubernetes schema strictly, the custom resources have the structure the operator needs,
the rules and dashboards are the Compose lab's own, and the security settings hold. What the
pinned kube-prometheus-stack makes of them is in test_k8s_chart.py."""

import glob
import json
import os
import posixpath
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.kube import K8S, OVERLAYS, allows, kustomize, one, workers_for
from tests.support.paths import ROOT

BUILT_IN = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ConfigMap"}
KUBERNETES_VERSION = "1.30.0"
# The usual short names, as kubectl knows them.
SHORT_KINDS = {"horizontalpodautoscaler": "hpa", "poddisruptionbudget": "pdb"}
# The Compose lab: what it loads is the oracle of what k8s/generate.py must ship.
COMPOSE_SERVICES = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
# What the Compose lab has and the cluster must not: the monitoring of the lab's own Prometheus
# and Alertmanager, with the Watchdog's heartbeat route and receiver. kube-prometheus-stack's
# default rules and its Alertmanager configuration carry their own.
LAB_ONLY_RULE_FILES = {"monitoring-stack.yml"}
LAB_ONLY_RECEIVERS = {"lab-heartbeat"}


# The base too: someone may apply it as it is.
@pytest.fixture(scope="module", params=[*OVERLAYS, K8S / "base"], ids=lambda p: p.name)
def objects(request) -> list[dict]:
    """The rendered objects of one overlay, or of the base."""
    return kustomize(request.param)


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


def test_every_object_is_labelled_and_namespaced(objects):
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "hvs-lab", obj["metadata"]["name"]
        assert "app.kubernetes.io/name" in labels
        assert obj["metadata"]["namespace"] in ("default", "monitoring")


def workloads_of(obj: dict, objects: list[dict]) -> set[str]:
    """The Deployments an object belongs to: itself, the pods it selects, scales, mounts or
    watches (a ServiceMonitor through the Service it selects, a Probe through the Service it
    probes)."""
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    namespace = obj["metadata"]["namespace"]

    def with_pods(selector: dict, where: str) -> set[str]:
        return {
            d["metadata"]["name"]
            for d in deployments
            if d["metadata"]["namespace"] == where
            and selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        }

    kind, spec = obj["kind"], obj.get("spec", {})
    if kind == "Deployment":
        return {obj["metadata"]["name"]}
    if kind == "Service":
        return with_pods(spec["selector"], namespace)
    if kind in ("NetworkPolicy", "PodDisruptionBudget"):
        return with_pods((spec.get("podSelector") or spec.get("selector"))["matchLabels"], namespace)
    if kind == "HorizontalPodAutoscaler":
        return {spec["scaleTargetRef"]["name"]}
    if kind in ("ConfigMap", "Secret"):
        return {
            d["metadata"]["name"]
            for d in deployments
            if d["metadata"]["namespace"] == namespace
            and any(
                v.get("configMap", {}).get("name") == obj["metadata"]["name"]
                or v.get("secret", {}).get("secretName") == obj["metadata"]["name"]
                for v in d["spec"]["template"]["spec"].get("volumes", [])
            )
        }
    services = [o for o in objects if o["kind"] == "Service"]
    if kind == "ServiceMonitor":
        return {
            w
            for service in services
            if spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
            and service["metadata"]["namespace"] in spec["namespaceSelector"]["matchNames"]
            for w in workloads_of(service, objects)
        }
    if kind == "Probe":
        hosts = " ".join(spec["targets"]["staticConfig"]["static"])
        return {
            w
            for service in services
            if f"//{service['metadata']['name']}.{service['metadata']['namespace']}.svc:" in hosts
            for w in workloads_of(service, objects)
        }
    return set()


def test_each_object_is_named_after_the_workload_it_belongs_to(objects):
    """app.kubernetes.io/name says which workload an object is part of, so that
    `kubectl get all,cm -l app.kubernetes.io/name=hvs-api` shows the API and nothing else; an
    object of no workload (dashboards, alerting) carries no workload's name."""
    deployments = {o["metadata"]["name"] for o in objects if o["kind"] == "Deployment"}
    for obj in objects:
        name = obj["metadata"]["labels"]["app.kubernetes.io/name"]
        owners = workloads_of(obj, objects)
        what = f"{obj['kind']} {obj['metadata']['name']}"
        if owners:
            assert owners == {name}, f"{what} belongs to {owners} but is labelled {name}"
        else:
            assert name not in deployments, f"{what} belongs to no workload but is labelled {name}"
        if obj["kind"] == "Deployment":
            assert obj["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"] == name


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


def compose_host_path(service: str, path: str) -> Path:
    """The repository path a Compose service sees at ``path`` in its container, through the
    innermost of its bind mounts that holds it."""
    mounts = []
    for volume in COMPOSE_SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith(".") and (path == target or path.startswith(target.rstrip("/") + "/")):
            mounts.append((len(target), source, target))
    assert mounts, f"{service} mounts nothing from the repository at {path}"
    _, source, target = max(mounts)
    return ROOT / source / path[len(target) :].lstrip("/")


def compose_rule_files() -> list[Path]:
    """The rule files the Compose lab's Prometheus loads: the ``rule_files`` patterns of its
    ``--config.file``, resolved through the service's bind mounts, in Prometheus's (sorted) order."""
    command = COMPOSE_SERVICES["prometheus"]["command"]
    [config_path] = [flag.split("=", 1)[1] for flag in command if flag.startswith("--config.file=")]
    config = yaml.safe_load(compose_host_path("prometheus", config_path).read_text())
    files = []
    for pattern in config["rule_files"]:
        # Prometheus reads a relative pattern from the configuration file's folder.
        in_container = posixpath.join(posixpath.dirname(config_path), pattern)
        files += sorted(Path(p) for p in glob.glob(str(compose_host_path("prometheus", in_container))))
    return files


def test_prometheus_rule_holds_the_groups_compose_prometheus_loads_and_as_many_rules_as_promtool_counts(
    objects, tmp_path
):
    rule = one(objects, "PrometheusRule", "hvs-api")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    loaded_by_compose = compose_rule_files()
    assert loaded_by_compose, "the Compose Prometheus loads no rule file"
    # Every lab-only file is one Compose loads, and none of its groups reaches the cluster.
    assert LAB_ONLY_RULE_FILES <= {path.name for path in loaded_by_compose}
    files = [path for path in loaded_by_compose if path.name not in LAB_ONLY_RULE_FILES]
    loaded = [group for path in files for group in yaml.safe_load(path.read_text())["groups"]]
    assert rule["spec"]["groups"] == loaded
    checked = subprocess.run(["promtool", "check", "rules", *map(str, files)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    counts = re.findall(r"SUCCESS: (\d+) rules found", checked.stdout)
    assert len(counts) == len(files), checked.stdout
    assert sum(len(group["rules"]) for group in rule["spec"]["groups"]) == sum(map(int, counts))
    rules_file = tmp_path / "rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    result = subprocess.run(["promtool", "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def compose_dashboard_files() -> list[Path]:
    """The dashboards the Compose lab's Grafana provisions: every *.json (Grafana walks the folder)
    under the path of each file provider of its provisioning, resolved through its bind mounts."""
    environment = COMPOSE_SERVICES["grafana"].get("environment", {})
    # Grafana's image default, unless the service moves it.
    provisioning = environment.get("GF_PATHS_PROVISIONING", "/etc/grafana/provisioning")
    providers_folder = compose_host_path("grafana", f"{provisioning}/dashboards")
    files = []
    for config in sorted([*providers_folder.glob("*.yml"), *providers_folder.glob("*.yaml")]):
        for provider in yaml.safe_load(config.read_text())["providers"]:
            if provider.get("type", "file") == "file":
                files += sorted(compose_host_path("grafana", provider["options"]["path"]).rglob("*.json"))
    return files


def test_dashboard_config_maps_hold_byte_for_byte_the_files_compose_grafana_provisions(objects):
    maps = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"].get("labels", {}).get("grafana_dashboard")]
    provisioned = {path.name: path.read_bytes() for path in compose_dashboard_files()}
    assert provisioned, "the Compose Grafana provisions no dashboard"
    shipped = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["namespace"] == "monitoring"
        for name, text in config_map["data"].items():
            assert name not in shipped, f"{name} is in two ConfigMaps"
            shipped[name] = text.encode()
    assert shipped == provisioned
    for text in shipped.values():
        # Prometheus panels follow the dashboard's datasource variable (defaulting to uid
        # "prometheus", the chart's own): no uid of Compose's Grafana is baked in.
        panels = [p for p in json.loads(text)["panels"] if p["type"] not in ("row", "alertGroups")]
        assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in panels)


def test_the_k8s_alert_receiver_reads_byte_for_byte_the_runbook_the_compose_one_reads(objects):
    compose_path = COMPOSE_SERVICES["alert-receiver"]["environment"]["RUNBOOK_PATH"]
    runbook = compose_host_path("alert-receiver", compose_path).read_bytes()
    pod = one(objects, "Deployment", "hvs-alert-receiver")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    path = {e["name"]: e.get("value") for e in container["env"]}["RUNBOOK_PATH"]
    [mount] = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = one(objects, "ConfigMap", volume["configMap"]["name"])
    assert config_map["data"][posixpath.relpath(path, mount["mountPath"])].encode() == runbook


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
    values = yaml.safe_load((K8S / "helm-values.yaml").read_text())
    selector = values["alertmanager"]["alertmanagerSpec"]["alertmanagerConfigSelector"]["matchLabels"]
    assert selector.items() <= config["metadata"]["labels"].items()


def test_alert_routing_and_inhibitions_are_the_compose_alertmanagers(objects):
    """The AlertmanagerConfig says what alertmanager.yml says, matcher for matcher."""

    def parsed(compose_matchers: list[str]) -> list[dict]:
        """Compose matchers as the operator's, whose matchType "=" is the default, left out."""
        found = [re.fullmatch(r'(\w+)(=~|!~|!=|=)"(.*)"', m).groups() for m in compose_matchers]
        return [{"name": name, "value": value} | ({"matchType": op} if op != "=" else {}) for name, op, value in found]

    compose = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    spec = one(objects, "AlertmanagerConfig", "hvs-api")["spec"]
    assert spec["inhibitRules"] == [
        {"sourceMatch": parsed(r["source_matchers"]), "targetMatch": parsed(r["target_matchers"]), "equal": r["equal"]}
        for r in compose["inhibit_rules"]
    ]
    route = spec["route"]
    assert route["matchers"] == [{"name": "job", "value": "hvs-api"}]
    assert (route["receiver"], route["groupBy"]) == (compose["route"]["receiver"], compose["route"]["group_by"])
    # Every route and receiver but the lab-only heartbeat's, which Compose has and the cluster not.
    heartbeat = [r for r in compose["route"]["routes"] if r["receiver"] in LAB_ONLY_RECEIVERS]
    assert [r["matchers"] for r in heartbeat] == [['alertname="Watchdog"']]
    assert [(r["receiver"], r["matchers"]) for r in route["routes"]] == [
        (r["receiver"], parsed(r["matchers"])) for r in compose["route"]["routes"] if r not in heartbeat
    ]
    assert LAB_ONLY_RECEIVERS <= {r["name"] for r in compose["receivers"]}
    assert [r["name"] for r in spec["receivers"]] == [
        r["name"] for r in compose["receivers"] if r["name"] not in LAB_ONLY_RECEIVERS
    ]


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
    # Written out (the downward API would give the node's CPUs if an overlay dropped the limit),
    # one worker per CPU of the limit. The image's worker class is left as it is: gevent.
    assert int(env["WORKERS"]["value"]) == workers_for(api["resources"]["limits"]["cpu"])
    assert "WORKER_CLASS" not in env
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
    # The stack's Prometheus: test_k8s_chart.py checks it against the pods the operator labels.
    assert any(
        s.get("namespaceSelector") and "operator.prometheus.io/name" in s["podSelector"]["matchLabels"] for s in sources
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


def test_the_blackbox_exporter_reads_byte_for_byte_the_config_the_compose_one_reads(objects):
    compose = COMPOSE_SERVICES["blackbox"]
    [compose_path] = [f.split("=", 1)[1] for f in compose["command"] if f.startswith("--config.file=")]
    config = compose_host_path("blackbox", compose_path).read_bytes()
    deployment = one(objects, "Deployment", "hvs-blackbox-exporter")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    # The image Compose pins, so that both run the version the tests run.
    assert container["image"] == compose["image"]
    [path] = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--config.file=")]
    [mount] = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"].rstrip("/") + "/")]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = one(objects, "ConfigMap", volume["configMap"]["name"])
    assert config_map["data"][posixpath.relpath(path, mount["mountPath"])].encode() == config
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["automountServiceAccountToken"] is False
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"


def test_the_probes_are_the_compose_probe_job_through_the_exporters_service(objects):
    """Each Probe gives its series the Compose job's name, module label and interval, and
    probes the same path of the API's Service with the same module, through the exporter's
    Service: one Probe per Compose target."""
    prometheus = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    [job] = [j for j in prometheus["scrape_configs"] if j.get("metrics_path") == "/probe"]
    exporter = one(objects, "Service", "hvs-blackbox-exporter")
    meta, [port] = exporter["metadata"], exporter["spec"]["ports"]
    api = one(objects, "Service", "hvs-api-service")
    [api_port] = api["spec"]["ports"]
    host = f"{api['metadata']['name']}.{api['metadata']['namespace']}.svc:{api_port['port']}"
    # Compose: module label -> the URL probed with that module, on the cluster's API Service.
    compose = {
        c["labels"]["module"]: f"http://{host}/" + target.split("//", 1)[1].partition("/")[2]
        for c in job["static_configs"]
        for target in c["targets"]
    }
    probes = [o for o in objects if o["kind"] == "Probe"]
    cluster = {}
    for probe in probes:
        assert probe["metadata"]["labels"]["release"] == "prometheus"
        spec = probe["spec"]
        assert spec["jobName"] == job["job_name"] == "hvs-api-probe"
        assert spec["interval"] == prometheus["global"]["scrape_interval"]
        assert spec["prober"] == {"url": f"{meta['name']}.{meta['namespace']}.svc:{port['port']}", "path": "/probe"}
        static = spec["targets"]["staticConfig"]
        assert static["labels"] == {"module": spec["module"]}
        [cluster[spec["module"]]] = static["static"]
    assert cluster == compose and set(compose) == {"hvs_api_ready", "hvs_api_predict"}


def test_network_policies_let_the_exporter_reach_the_api_and_only_prometheus_reach_the_exporter(objects):
    exporter = one(objects, "Deployment", "hvs-blackbox-exporter")
    exporter_pod = (exporter["metadata"]["namespace"], exporter["spec"]["template"]["metadata"]["labels"])
    api = one(objects, "Deployment", "hvs-api")
    api_labels = api["spec"]["template"]["metadata"]["labels"]
    [api_port] = one(objects, "Service", "hvs-api-service")["spec"]["ports"]
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    selecting_api = [
        p
        for p in policies
        if p["spec"]["podSelector"]["matchLabels"].items() <= api_labels.items()
        and p["metadata"]["namespace"] == api["metadata"]["namespace"]
    ]
    assert any(allows(p, *exporter_pod, api_port["targetPort"]) for p in selecting_api)
    # A pod that is neither a client nor the exporter stays out.
    assert not any(allows(p, "monitoring", {"app": "something-else"}, api_port["targetPort"]) for p in selecting_api)
    own = one(objects, "NetworkPolicy", "hvs-blackbox-exporter")
    assert own["spec"]["podSelector"]["matchLabels"].items() <= exporter_pod[1].items()
    # The stack's Prometheus (test_k8s_chart.py checks the label against the operator's).
    prometheus = {"operator.prometheus.io/name": "prometheus-kube-prometheus-prometheus"}
    assert allows(own, "monitoring", prometheus, "http")
    assert not allows(own, "monitoring", {"app": "hvs-alert-receiver"}, "http")
