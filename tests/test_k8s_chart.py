"""The lab's objects and values against the pinned kube-prometheus-stack, offline: every values
key exists in its chart, the chart's Prometheus, Alertmanager and Grafana select every lab
object, the CRDs of the operator it ships accept them, and docs/kubernetes.md's and the scripts'
commands name things that exist. Each check has a test that feeds it the defect it guards
against (the ``*_catches_*`` tests), since a check that cannot fail proves nothing.

The chart's decisions are modelled in tests/kube.py from its templates; k8s/kind-smoke.sh
checks the same claims in a real cluster.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.kube import (
    K8S,
    OVERLAYS,
    STACK_CHART,
    VENDOR,
    adds_namespace_matcher,
    alertmanager_selectors,
    allows,
    as_custom_resource,
    chart_defaults,
    chart_services,
    crd_problems,
    grafana_datasources,
    grafana_secret,
    helm_install,
    kustomize,
    matches,
    merged,
    namespace_matches,
    one,
    operator_alertmanager_config,
    operator_crds,
    prometheus_pod_labels,
    prometheus_selectors,
    release_and_namespace,
    sidecar_sees,
    sources,
    stack_pins,
    stack_values,
    unknown_keys,
)
from tests.support.dashboards import DASHBOARDS
from tests.support.paths import ROOT
from tests.support.rules import seconds

STACK_VALUES = [K8S / "helm-values.yaml", K8S / "helm-values-alerting.yaml", K8S / "helm-values-docker-desktop.yaml"]
METRICS_SERVER_VALUES = K8S / "metrics-server-values.yaml"
SCRIPTS = [K8S / "install-stack.sh", K8S / "deploy.sh", K8S / "kind-smoke.sh"]
COMPOSE_DATASOURCES = yaml.safe_load((ROOT / "grafana/provisioning/datasources/datasources.yml").read_text())[
    "datasources"
]


@pytest.fixture(scope="module", params=OVERLAYS, ids=lambda p: p.name)
def objects(request) -> list[dict]:
    return kustomize(request.param)


@pytest.fixture(scope="module")
def values() -> dict:
    """The stack's values as docs/kubernetes.md installs it on kind (Docker Desktop adds a file that
    touches only node-exporter)."""
    return stack_values(K8S / "helm-values.yaml")


@pytest.fixture(scope="module")
def stack() -> tuple[str, str]:
    return release_and_namespace()


def readme_section() -> str:
    """The Kubernetes guide the README points to: every command a user copies from it."""
    return (ROOT / "docs" / "kubernetes.md").read_text()


# --- The pins and the vendored files ----------------------------------------------------------


def test_the_vendored_files_are_the_pinned_charts_and_their_dependencies():
    pins = stack_pins()
    listed = sources()
    assert listed[STACK_CHART]["version"] == pins["KUBE_PROMETHEUS_STACK_VERSION"]
    assert listed["metrics-server"]["version"] == pins["METRICS_SERVER_CHART_VERSION"]
    for chart, source in listed.items():
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]), chart
        for name in source["files"]:
            assert (VENDOR / name).is_file(), name
            assert source["version"] in name, f"{name} is not named after {chart} {source['version']}"
    # The subcharts vendored are the versions the pinned chart depends on...
    [chart_file] = [name for name in listed[STACK_CHART]["files"] if name.endswith("-Chart.yaml")]
    chart = yaml.safe_load((VENDOR / chart_file).read_text())
    assert chart["version"] == listed[STACK_CHART]["version"]
    dependencies = {d["name"]: d["version"] for d in chart["dependencies"]}
    for sub in ("grafana", "prometheus-node-exporter"):
        assert dependencies[sub] == listed[sub]["version"], sub
    # ...and the CRDs are those of the operator version it ships.
    [crds] = [name for name in listed[STACK_CHART]["files"] if name.endswith("-crds.bz2")]
    operator = {crd["metadata"]["annotations"]["operator.prometheus.io/version"] for crd in operator_crds().values()}
    assert len(operator_crds()) >= 10, crds
    assert {f"v{version}" for version in operator} == {chart["appVersion"]}


# --- Every key of the values files exists in its chart ---------------------------------------


@pytest.mark.parametrize("path", STACK_VALUES, ids=lambda p: p.name)
def test_every_key_of_the_stack_values_exists_in_the_chart(path):
    assert unknown_keys(yaml.safe_load(path.read_text()), stack_values()) == []


def test_every_key_of_the_metrics_server_values_exists_in_its_chart():
    assert unknown_keys(yaml.safe_load(METRICS_SERVER_VALUES.read_text()), chart_defaults("metrics-server")) == []
    assert "--kubelet-insecure-tls" in yaml.safe_load(METRICS_SERVER_VALUES.read_text())["args"]


def test_the_key_check_catches_a_misplaced_or_misspelt_key():
    defaults = stack_values()
    # Misspelt; a level too high (retention belongs in prometheusSpec); a subchart key unknown.
    assert unknown_keys({"prometheus": {"prometheusSpec": {"retension": "31d"}}}, defaults) == [
        "prometheus.prometheusSpec.retension"
    ]
    assert unknown_keys({"prometheus": {"retention": "31d"}}, defaults) == ["prometheus.retention"]
    assert unknown_keys({"grafana": {"adminPasword": "x"}}, defaults) == ["grafana.adminPasword"]
    assert unknown_keys({"prometheus-node-exporter": {"hostRootFsMount": {"enable": False}}}, defaults) == [
        "prometheus-node-exporter.hostRootFsMount.enable"
    ]
    # Below a pass-through key (a selector), anything goes: the CRD schema checks it instead.
    assert (
        unknown_keys({"prometheus": {"prometheusSpec": {"ruleSelector": {"matchLabels": {"a": "b"}}}}}, defaults) == []
    )


def test_the_grafana_password_is_not_set_in_the_values(values):
    """The chart generates it into a Secret; a password in a committed file would be everyone's."""
    for path in STACK_VALUES:
        assert "adminPassword" not in (yaml.safe_load(path.read_text()).get("grafana") or {}), path.name
    assert values["grafana"].get("adminPassword") is None and not values["grafana"]["admin"]["existingSecret"]


