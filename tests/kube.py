"""The Kubernetes objects of k8s/, and what the pinned kube-prometheus-stack makes of them.

No cluster and no helm binary run here, so the few template decisions the lab depends on
(object names, the selectors of Prometheus, Alertmanager and Grafana's dashboard sidecar, the
labels the operator gives Prometheus's pods) are read from the chart's templates and written
down below, fed by the chart's own values.yaml vendored in k8s/vendor/ (see SOURCES.yaml there)
merged with the lab's values files, as `helm install -f` merges them.
"""

import bz2
import math
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.support.paths import ROOT

K8S = ROOT / "k8s"
VENDOR = K8S / "vendor"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
STACK_CHART = "kube-prometheus-stack"
# The chart's subcharts whose values a `grafana:` or `prometheus-node-exporter:` section sets.
SUBCHARTS = ("grafana", "prometheus-node-exporter")


def kustomize(folder: Path) -> list[dict]:
    if shutil.which("kubectl") is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is missing, and CI must not skip the Kubernetes checks")
        pytest.skip("kubectl is not installed: install it to render and validate k8s/")
    result = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def one(objects: list[dict], kind: str, name: str) -> dict:
    [found] = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def cpus(quantity: str) -> float:
    """A Kubernetes CPU quantity ("2", "500m") in CPUs."""
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


def workers_for(limit: str) -> int:
    """Gunicorn's workers for a CPU limit: one per CPU, rounded up (the downward API's rule)."""
    return math.ceil(cpus(limit))


# --- The pins and the vendored chart files --------------------------------------------------


