"""Where Prometheus 3 differs from 2 (https://prometheus.io/docs/prometheus/latest/migration/),
the lab's files meet it: selectors on `le` and `quantile` use the float form Prometheus 3
stores, no removed flag or feature flag is passed, and no job guesses a scrape's format."""

import json
import re
import subprocess

import pytest
import yaml

from tests.support.dashboards import DASHBOARDS
from tests.support.paths import ROOT
from tests.support.rules import rule_groups
from tests.support.web import scrape_problems

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
HELM_VALUES = yaml.safe_load((ROOT / "k8s" / "helm-values.yaml").read_text())
# A label matcher on le or quantile: the operator and the quoted value.
BUCKET_MATCHER = re.compile(r"""\b(le|quantile)\s*(=~|!~|!=|=)\s*"([^"]*)\"""")


def promql_expressions() -> list[tuple[str, str]]:
    """(where, expression) for every PromQL expression the lab ships: rules and dashboards."""
    found = [(f"rule {r.get('record') or r['alert']}", r["expr"]) for g in rule_groups() for r in g["rules"]]
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        panels = [p for row in dashboard["panels"] for p in [row, *row.get("panels", [])]]
        for panel in panels:
            found += [(f"{path.stem}: {panel['title']}", t["expr"]) for t in panel.get("targets", []) if "expr" in t]
        for variable in dashboard.get("templating", {}).get("list", []):
            query = variable.get("query")
            text = query.get("query", "") if isinstance(query, dict) else query or ""
            found.append((f"{path.stem}: ${variable['name']}", text))
        for annotation in dashboard.get("annotations", {}).get("list", []):
            if annotation.get("expr"):
                found.append((f"{path.stem}: annotation {annotation['name']}", annotation["expr"]))
    return found


def float_form(value: str) -> str:
    """How Prometheus 3 writes a bucket bound or quantile at ingestion: a float, always with a
    fraction or exponent ("1" becomes "1.0"), and +Inf as it is."""
    number = float(value)
    if number in (float("inf"), float("-inf")):
        return "+Inf" if number > 0 else "-Inf"
    text = repr(number)
    return text if any(c in text for c in ".e") else text + ".0"


def bucket_matcher_problems(expr: str) -> list[str]:
    """The `le`/`quantile` matchers of an expression that Prometheus 3's stored labels would not
    match: an equality on a value not in float form, or a regular expression on one."""
    problems = []
    for label, operator, value in BUCKET_MATCHER.findall(expr):
        if operator in ("=~", "!~"):
            problems.append(f'{label}{operator}"{value}" (a regular expression on a normalised label)')
            continue
        try:
            normal = float_form(value)
        except ValueError:
            problems.append(f'{label}{operator}"{value}" (not a number)')
            continue
        if normal != value:
            problems.append(f'{label}{operator}"{value}" (Prometheus 3 stores "{normal}")')
    return problems


def test_no_selector_relies_on_an_integer_looking_le_or_quantile():
    expressions = promql_expressions()
    assert len(expressions) > 50 and any("le=" in expr for _, expr in expressions)
    assert {where: bucket_matcher_problems(expr) for where, expr in expressions if bucket_matcher_problems(expr)} == {}


def test_the_bucket_check_catches_an_integer_bound_and_a_regular_expression():
    assert bucket_matcher_problems('rate(x_bucket{le="0.25"}[5m])') == []
    assert bucket_matcher_problems('rate(x_bucket{le="+Inf"}[5m])') == []
    assert bucket_matcher_problems('rate(x_bucket{le="1"}[5m])') == ['le="1" (Prometheus 3 stores "1.0")']
    assert bucket_matcher_problems('x{quantile=~"0.9|1"}') == [
        'quantile=~"0.9|1" (a regular expression on a normalised label)'
    ]


def enabled_features(flags: list[str]) -> list[str]:
    return [f for flag in flags if flag.startswith("--enable-feature=") for f in flag.split("=", 1)[1].split(",")]


def valid_features(binary: str) -> set[str]:
    """The feature flags a binary's --help lists as valid (Prometheus 3 made some defaults and
    removed others; a removed one stops the server at start), less the deprecated ones."""
    shown = subprocess.run([binary, "--help"], capture_output=True, text=True)
    text = re.sub(r"\s+", " ", shown.stdout + shown.stderr)
    listed = re.search(r"--enable-feature=.*?Valid options: ((?:[\w-]+(?: \(DEPRECATED\))?(?:, )?)+)", text)
    assert listed, f"{binary} --help lists no feature flags"
    # A deprecated one still starts, but goes in a coming release: the lab uses none.
    return {name for name in listed.group(1).split(", ") if name and "DEPRECATED" not in name}


@pytest.mark.parametrize(
    ("service", "binary"), [("prometheus", "prometheus"), ("alertmanager", "prometheus-alertmanager")]
)
def test_compose_passes_only_features_and_flags_the_binary_has(service, binary):
    flags = [flag for flag in COMPOSE[service]["command"] if flag.startswith("--")]
    assert set(enabled_features(flags)) <= valid_features(binary)
    shown = subprocess.run([binary, "--help"], capture_output=True, text=True).stdout
    for flag in flags:
        name = flag.split("=", 1)[0]
        assert re.search(rf"(^|\s){re.escape(name)}[=\s]|--\[no-\]{re.escape(name[2:])}\b", shown), flag


def test_the_kubernetes_path_enables_no_feature_prometheus_lacks():
    spec = HELM_VALUES["prometheus"]["prometheusSpec"]
    features = spec.get("enableFeatures", []) + enabled_features(spec.get("additionalArgs", []))
    assert set(features) <= valid_features("prometheus")


def test_the_feature_check_knows_a_removed_flag():
    # promql-at-modifier became a default in Prometheus 2.33 and is gone from 3.0's list.
    assert "promql-at-modifier" not in valid_features("prometheus")
    assert "promql-experimental-functions" in valid_features("prometheus")
    assert "remote-write-receiver" not in valid_features("prometheus")
    assert "auto-gomemlimit" in valid_features("prometheus-alertmanager")


def test_no_scrape_job_guesses_a_missing_or_unknown_content_type():
    """Prometheus 3 fails such a scrape unless the job sets fallback_scrape_protocol; the lab's
    targets all answer a valid type (the native lab and the container stage check each one), so
    none needs it, and a target that starts answering badly is noticed."""
    config = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    assert config["scrape_configs"]
    assert [job["job_name"] for job in config["scrape_configs"] if "fallback_scrape_protocol" in job] == []
    assert "fallback_scrape_protocol" not in config.get("global", {})


class _Answer:
    """What urlopen returns, reduced to the headers scrape_problems reads."""

    def __init__(self, content_type: str | None):
        self.headers = {} if content_type is None else {"Content-Type": content_type}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_the_scrape_check_catches_a_failed_scrape_and_a_type_prometheus_3_refuses():
    def target(job, health="up", error=""):
        return {"labels": {"job": job}, "scrapeUrl": f"http://{job}/metrics", "health": health, "lastError": error}

    answers = {"http://ok/metrics": "text/plain; version=0.0.4; charset=utf-8", "http://html/metrics": "text/html"}

    def fetch(request, timeout):
        return _Answer(answers.get(request.full_url))

    targets = [target("ok"), target("html"), target("none"), target("down", "down", "connection refused")]
    assert scrape_problems(targets, fetch) == [
        "html http://html/metrics: Content-Type text/html",
        "none http://none/metrics: Content-Type missing",
        "down http://down/metrics: down, 'connection refused'",
    ]