# --- Grafana's datasources -------------------------------------------------------------------


def alert_list_panels() -> list[dict]:
    return [p for path in DASHBOARDS for p in json.loads(path.read_text())["panels"] if p["type"] == "alertGroups"]


def alertmanager_datasource_problems(values: dict, stack: tuple[str, str]) -> list[str]:
    """What keeps Grafana from having exactly one Alertmanager datasource, the chart's, named as
    the alert list reads it (Grafana names an Alertmanager source by its datasource name) and
    with Compose's name and uid, so that the same dashboard files work in both."""
    found = [d for d in grafana_datasources(values, stack) if d["type"] == "alertmanager"]
    if len(found) != 1:
        return [f"{len(found)} Alertmanager datasources: {[(d['name'], d.get('uid')) for d in found]}"]
    [datasource] = found
    chart = values["grafana"]["sidecar"]["datasources"]["alertmanager"]
    problems = []
    if not chart["enabled"] or (datasource["name"], datasource["uid"]) != (chart["name"], chart["uid"]):
        problems.append(f"not the chart's own: {datasource['name']}")
    problems += [
        f"the alert list reads {p['options']['alertmanager']}"
        for p in alert_list_panels()
        if p["options"]["alertmanager"] != datasource["name"]
    ]
    [compose] = [d for d in COMPOSE_DATASOURCES if d["type"] == "alertmanager"]
    if (datasource["name"], datasource["uid"]) != (compose["name"], compose["uid"]):
        problems.append(f"name and uid {datasource['name']}, {datasource['uid']}, not Compose's")
    if datasource.get("jsonData") != {k: compose["jsonData"].get(k) for k in datasource.get("jsonData") or {}}:
        problems.append(f"jsonData {datasource.get('jsonData')}, not Compose's")
    # At the chart's Alertmanager Service, on its port.
    port = values["alertmanager"]["service"]["port"]
    services = {f"http://{name}.{ns}:{port}/" for ns, name in chart_services(*stack, values) if "alertmanager" in name}
    if datasource.get("url") not in services:
        problems.append(f"url {datasource.get('url')}")
    return problems