def stack_pins() -> dict[str, str]:
    """k8s/stack.env: the versions the scripts, the Makefile and docs/kubernetes.md use."""
    pins = {}
    for line in (K8S / "stack.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


@cache
def sources() -> dict:
    return yaml.safe_load((VENDOR / "SOURCES.yaml").read_text())


@cache
def chart_defaults(chart: str) -> dict:
    """The values.yaml a pinned chart ships, as vendored."""
    [name] = [f for f in sources()[chart]["files"] if f.endswith("-values.yaml")]
    return yaml.safe_load((VENDOR / name).read_text())


class _CrdLoader(yaml.SafeLoader):
    """YAML 1.1's "=" value tag, which PyYAML resolves and cannot build, read as the string it
    is in the CRDs (an enum of label-matcher operators)."""


_CrdLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:value"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@cache
def operator_crds() -> dict[str, dict]:
    """The CRDs of the prometheus-operator the pinned chart ships, by kind."""
    [name] = [f for f in sources()[STACK_CHART]["files"] if f.endswith("-crds.bz2")]
    documents = yaml.load_all(bz2.decompress((VENDOR / name).read_bytes()), Loader=_CrdLoader)  # noqa: S506
    return {doc["spec"]["names"]["kind"]: doc for doc in documents if doc}


def helm_install(script: str) -> tuple[str, str]:
    """The release and namespace of the kube-prometheus-stack install in a script or a guide."""
    found = re.search(
        rf"helm (?:upgrade --install|install) (\S+) \S*/{STACK_CHART}\b(.*?)(?:\n(?!\s)|$)", script, re.DOTALL
    )
    assert found, f"no helm install of {STACK_CHART}"
    namespace = re.search(r"--namespace[ =](\S+)", found.group(2))
    return found.group(1), namespace.group(1)


def release_and_namespace() -> tuple[str, str]:
    return helm_install((K8S / "install-stack.sh").read_text())


# --- Values, merged as helm merges them -------------------------------------------------------


def merged(base, override):
    """Helm's merge of values files: maps merge key by key, anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{k: merged(base.get(k), v) for k, v in override.items()}}
    return override


def unknown_keys(values: dict, defaults: dict, path: str = "") -> list[str]:
    """The keys of a values file that the chart's values.yaml does not have.

    Below a key whose default is an empty map, a list or null (selectors, storageSpec,
    additionalDataSources...), the chart passes the value through: anything goes there.
    """
    problems = []
    for key, value in values.items():
        where = f"{path}.{key}" if path else key
        if key not in defaults:
            problems.append(where)
        elif isinstance(value, dict) and isinstance(defaults[key], dict) and defaults[key]:
            problems += unknown_keys(value, defaults[key], where)
    return problems


def stack_values(*files: Path) -> dict:
    """kube-prometheus-stack's values after `helm install -f file...`, with each subchart's
    section merged over that subchart's own defaults; with no file, every key a values file
    may set."""
    values = chart_defaults(STACK_CHART)
    for path in files:
        values = merged(values, yaml.safe_load(path.read_text()))
    for sub in SUBCHARTS:
        values = {**values, sub: merged(chart_defaults(sub), values.get(sub) or {})}
    return values


def grafana_datasources(values: dict, stack: tuple[str, str]) -> list[dict]:
    """The datasources Grafana provisions under the chart, as the pinned chart's
    templates/grafana/configmaps-datasources.yaml renders them (its sidecar's Prometheus and
    Alertmanager, then additionalDataSources and additionalDataSourcesString), plus the grafana
    subchart's own `datasources` files: every way a values file can add one. The template is not
    vendored; this follows it at the commit k8s/vendor/SOURCES.yaml names."""
    release, namespace = stack
    grafana = values["grafana"]
    sidecar = grafana["sidecar"]["datasources"]
    found = []
    if (grafana["enabled"] and sidecar["enabled"]) or grafana["forceDeployDatasources"]:
        base = fullname(release, values)
        if sidecar["defaultDatasourceEnabled"]:
            found.append({"name": sidecar["name"], "uid": sidecar["uid"], "type": "prometheus"})
        # Whether or not the chart deploys an Alertmanager: the template does not look.
        chart = sidecar["alertmanager"]
        if chart["enabled"]:
            alertmanager = values["alertmanager"]
            prefix = alertmanager["alertmanagerSpec"]["routePrefix"].lstrip("/")
            default_url = f"http://{base}-alertmanager.{namespace}:{alertmanager['service']['port']}/{prefix}"
            found.append(
                {
                    "name": chart["name"],
                    "uid": chart["uid"],
                    "type": "alertmanager",
                    "url": chart.get("url") or default_url,
                    "jsonData": {
                        "handleGrafanaManagedAlerts": chart["handleGrafanaManagedAlerts"],
                        "implementation": chart["implementation"],
                    },
                }
            )
        found += grafana["additionalDataSources"] or []
        found += yaml.safe_load(grafana["additionalDataSourcesString"] or "[]") or []
    for provisioning in (grafana["datasources"] or {}).values():
        found += provisioning.get("datasources") or []
    return found


# --- Names and selectors, as the chart's templates and the operator make them ----------------


def fullname(release: str, values: dict) -> str:
    """kube-prometheus-stack.fullname (templates/_helpers.tpl): truncated to 26 characters."""
    if values.get("fullnameOverride"):
        return values["fullnameOverride"][:26].rstrip("-")
    name = values.get("nameOverride") or STACK_CHART
    full = release if name in release else f"{release}-{name}"
    return full[:26].rstrip("-")


def grafana_fullname(release: str, values: dict) -> str:
    """grafana.fullname of the grafana subchart."""
    grafana = values["grafana"]
    if grafana.get("fullnameOverride"):
        return grafana["fullnameOverride"][:63].rstrip("-")
    name = grafana.get("nameOverride") or "grafana"
    return (release if name in release else f"{release}-{name}")[:63].rstrip("-")


def prometheus_name(release: str, values: dict) -> str:
    """The Prometheus object's name (kube-prometheus-stack.prometheus.crname)."""
    base = fullname(release, values)
    return base if values.get("cleanPrometheusOperatorObjectNames") else f"{base}-prometheus"


def prometheus_pod_labels(release: str, values: dict) -> dict[str, str]:
    """The labels prometheus-operator gives the pods of a Prometheus object."""
    name = prometheus_name(release, values)
    return {
        "app.kubernetes.io/name": "prometheus",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "prometheus-operator",
        "operator.prometheus.io/name": name,
        "operator.prometheus.io/shard": "0",
        "prometheus": name,
    }


def chart_services(release: str, namespace: str, values: dict) -> set[tuple[str, str]]:
    """The Services a user reaches the stack through: the chart's and the operator's own."""
    base = fullname(release, values)
    return {
        (namespace, f"{base}-prometheus"),
        (namespace, f"{base}-alertmanager"),
        (namespace, grafana_fullname(release, values)),
        # Created by prometheus-operator for every Prometheus and Alertmanager.
        (namespace, "prometheus-operated"),
        (namespace, "alertmanager-operated"),
    }


def grafana_secret(release: str, values: dict) -> tuple[str, str, str]:
    """The Secret holding Grafana's admin login, with its user and password keys."""
    admin = values["grafana"]["admin"]
    name = admin.get("existingSecret") or grafana_fullname(release, values)
    return name, admin["userKey"], admin["passwordKey"]


def prometheus_selectors(release: str, values: dict) -> dict[str, tuple[dict | None, dict | None]]:
    """Kind -> (object selector, namespace selector) of the chart's Prometheus object, as
    templates/prometheus/prometheus.yaml renders them. None selects nothing (an object selector)
    or only Prometheus's own namespace (a namespace selector); {} selects everything."""
    spec = values["prometheus"]["prometheusSpec"]
    chosen = {}
    for kind, key in (("ServiceMonitor", "serviceMonitor"), ("Probe", "probe"), ("PrometheusRule", "rule")):
        if spec.get(f"{key}Selector"):
            selector = spec[f"{key}Selector"]
        elif spec.get(f"{key}SelectorNilUsesHelmValues"):
            selector = {"matchLabels": {"release": release}}
        elif kind == "PrometheusRule" and spec.get(f"{key}Selector") is None:
            selector = None
        else:
            selector = {}
        chosen[kind] = (selector, spec.get(f"{key}NamespaceSelector") or {})
    return chosen


def alertmanager_selectors(values: dict) -> tuple[dict, dict | None]:
    """(AlertmanagerConfig selector, namespace selector) of the chart's Alertmanager object."""
    spec = values["alertmanager"]["alertmanagerSpec"]
    return spec.get("alertmanagerConfigSelector") or {}, spec.get("alertmanagerConfigNamespaceSelector")


def adds_namespace_matcher(values: dict, stack_namespace: str, config: dict) -> bool:
    """Whether prometheus-operator scopes an AlertmanagerConfig's routes and inhibitions to alerts
    labelled with its namespace (alertmanagerConfigMatcherStrategy; OnNamespace when unset)."""
    strategy = (values["alertmanager"]["alertmanagerSpec"].get("alertmanagerConfigMatcherStrategy") or {}).get(
        "type", "OnNamespace"
    )
    if strategy == "None":
        return False
    if strategy == "OnNamespaceExceptForAlertmanagerNamespace":
        return config["metadata"]["namespace"] != stack_namespace
    return True


def sidecar_sees(values: dict, stack_namespace: str, config_map: dict) -> bool:
    """Whether the grafana chart's dashboard sidecar loads a ConfigMap."""
    sidecar = values["grafana"]["sidecar"]["dashboards"]
    labels = config_map["metadata"].get("labels", {})
    label, wanted = sidecar["label"], sidecar.get("labelValue")
    if label not in labels or (wanted and labels[label] != str(wanted)):
        return False
    search = sidecar.get("searchNamespace")
    if search == "ALL":
        return True
    namespaces = search if isinstance(search, list) else (search or stack_namespace).split(",")
    return config_map["metadata"]["namespace"] in namespaces


def matches(selector: dict | None, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    if selector is None:
        return False
    if not (selector.get("matchLabels") or {}).items() <= labels.items():
        return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def namespace_matches(selector: dict | None, namespace: str, own_namespace: str) -> bool:
    """A namespace selector of the operator's objects (None: only their own namespace), against a
    namespace that carries only its automatic kubernetes.io/metadata.name label."""
    if selector is None:
        return namespace == own_namespace
    if "matchNames" in selector or "any" in selector:
        return selector.get("any", False) or namespace in selector.get("matchNames", [])
    return matches(selector, {"kubernetes.io/metadata.name": namespace})


def allows(policy: dict, pod_namespace: str, pod_labels: dict, port: str) -> bool:
    """Whether an ingress NetworkPolicy lets a pod (its namespace and labels) in on a named port."""
    for rule in policy["spec"]["ingress"]:
        if port not in [p["port"] for p in rule.get("ports", [])]:
            continue
        for source in rule["from"]:
            if "namespaceSelector" in source:
                if not matches(source["namespaceSelector"], {"kubernetes.io/metadata.name": pod_namespace}):
                    continue
            elif pod_namespace != policy["metadata"]["namespace"]:
                continue
            if matches(source.get("podSelector", {}), pod_labels):
                return True
    return False


# --- The operator's CRD schemas ----------------------------------------------------------------


def _strict(schema):
    """A CRD schema that refuses fields it does not declare, as `kubectl apply` with server-side
    field validation does (the API server would otherwise drop them without a word)."""
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    strict = {key: _strict(value) for key, value in schema.items()}
    if "properties" in strict and "additionalProperties" not in strict:
        if not strict.get("x-kubernetes-preserve-unknown-fields"):
            strict["additionalProperties"] = False
    return strict


@cache
def _validator(kind: str, version: str):
    import jsonschema

    [served] = [v for v in operator_crds()[kind]["spec"]["versions"] if v["name"] == version]
    return jsonschema.Draft7Validator(_strict(served["schema"]["openAPIV3Schema"]))


def crd_problems(obj: dict) -> str | None:
    """What the CRD of the pinned operator refuses in a custom resource (types, enums, patterns,
    required and unknown fields), or None."""
    version = obj["apiVersion"].rpartition("/")[2]
    errors = sorted(_validator(obj["kind"], version).iter_errors(obj), key=lambda e: list(e.absolute_path))
    return "; ".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors) or None


def as_custom_resource(kind: str, spec_values: dict) -> dict:
    """The Prometheus or Alertmanager object the chart makes of `prometheusSpec` or
    `alertmanagerSpec` values: the same keys, but storageSpec becomes storage, the image's
    registry, repository and tag one string, and the version the tag unless set apart
    (templates/prometheus/prometheus.yaml and templates/alertmanager/alertmanager.yaml)."""
    spec = {("storage" if key == "storageSpec" else key): value for key, value in spec_values.items()}
    if isinstance(spec.get("image"), dict):
        image = spec.pop("image")
        spec["image"] = f"{image['registry']}/{image['repository']}:{image['tag']}"
        spec["version"] = spec.get("version") or image["tag"]
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": kind, "metadata": {"name": "x"}, "spec": spec}


# --- The Alertmanager configuration, as the chart and the operator assemble it ---------------


def _route_from_custom_resource(route: dict, prefix: str) -> dict:
    """An AlertmanagerConfig route in Alertmanager's own form, its receivers named as the
    operator names them (namespace/config/receiver)."""
    keys = {"groupBy": "group_by", "groupWait": "group_wait", "groupInterval": "group_interval"}
    keys |= {"repeatInterval": "repeat_interval", "continue": "continue"}
    converted = {"receiver": f"{prefix}/{route['receiver']}"} if "receiver" in route else {}
    converted |= {keys[k]: v for k, v in route.items() if k in keys}
    if route.get("matchers"):
        converted["matchers"] = [f'{m["name"]}{m.get("matchType", "=")}"{m["value"]}"' for m in route["matchers"]]
    if route.get("routes"):
        converted["routes"] = [_route_from_custom_resource(child, prefix) for child in route["routes"]]
    return converted


def operator_alertmanager_config(values: dict, custom_resource: dict) -> dict:
    """The configuration the operator gives the chart's Alertmanager: the chart's
    ``alertmanager.config`` with the AlertmanagerConfig's route first among the root's routes,
    with ``continue: true`` (the operator always sets it on these), and its receivers added.
    The lab's AlertmanagerConfig lives in the Alertmanager's namespace, where the matcher
    strategy adds no namespace matcher (test_k8s_chart checks that)."""
    config = yaml.safe_load(yaml.safe_dump(values["alertmanager"]["config"]))
    meta, spec = custom_resource["metadata"], custom_resource["spec"]
    prefix = f"{meta['namespace']}/{meta['name']}"
    top = {**_route_from_custom_resource(spec["route"], prefix), "continue": True}
    config["route"]["routes"] = [top, *config["route"].get("routes", [])]
    for receiver in spec["receivers"]:
        hooks = [{"url": h["url"], "send_resolved": h.get("sendResolved", True)} for h in receiver["webhookConfigs"]]
        config["receivers"].append({"name": f"{prefix}/{receiver['name']}", "webhook_configs": hooks})
    # The chart's templates path is a folder of the pod; amtool needs none here.
    config.pop("templates", None)
    return config