def test_grafana_gets_one_alertmanager_datasource_the_charts_named_as_the_dashboards_read_it(values, stack):
    """The chart provisions an Alertmanager datasource of its own (sidecar.datasources.alertmanager):
    one added by hand beside it (additionalDataSources) would be a second with the same name and
    uid, so the values set the chart's instead."""
    assert alertmanager_datasource_problems(values, stack) == []
    # The alert list it is checked against is there (the name check would pass on none).
    assert alert_list_panels()


def test_the_datasource_check_catches_a_second_alertmanager_none_and_another_name_or_uid(values, stack):
    def problems(grafana: dict) -> list[str]:
        return alertmanager_datasource_problems(merged(values, {"grafana": grafana}), stack)

    # The one the values used to add beside the chart's, by each of the three ways in.
    by_hand = {"name": "Alertmanager", "uid": "alertmanager", "type": "alertmanager", "url": "http://am:9093"}
    two = ["2 Alertmanager datasources: [('Alertmanager', 'alertmanager'), ('Alertmanager', 'alertmanager')]"]
    assert problems({"additionalDataSources": [by_hand]}) == two
    assert problems({"additionalDataSourcesString": yaml.safe_dump([by_hand])}) == two
    assert problems({"datasources": {"datasources.yaml": {"apiVersion": 1, "datasources": [by_hand]}}}) == two
    # The chart's turned off: none, or only the one by hand.
    off = {"sidecar": {"datasources": {"alertmanager": {"enabled": False}}}}
    assert problems(off) == ["0 Alertmanager datasources: []"]
    assert "not the chart's own: Alertmanager" in problems({**off, "additionalDataSources": [by_hand]})
    # Another uid or name than Compose's and the dashboards'; another Service; other settings.
    assert problems({"sidecar": {"datasources": {"alertmanager": {"uid": "am"}}}}) == [
        "name and uid Alertmanager, am, not Compose's"
    ]
    renamed = problems({"sidecar": {"datasources": {"alertmanager": {"name": "AM"}}}})
    assert "the alert list reads Alertmanager" in renamed and "name and uid AM, alertmanager, not Compose's" in renamed
    assert problems({"sidecar": {"datasources": {"alertmanager": {"url": "http://am:9093/"}}}}) == [
        "url http://am:9093/"
    ]
    assert problems({"sidecar": {"datasources": {"alertmanager": {"handleGrafanaManagedAlerts": True}}}}) == [
        "jsonData {'handleGrafanaManagedAlerts': True, 'implementation': 'prometheus'}, not Compose's"
    ]


# --- The chart's objects select the lab's ----------------------------------------------------


def selected_by_prometheus(obj: dict, values: dict, stack: tuple[str, str]) -> bool:
    release, namespace = stack
    selector, namespace_selector = prometheus_selectors(release, values)[obj["kind"]]
    return matches(selector, obj["metadata"].get("labels", {})) and namespace_matches(
        namespace_selector, obj["metadata"]["namespace"], namespace
    )


def selected_by_alertmanager(obj: dict, values: dict, stack: tuple[str, str]) -> bool:
    selector, namespace_selector = alertmanager_selectors(values)
    return matches(selector, obj["metadata"].get("labels", {})) and namespace_matches(
        namespace_selector, obj["metadata"]["namespace"], stack[1]
    )


def test_the_charts_prometheus_alertmanager_and_grafana_select_every_lab_object(objects, values, stack):
    kinds = {"ServiceMonitor": 0, "Probe": 0, "PrometheusRule": 0, "AlertmanagerConfig": 0, "dashboards": 0}
    for obj in objects:
        if obj["kind"] in ("ServiceMonitor", "Probe", "PrometheusRule"):
            assert selected_by_prometheus(obj, values, stack), obj["metadata"]["name"]
            kinds[obj["kind"]] += 1
        elif obj["kind"] == "AlertmanagerConfig":
            assert selected_by_alertmanager(obj, values, stack), obj["metadata"]["name"]
            kinds["AlertmanagerConfig"] += 1
        elif obj["kind"] == "ConfigMap" and obj["metadata"]["name"].startswith("grafana-dashboard-"):
            assert sidecar_sees(values, stack[1], obj), obj["metadata"]["name"]
            kinds["dashboards"] += 1
    dashboards = len(list((ROOT / "grafana" / "dashboards").glob("*.json")))
    # One Probe per target of the Compose probe job (a Probe runs one module).
    prometheus = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    [probe_job] = [j for j in prometheus["scrape_configs"] if j["job_name"] == "hvs-api-probe"]
    probes = sum(len(c["targets"]) for c in probe_job["static_configs"])
    assert kinds == {
        "ServiceMonitor": 1,
        "Probe": probes,
        "PrometheusRule": 1,
        "AlertmanagerConfig": 1,
        "dashboards": dashboards,
    }


def test_the_service_monitor_finds_the_api_service(objects):
    monitor = one(objects, "ServiceMonitor", "hvs-api-monitor")["spec"]
    found = [
        s
        for s in objects
        if s["kind"] == "Service"
        and matches(monitor["selector"], s["metadata"].get("labels", {}))
        and namespace_matches(monitor["namespaceSelector"], s["metadata"]["namespace"], "monitoring")
    ]
    assert [s["metadata"]["name"] for s in found] == ["hvs-api-service"]
    ports = {p["name"] for p in found[0]["spec"]["ports"]}
    assert {e["port"] for e in monitor["endpoints"]} <= ports


def test_the_selector_checks_catch_a_renamed_release_and_a_misplaced_object(objects, values, stack):
    namespace = stack[1]
    monitor = one(objects, "ServiceMonitor", "hvs-api-monitor")
    # The chart's default selector names the release: installed under another name, it selects
    # nothing of the lab's unless the release label follows.
    assert not selected_by_prometheus(monitor, stack_values(), ("lab", namespace))
    relabelled = {**monitor, "metadata": {**monitor["metadata"], "labels": {"release": "other"}}}
    assert not selected_by_prometheus(relabelled, values, stack)
    config = one(objects, "AlertmanagerConfig", "hvs-api")
    no_namespaces = merge_spec(
        values, "alertmanager", "alertmanagerSpec", {"alertmanagerConfigNamespaceSelector": None}
    )
    elsewhere = {**config, "metadata": {**config["metadata"], "namespace": "default"}}
    assert not selected_by_alertmanager(elsewhere, no_namespaces, stack)
    dashboard = next(o for o in objects if o["metadata"]["name"].startswith("grafana-dashboard-"))
    moved = {**dashboard, "metadata": {**dashboard["metadata"], "namespace": "default"}}
    assert not sidecar_sees(values, namespace, moved)
    unlabelled = {**dashboard, "metadata": {**dashboard["metadata"], "labels": {"grafana_dashboard": "0"}}}
    assert not sidecar_sees(values, namespace, unlabelled)


def merge_spec(values: dict, section: str, spec: str, changes: dict) -> dict:
    return {**values, section: {**values[section], spec: {**values[section][spec], **changes}}}


# --- The lab's routes see the API's alerts ---------------------------------------------------


def alert_labels() -> list[tuple[str, set[str]]]:
    """Each alert of the rules shipped to the cluster, with the label names it can carry: those of
    its expression's result (after aggregation) and of its rule."""
    rule = yaml.safe_load((K8S / "base" / "generated" / "hvs-api-prometheusrule.yaml").read_text())
    found = []
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            if "alert" in r:
                found.append((r["alert"], r["expr"], set(r.get("labels", {}))))
    return found


def test_the_operator_adds_no_namespace_matcher_the_api_alerts_could_not_meet(objects, values, stack):
    """Under OnNamespace (the operator's default) each route and inhibition of the config would
    require namespace="monitoring"; the API's alerts never carry it (their series come from the
    `default` namespace, and the job-level ones aggregate it away)."""
    config = one(objects, "AlertmanagerConfig", "hvs-api")
    assert not adds_namespace_matcher(values, stack[1], config)
    # While another team's config, in its own namespace, stays scoped to it (strategy None
    # would let its routes take every alert of the cluster).
    theirs = {**config, "metadata": {**config["metadata"], "namespace": "team-a"}}
    assert adds_namespace_matcher(values, stack[1], theirs)
    # The Alertmanager's namespace is the release's, where the config lives.
    assert config["metadata"]["namespace"] == stack[1]
    # And no alert sets a namespace label of its own that could have made a matcher work.
    assert all("namespace" not in labels for _, _, labels in alert_labels())


def test_the_matcher_check_catches_the_operators_default_and_a_config_in_another_namespace(objects, values, stack):
    config = one(objects, "AlertmanagerConfig", "hvs-api")
    default = merge_spec(values, "alertmanager", "alertmanagerSpec", {"alertmanagerConfigMatcherStrategy": {}})
    assert adds_namespace_matcher(default, stack[1], config)
    elsewhere = {**config, "metadata": {**config["metadata"], "namespace": "default"}}
    assert adds_namespace_matcher(values, stack[1], elsewhere)


# --- The CRDs of the operator the chart ships ------------------------------------------------


def test_custom_resources_pass_the_crds_of_the_operator_the_chart_ships(objects):
    checked = set()
    for obj in objects:
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            assert crd_problems(obj) is None, crd_problems(obj)
            checked.add(obj["kind"])
    assert checked == {"ServiceMonitor", "PrometheusRule", "AlertmanagerConfig", "Probe"}


def test_the_values_prometheus_and_alertmanager_settings_pass_their_crds():
    values = yaml.safe_load((K8S / "helm-values.yaml").read_text())
    prometheus = as_custom_resource("Prometheus", values["prometheus"]["prometheusSpec"])
    alertmanager = as_custom_resource("Alertmanager", values["alertmanager"]["alertmanagerSpec"])
    assert crd_problems(prometheus) is None, crd_problems(prometheus)
    assert crd_problems(alertmanager) is None, crd_problems(alertmanager)


def test_the_crd_check_catches_a_misspelt_field_a_bad_duration_and_an_unknown_strategy(objects):
    monitor = one(objects, "ServiceMonitor", "hvs-api-monitor")
    misspelt = {**monitor, "spec": {**monitor["spec"], "endpoint": monitor["spec"]["endpoints"]}}
    assert "'endpoint' was unexpected" in crd_problems(misspelt)
    bad_interval = {**monitor, "spec": {**monitor["spec"], "endpoints": [{"port": "http-api", "interval": "15 s"}]}}
    assert "spec.endpoints.0.interval" in crd_problems(bad_interval)
    strategy = as_custom_resource("Alertmanager", {"alertmanagerConfigMatcherStrategy": {"type": "OnNamespaceExcept"}})
    assert "alertmanagerConfigMatcherStrategy.type" in crd_problems(strategy)
    retention = as_custom_resource("Prometheus", {"retention": "31 days"})
    assert "spec.retention" in crd_problems(retention)


# --- Retention, NetworkPolicy, names ---------------------------------------------------------


def longest_rule_range() -> float:
    """The longest range any shipped rule reads, in seconds (the SLOs' 30 days)."""
    text = (K8S / "base" / "generated" / "hvs-api-prometheusrule.yaml").read_text()
    return max(seconds(r) for r in re.findall(r"\[(\d+[smhdwy])\]", text))


def test_prometheus_keeps_what_the_slo_rules_read_on_a_volume(values):
    spec = values["prometheus"]["prometheusSpec"]
    assert seconds(spec["retention"]) > longest_rule_range()
    claim = spec["storageSpec"]["volumeClaimTemplate"]["spec"]
    assert claim["resources"]["requests"]["storage"]
    # The size-based limit must bite before the volume is full.
    gib = float(claim["resources"]["requests"]["storage"].removesuffix("Gi"))
    assert float(spec["retentionSize"].removesuffix("GB")) * 1e9 < gib * 2**30


def test_the_api_and_the_exporter_let_in_the_stacks_prometheus_and_no_other(objects, values, stack):
    release, namespace = stack
    ours = prometheus_pod_labels(release, values)
    # Another Prometheus in the same namespace (a team's own, or a second shard of a test).
    other = prometheus_pod_labels("other", values)
    policies = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in objects if p["kind"] == "NetworkPolicy"}
    api_port = one(objects, "Service", "hvs-api-service")["spec"]["ports"][0]["targetPort"]
    exporter_port = one(objects, "Service", "hvs-blackbox-exporter")["spec"]["ports"][0]["targetPort"]
    assert allows(policies[("default", "hvs-api")], namespace, ours, api_port)
    assert not allows(policies[("default", "hvs-api")], namespace, other, api_port)
    assert allows(policies[("monitoring", "hvs-blackbox-exporter")], namespace, ours, exporter_port)
    assert not allows(policies[("monitoring", "hvs-blackbox-exporter")], namespace, other, exporter_port)


# --- docs/kubernetes.md's and the scripts' commands name what exists --------------------------


def names_in_commands(text: str) -> dict[str, set]:
    """What commands in a guide or a script refer to."""
    found: dict[str, set] = {k: set() for k in ("services", "secrets", "deployments", "targets", "files", "make")}
    for line in text.replace("\\\n", " ").splitlines():
        if "kubectl" in line:
            try:
                words = shlex.split(line.split("#")[0].strip().strip("`"))
            except ValueError:
                words = line.split()
            namespace = "default"
            for flag in ("-n", "--namespace"):
                if flag in words:
                    namespace = words[words.index(flag) + 1]
            for word in words:
                for kind, key in (("svc", "services"), ("deployment", "deployments")):
                    if word.startswith(kind + "/") and "$" not in word:
                        found[key].add((namespace, word.split("/", 1)[1]))
            if "secret" in words:
                name = words[words.index("secret") + 1]
                if name.startswith("-"):
                    name = next(
                        w for w in words[words.index("secret") + 1 :] if not w.startswith("-") and w != namespace
                    )
                jsonpath = re.search(r"\{\.data\.([\w-]+)\}", line)
                found["secrets"].add((namespace, name, jsonpath.group(1) if jsonpath else None))
        # kind-smoke.sh's port-forwards: forward <namespace> <service> <port>.
        forward = re.match(r"\s*forward ([\w-]+) ([\w-]+) \d+", line)
        if forward:
            found["services"].add(forward.groups())
    # The API server's service proxy: /api/v1/namespaces/<namespace>/services/<service>:<port>.
    found["services"] |= set(re.findall(r"/namespaces/([\w-]+)/services/([\w-]+):", text))
    found["targets"] = set(re.findall(r"serviceMonitor/([\w-]+)/([\w-]+)/(\d+)", text))
    found["files"] = set(re.findall(r"(?<![\w/.-])(k8s/[\w./-]+\.(?:ya?ml|sh|env))", text))
    # `make x` in prose, or a command line or comment that starts with it.
    found["make"] = set(re.findall(r"(?:`|^[#\s]*)make ([a-z0-9][\w-]*)", text, re.MULTILINE))
    found["alerts"] = set(re.findall(r"\b(Hvs[A-Z]\w+)\b", text))
    found["versions"] = set(re.findall(r"(\S+/(?:kube-prometheus-stack|metrics-server)) --version (\S+)", text))
    return found


def problems_in(text: str, objects: list[dict], values: dict, stack: tuple[str, str]) -> list[str]:
    """What a text's commands name that the lab, the chart, the rules or the repository lack."""
    release, namespace = stack
    named = names_in_commands(text)
    services = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects if o["kind"] == "Service"}
    services |= chart_services(release, namespace, values)
    deployments = {(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objects if o["kind"] == "Deployment"}
    secret, user_key, password_key = grafana_secret(release, values)
    monitors = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects if o["kind"] == "ServiceMonitor"
    }
    alerts = {a for a, _, _ in alert_labels()}
    targets = set(re.findall(r"^\.PHONY: ([a-z0-9-]+)", (ROOT / "Makefile").read_text(), re.MULTILINE))
    pins = {
        "kube-prometheus-stack": stack_pins()["KUBE_PROMETHEUS_STACK_VERSION"],
        "metrics-server": stack_pins()["METRICS_SERVER_CHART_VERSION"],
    }
    problems = [f"Service {s}" for s in named["services"] - services]
    problems += [f"Deployment {d}" for d in named["deployments"] - deployments]
    for ns, name, key in named["secrets"]:
        if (ns, name) != (namespace, secret) or key not in (None, user_key, password_key):
            problems.append(f"Secret {ns}/{name} key {key}")
    for ns, name, index in named["targets"]:
        monitor = monitors.get((ns, name))
        if monitor is None or int(index) >= len(monitor["spec"]["endpoints"]):
            problems.append(f"target serviceMonitor/{ns}/{name}/{index}")
    problems += [f"file {f}" for f in named["files"] if not (ROOT / f).exists()]
    problems += [f"make {t}" for t in named["make"] - targets]
    problems += [f"alert {a}" for a in named["alerts"] - alerts]
    problems += [f"{chart} --version {v}" for chart, v in named["versions"] if pins[chart.rsplit("/", 1)[1]] != v]
    if re.search(r"^\s*kind load docker-image", text, re.MULTILINE) or "prom-operator" in text:
        problems.append("kind load docker-image / the old default password")
    return problems


def test_the_readme_names_services_secrets_alerts_and_versions_that_exist(objects, values, stack):
    section = readme_section()
    assert problems_in(section, objects, values, stack) == []
    named = names_in_commands(section)
    # It shows each thing it promises: the password's Secret, the stack's UIs, the scale to 0.
    assert named["secrets"] and len(named["services"]) >= 5 and "HvsApiDown" in named["alerts"]
    assert {chart.rsplit("/", 1)[1] for chart, _ in named["versions"]} == {"kube-prometheus-stack", "metrics-server"}
    assert helm_install(section) == stack
    # "the five HVS dashboards": as many as Compose provisions and make k8s ships.
    numbers = dict(zip(["three", "four", "five", "six", "seven", "eight"], range(3, 9), strict=True))
    counts = re.findall(r"the (\w+)\s+(?:HVS\s+)?dashboards", section)
    dashboards = len(list((ROOT / "grafana" / "dashboards").glob("*.json")))
    assert counts and all(numbers.get(word) == dashboards for word in counts), counts


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_scripts_name_what_exists(script, objects, values, stack):
    assert script.stat().st_mode & 0o111, f"{script.name} is not executable"
    assert problems_in(script.read_text(), objects, values, stack) == []


def test_the_readme_check_catches_a_wrong_service_secret_alert_target_and_version(objects, values, stack):
    section = readme_section()
    broken = (
        section.replace("svc/prometheus-kube-prometheus-prometheus", "svc/prometheus-prometheus")
        .replace("secret -n monitoring prometheus-grafana", "secret -n monitoring grafana-admin")
        .replace("`HvsApiDown`", "`HvsApiAbsent`")
        .replace("hvs-api-monitor/0", "hvs-api-monitor/1")
        .replace("--version 88.5.3", "--version 80.0.0")
        .replace("kind load image-archive", "kind load docker-image")
    )
    found = problems_in(broken, objects, values, stack)
    assert "Service ('monitoring', 'prometheus-prometheus')" in found
    assert any(p.startswith("Secret monitoring/grafana-admin") for p in found)
    assert "alert HvsApiAbsent" in found
    assert "target serviceMonitor/monitoring/hvs-api-monitor/1" in found
    assert "prometheus-community/kube-prometheus-stack --version 80.0.0" in found
    assert "kind load docker-image / the old default password" in found


def test_the_scripts_and_the_makefile_read_the_pins_from_stack_env():
    for script in SCRIPTS:
        text = script.read_text()
        assert not re.search(r"--version \d", text), f"{script.name} pins a version of its own"
    assert "k8s/stack.env" in (K8S / "install-stack.sh").read_text()


def test_the_node_image_is_pinned_by_digest():
    image = stack_pins()["KIND_NODE_IMAGE"]
    assert re.fullmatch(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", image), image


def test_every_values_file_is_named_in_the_readme_and_used_by_a_script():
    section = readme_section()
    scripts = "\n".join(s.read_text() for s in SCRIPTS)
    for path in [*STACK_VALUES, METRICS_SERVER_VALUES]:
        name = str(path.relative_to(ROOT))
        assert name in section and name in scripts, name


def test_the_scripts_pass_shellcheck():
    """The scripts cannot run here (no cluster): shellcheck at least finds what bash would trip on
    (unquoted expansions, a variable set in a subshell, a missing `|| exit`)."""
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is missing (make system-deps installs it), and CI must not skip it")
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(["shellcheck", "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


# --- The stack's own alerts and its Watchdog reach the alert receiver ------------------------

ALERTING_VALUES = K8S / "helm-values-alerting.yaml"


def stack_alertmanager_config(tmp_path: Path, *values_files: Path) -> Path:
    amc = yaml.safe_load((K8S / "base" / "generated" / "hvs-api-alertmanagerconfig.yaml").read_text())
    config = operator_alertmanager_config(stack_values(*values_files), amc)
    path = tmp_path / "alertmanager.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    checked = subprocess.run(["amtool", "check-config", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    return path


def receivers_of(config: Path, labels: list[str]) -> str:
    """The receivers an alert with these labels reaches, as amtool lists them."""
    result = subprocess.run(
        ["amtool", "config", "routes", "test", f"--config.file={config}", *labels], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def test_install_stack_passes_the_alerting_values_after_the_lab_values():
    script = (K8S / "install-stack.sh").read_text()
    assert "values=(-f k8s/helm-values.yaml -f k8s/helm-values-alerting.yaml)" in script


# The stack's alerts by the labels the chart's rules give them (kube-prometheus-stack's
# default rules: alertmanager.rules, prometheus, config-reloaders, general.rules).
STACK_ALERTS = [
    (["alertname=Watchdog", "severity=none", "namespace=monitoring"], "lab-heartbeat"),
    (["alertname=PrometheusRuleFailures", "severity=critical", "namespace=monitoring"], "lab-pages"),
    (["alertname=PrometheusBadConfig", "severity=critical", "namespace=monitoring"], "lab-pages"),
    (["alertname=AlertmanagerFailedToSendAlerts", "severity=warning", "namespace=monitoring"], "lab-tickets"),
    (["alertname=ConfigReloaderSidecarErrors", "severity=warning", "namespace=monitoring"], "lab-tickets"),
    (["alertname=PrometheusNotConnectedToAlertmanagers", "severity=warning", "namespace=monitoring"], "lab-tickets"),
    (["alertname=InfoInhibitor", "severity=none", "namespace=monitoring"], "null"),
    # The API's alerts arrive once, through the lab's AlertmanagerConfig; the root tree drops them.
    (["alertname=HvsApiDown", "severity=critical", "job=hvs-api"], "monitoring/hvs-api/lab-pages,null"),
    (["alertname=HvsApiInstanceDown", "severity=warning", "job=hvs-api"], "monitoring/hvs-api/lab-tickets,null"),
]


@pytest.mark.parametrize(("labels", "receivers"), STACK_ALERTS, ids=lambda v: v[0] if isinstance(v, list) else v)
def test_the_stack_alerts_reach_the_lab_receivers(tmp_path, labels, receivers):
    config = stack_alertmanager_config(tmp_path, K8S / "helm-values.yaml", ALERTING_VALUES)
    assert receivers_of(config, labels) == receivers


def test_without_the_alerting_values_the_charts_watchers_reach_no_one(tmp_path):
    # What the chart's defaults do, and why helm-values-alerting.yaml exists.
    config = stack_alertmanager_config(tmp_path, K8S / "helm-values.yaml")
    assert receivers_of(config, ["alertname=Watchdog", "severity=none"]) == "null"
    assert receivers_of(config, ["alertname=PrometheusRuleFailures", "severity=critical"]) == "null"
