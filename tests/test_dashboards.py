"""Grafana dashboards checked as data, since no Grafana server runs here: their structure
against Grafana's typed schema (the foundation SDK's build for Grafana "next", the newest, as the
lab runs Grafana 13.2, newer than any per-release build), that Grafana 13.2 would not rewrite them
on load (schema and panel migrations) and loads no removed panel, their variables and
datasources, the recorded series and thresholds they read. Their queries run in
tests/integration/test_lab.py."""

import json
import re
import subprocess
import textwrap

import pytest
import yaml
from grafana_foundation_sdk.cog import runtime as cogruntime
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from tests.kube import fullname, grafana_datasources, grafana_fullname, release_and_namespace, stack_values
from tests.support.dashboards import DASHBOARDS, EXPECTED_EMPTY, panel_queries, substitute_variables
from tests.support.paths import ROOT
from tests.support.rules import rule_groups, seconds


class AlertGroupsOptions:
    """The alert list's options, as Grafana 13's public/app/plugins/panel/alertGroups/panelcfg.cue
    declares them. The SDK's builds up to 11.6 modelled them; its "next" build has no alertGroups
    model, so without this the round trip would pass the panel's options through unchecked."""

    def __init__(self, labels: str = "", alertmanager: str = "", expand_all: bool = False) -> None:
        self.labels, self.alertmanager, self.expand_all = labels, alertmanager, expand_all

    def to_json(self) -> dict:
        return {"labels": self.labels, "alertmanager": self.alertmanager, "expandAll": self.expand_all}

    @classmethod
    def from_json(cls, data: dict) -> "AlertGroupsOptions":
        fields = {"labels": "labels", "alertmanager": "alertmanager", "expandAll": "expand_all"}
        return cls(**{fields[key]: value for key, value in data.items() if key in fields})


register_default_plugins()
cogruntime.register_panelcfg_variant(
    cogruntime.PanelCfgConfig(identifier="alertGroups", options_from_json_hook=AlertGroupsOptions.from_json)
)
# The dashboard schema version Grafana writes when it saves a dashboard (the newest version of
# its migrator: apps/dashboard/pkg/migration/schemaversion/migrations.go LATEST_VERSION, and the
# frontend's DASHBOARD_SCHEMA_VERSION in public/app/features/dashboard/state/DashboardMigrator.ts).
# Grafana 12.3 to 13.0 write 42. Grafana's main branch has since added V43 (formatTime
# transformations become convertFieldType); whether 13.2.0 has it could not be read here. 42 is
# the safe side: a version below Grafana's newest is migrated on load (V43 changes nothing these
# dashboards hold), while one above it fails the backend's migration.
SCHEMA_VERSION = 42
# Panel types Grafana no longer draws: Angular support is gone since Grafana 12, and these are the
# types it recognises only to migrate them, on load, to the type given (autoMigrateAngular and
# autoMigrateRemovedPanelPlugins in public/app/features/dashboard/state/PanelModel.ts; the backend
# migrator's AngularPanelMigrations in apps/dashboard/pkg/migration holds the same).
REMOVED_PANEL_TYPES = {
    "graph": "timeseries",
    "singlestat": "stat",
    "grafana-singlestat-panel": "stat",
    "table-old": "table",
    "grafana-piechart-panel": "piechart",
    "grafana-worldmap-panel": "geomap",
    "natel-discrete-panel": "state-timeline",
    "heatmap-new": "heatmap",
}
PROVISIONED = yaml.safe_load((ROOT / "grafana/provisioning/datasources/datasources.yml").read_text())["datasources"]
HELM_VALUES = yaml.safe_load((ROOT / "k8s/helm-values.yaml").read_text())
PROMETHEUS_DS = {"type": "prometheus", "uid": "${datasource}"}
# Panels that query nothing: rows, and the alert list, which reads Alertmanager's API itself.
NO_QUERIES = {"row", "alertGroups"}
# Grafana's Prometheus datasource reads these from an annotation query; the typed schema models
# only its `expr`, so the round trip drops them, and only them.
PROMETHEUS_ANNOTATION_FIELDS = {"step", "titleFormat", "textFormat", "tagKeys", "useValueForTime"}
USERS_QUERIES = (
    'sum(rate(flask_http_request_total{job="hvs-api", endpoint="/predict"}[1m]))',
    "histogram_quantile(0.95, sum(rate(flask_http_request_duration_seconds_bucket"
    '{job="hvs-api", endpoint="/predict"}[5m])) by (le))',
    # "Error rates, based on flask_http_request_total{status=~"5.."}": its rate, not the raw
    # counters, which start again from 0 at every restart.
    'sum by (endpoint, status) (rate(flask_http_request_total{job="hvs-api", instance=~".*", status=~"5.."}[1m]))',
    'sum(increase(hvs_api_prediction_outcomes_total{job="hvs-api", predicted_label_text="Hazardous"}[5m]))',
)
# Each SLO: its bad-event ratio (one series per window), its budget, its remaining budget.
SLOS = {
    "job:hvs_api_predict_errors:ratio_rate": (0.005, "job:hvs_api_predict_error_budget:remaining_ratio30d"),
    "job:hvs_api_predict_slow:ratio_rate": (0.01, "job:hvs_api_predict_latency_budget:remaining_ratio30d"),
    "job:hvs_api_probe_unavailable:ratio_avg": (0.005, "job:hvs_api_probe_error_budget:remaining_ratio30d"),
}
# Where the multi-window alerts act, in multiples of the budget rate.
BURN_THRESHOLDS = [1, 3, 6, 14.4]
SELECTOR = re.compile(r"([a-zA-Z_][\w:]*)\{([^}]*)\}")


def load(path):
    return json.loads(path.read_text())


def query_panels(dashboard: dict) -> list[dict]:
    return [p for p in dashboard["panels"] if p["type"] not in NO_QUERIES]


def variables(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def lost_in_round_trip(original, returned, path="") -> list[str]:
    """What the typed models dropped or changed (defaults they add are fine)."""
    if isinstance(original, dict):
        if not isinstance(returned, dict):
            return [f"{path}: became {returned!r}"]
        problems = []
        for key, value in original.items():
            if key not in returned:
                problems.append(f"{path}/{key}: dropped")
            else:
                problems += lost_in_round_trip(value, returned[key], f"{path}/{key}")
        return problems
    if isinstance(original, list):
        if not isinstance(returned, list) or len(original) != len(returned):
            return [f"{path}: list changed"]
        return [
            p
            for i, (a, b) in enumerate(zip(original, returned, strict=True))
            for p in lost_in_round_trip(a, b, f"{path}[{i}]")
        ]
    return [] if original == returned else [f"{path}: {original!r} became {returned!r}"]


def schema_losses(original: dict) -> list[str]:
    """What the round trip loses, but the Prometheus annotation fields the schema does not model."""
    returned = json.loads(json.dumps(Dashboard.from_json(original), cls=JSONEncoder))
    allowed = {
        f"/annotations/list[{i}]/{field}: dropped"
        for i, annotation in enumerate(original["annotations"]["list"])
        if annotation["datasource"]["type"] == "prometheus"
        for field in PROMETHEUS_ANNOTATION_FIELDS
    }
    return [p for p in lost_in_round_trip(original, returned) if p not in allowed]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_survives_grafanas_typed_schema(path):
    assert schema_losses(load(path)) == []


def test_round_trip_check_catches_a_misspelt_field():
    original = load(DASHBOARDS[0])
    original["panels"][0]["gridPosition"] = original["panels"][0].pop("gridPos")
    assert schema_losses(original) == ["/panels[0]/gridPosition: dropped"]


def test_round_trip_allows_annotation_fields_only_on_prometheus_annotations():
    original = load(DASHBOARDS[0])
    original["annotations"]["list"][0]["titleFormat"] = "{{alertname}}"  # The built-in Grafana one.
    assert schema_losses(original) == ["/annotations/list[0]/titleFormat: dropped"]


def all_panels(panels: list[dict]) -> list[dict]:
    """Every panel, the ones a collapsed row holds too."""
    return [q for p in panels for q in [p, *all_panels(p.get("panels", []))]]


def test_round_trip_check_catches_a_misspelt_alert_list_option():
    """The alert list's options are typed too (by AlertGroupsOptions, above), not passed through."""
    original = load(ROOT / "grafana/dashboards/hvs-alerts.json")
    [index] = [i for i, p in enumerate(original["panels"]) if p["type"] == "alertGroups"]
    original["panels"][index]["options"]["expandall"] = original["panels"][index]["options"].pop("expandAll")
    assert schema_losses(original) == [f"/panels[{index}]/options/expandall: dropped"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_type_has_a_typed_model(path):
    """A type the SDK does not model would have its options and field config passed through
    unchecked by the round trip: every one here is modelled (rows are the schema's own)."""
    for panel in all_panels(load(path)["panels"]):
        assert panel["type"] == "row" or cogruntime.panelcfg_config(panel["type"]), panel["type"]


def removed_panels(dashboard: dict) -> list[str]:
    """``"title: what"`` of each panel Grafana 13 no longer draws as the JSON says: one of a removed
    type, or one carrying a legacy (dashboard) alert rule, which went with legacy alerting in 11."""
    found = []
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] in REMOVED_PANEL_TYPES:
            found.append(f"{panel.get('title', '')}: {panel['type']}")
        if "alert" in panel:
            found.append(f"{panel.get('title', '')}: legacy alert rule")
    return found


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_no_panel_is_of_a_removed_angular_type(path):
    assert removed_panels(load(path)) == []


def test_the_removed_panel_check_catches_a_graph_panel_in_a_collapsed_row():
    dashboard = load(ROOT / "grafana/dashboards/hvs-api-overview.json")
    timeseries = next(p for p in dashboard["panels"] if p["type"] == "timeseries")
    row = next(p for p in dashboard["panels"] if p["type"] == "row")
    row["panels"] = [{**timeseries, "type": "graph"}]
    assert removed_panels(dashboard) == [f"{timeseries['title']}: graph"]


def test_provisioning_has_no_legacy_alerting():
    """Legacy alerting's provisioned notification channels (provisioning/notifiers) went with legacy
    alerting in Grafana 11; the lab's alerts are Prometheus's, routed by Alertmanager."""
    assert {p.name for p in (ROOT / "grafana/provisioning").iterdir()} == {"dashboards", "datasources"}


def pending_migrations(dashboard: dict) -> list[str]:
    """What Grafana 13.2 would still rewrite on load: its schema migrations from 39 on
    (apps/dashboard/pkg/migration/schemaversion/v39.go on) and the panel plugins' own
    (public/app/plugins/panel/*/migrations.ts), which run on every load of a panel saved without
    a pluginVersion, as these files are."""
    found = [] if dashboard["schemaVersion"] == SCHEMA_VERSION else [f"schemaVersion {dashboard['schemaVersion']}"]
    # The built-in annotation is found by builtIn == 1; without it Grafana adds a second one.
    if not any(a.get("builtIn") == 1 for a in dashboard["annotations"]["list"]):
        found.append("no built-in annotation (builtIn: 1)")
    if not isinstance(dashboard.get("refresh"), str):  # v40
        found.append("refresh not a string")
    if "time_options" in dashboard.get("timepicker", {}):  # v41
        found.append("timepicker.time_options")
    for panel in all_panels(dashboard["panels"]):
        title, options = panel.get("title", ""), panel.get("options", {})
        for transformation in panel.get("transformations", []):
            if transformation["id"] == "timeSeriesTable" and "refIdToStat" in transformation.get("options", {}):
                found.append(f"{title}: timeSeriesTable refIdToStat")  # v39
            if transformation["id"] == "formatTime":
                found.append(f"{title}: formatTime transformation")  # v43: now convertFieldType
        for override in panel.get("fieldConfig", {}).get("overrides", []):
            for prop in override.get("properties", []):
                value = prop.get("value")
                if prop["id"] == "custom.hideFrom" and isinstance(value, dict) and value.get("viz"):
                    if not value.get("tooltip"):
                        found.append(f"{title}: hideFrom.viz without hideFrom.tooltip")  # v42
                if panel["type"] == "table" and prop["id"] == "custom.hidden":
                    found.append(f"{title}: custom.hidden (now custom.hideFrom.viz)")
        if panel["type"] == "heatmap" and "show" in options.get("tooltip", {}):
            found.append(f"{title}: heatmap tooltip.show (now tooltip.mode)")
        if panel["type"] == "table":
            if "show" in options.get("footer", {}):
                found.append(f"{title}: table options.footer (now field config custom.footer.reducers)")
            if "wrapText" in panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {}).get("cellOptions", {}):
                found.append(f"{title}: cellOptions.wrapText (now custom.wrapText)")
    return found


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_grafana_13_2_has_nothing_left_to_migrate(path):
    assert pending_migrations(load(path)) == []


def test_the_migration_check_catches_what_grafana_10_1_wrote():
    dashboard = load(ROOT / "grafana/dashboards/hvs-model.json")
    dashboard["schemaVersion"] = 38
    del dashboard["annotations"]["list"][0]["builtIn"]
    heatmap = next(p for p in dashboard["panels"] if p["type"] == "heatmap")
    heatmap["options"]["tooltip"] = {"show": True, "yHistogram": False}
    table = next(p for p in dashboard["panels"] if p["type"] == "table")
    table["options"]["footer"] = {"show": False, "reducer": ["sum"], "countRows": False}
    assert pending_migrations(dashboard) == [
        "schemaVersion 38",
        "no built-in annotation (builtIn: 1)",
        f"{table['title']}: table options.footer (now field config custom.footer.reducers)",
        f"{heatmap['title']}: heatmap tooltip.show (now tooltip.mode)",
    ]


def fixed_prometheus_uids(text: str) -> list[str]:
    """Prometheus datasource references in a dashboard's JSON text that name a uid, not the variable."""
    return re.findall(r'"type": "prometheus",\s*"uid": "(?!\$\{datasource\})([^"]*)"', text)


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panels_query_the_datasource_variable_and_no_fixed_uid(path):
    dashboard = load(path)
    assert dashboard["uid"] == path.stem and dashboard["schemaVersion"] == SCHEMA_VERSION
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    datasource = variables(dashboard)["datasource"]
    prometheus = next(d for d in PROVISIONED if d["type"] == "prometheus")
    # Type-filtered, and by default the provisioned Prometheus.
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    assert datasource["current"]["value"] == prometheus["uid"]
    for panel in query_panels(dashboard):
        assert panel["datasource"] == PROMETHEUS_DS, panel["title"]
        assert panel["description"], f"{panel['title']} has no description"
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == PROMETHEUS_DS, panel["title"]
    # Nowhere a fixed Prometheus uid: panels, variables and annotations all go through the variable.
    assert fixed_prometheus_uids(path.read_text()) == []


def test_the_datasource_check_catches_a_fixed_uid():
    text = DASHBOARDS[0].read_text().replace('"uid": "${datasource}"', '"uid": "prometheus"', 1)
    assert fixed_prometheus_uids(text) == ["prometheus"]


def api_dashboards() -> list:
    return [p for p in DASHBOARDS if "job" in variables(load(p))]


def test_api_dashboards_filter_by_job_and_instance():
    """Every query names the API's job through $job; every raw API series also follows $instance,
    but the user's own queries (kept as the design states them) and job-wide recorded series."""
    assert {p.stem for p in api_dashboards()} >= {"hvs-api-overview", "hvs-model", "hvs-slo"}
    for path in api_dashboards():
        dashboard = load(path)
        found = variables(dashboard)
        assert found["job"]["current"]["value"] == "hvs-api"
        if "instance" in found:
            instance = found["instance"]
            assert instance["multi"] and instance["includeAll"] and instance["allValue"] == ".*"
            assert "$job" in instance["query"]
        for panel in query_panels(dashboard):
            for target in panel["targets"]:
                expr = target["expr"]
                assert "hvs-api" not in expr, f"{path.stem} / {panel['title']}: a fixed job"
                # The black-box probe's series are its own job's, named after the API's.
                assert '="$job"' in expr or '="$job-probe"' in expr, f"{path.stem} / {panel['title']}: no $job"
                users = substitute_variables(expr, {"job": "hvs-api"}) in USERS_QUERIES
                for metric, matchers in SELECTOR.findall(expr):
                    # The probe's instance is the URL it probes, not an API instance.
                    raw = ":" not in metric and metric != "ALERTS" and '"$job-probe"' not in matchers
                    if raw and not users and "instance" in found:
                        assert 'instance=~"$instance"' in matchers, f"{path.stem} / {panel['title']}: {metric}"


STACK_COMPONENTS = ("prometheus", "alertmanager", "grafana")
# kube-prometheus-stack's own ServiceMonitors: the job is the Service's name,
# <fullname>-prometheus and <fullname>-alertmanager, and the Grafana subchart's fullname
# (tests/kube.py computes them as the chart's templates do, for the release k8s/ installs).
_RELEASE = release_and_namespace()[0]
_VALUES = stack_values(ROOT / "k8s" / "helm-values.yaml")
CHART_JOBS = {
    "prometheus": f"{fullname(_RELEASE, _VALUES)}-prometheus",
    "alertmanager": f"{fullname(_RELEASE, _VALUES)}-alertmanager",
    "grafana": grafana_fullname(_RELEASE, _VALUES),
}


def stack_selectors():
    """``(dashboard, panel, metric, matchers)`` of every selector of the monitoring stack's own series."""
    found = []
    for path in DASHBOARDS:
        dashboard = load(path)
        for panel in query_panels(dashboard):
            for target in panel["targets"]:
                for metric, matchers in SELECTOR.findall(target["expr"]):
                    if metric.startswith(tuple(f"{c}_" for c in STACK_COMPONENTS)) or metric.startswith("process_"):
                        found.append((dashboard, panel["title"], metric, matchers))
    return found


def test_monitoring_stack_panels_find_their_jobs_under_compose_and_kube_prometheus_stack():
    compose_jobs = {
        j["job_name"] for j in yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())["scrape_configs"]
    }
    assert len(stack_selectors()) >= 5
    for dashboard, title, metric, matchers in stack_selectors():
        [job] = re.findall(r'job=~"([^"]*)"', matchers) or [None]
        assert job, f"{title}: {metric} has no job=~ matcher"
        names = re.findall(r"\$(\w+)_job", job)
        assert names and job == "|".join(f"${n}_job" for n in names), f"{title}: {job}"
        for component in names:
            if not metric.startswith("process_"):
                assert metric.startswith(component), f"{title}: {metric} filtered by ${component}_job"
            variable = variables(dashboard)[f"{component}_job"]
            # Found by the component's own series, whatever the job is called there...
            assert variable["query"] == f"label_values({component}_build_info, job)"
            # ...and by default Compose's name, which the native lab test substitutes.
            assert variable["current"]["value"] == component and component in compose_jobs
            assert CHART_JOBS[component] in variable["description"]


def test_alert_list_reads_the_provisioned_alertmanager_in_compose_and_kubernetes():
    [panel] = [p for path in DASHBOARDS for p in load(path)["panels"] if p["type"] == "alertGroups"]
    name = panel["options"]["alertmanager"]  # Grafana names an Alertmanager source by its datasource name.
    [compose] = [d for d in PROVISIONED if d["name"] == name]
    # Exactly one in Kubernetes: the chart's own, through its own setting.
    [helm] = [d for d in grafana_datasources(_VALUES, release_and_namespace()) if d["type"] == "alertmanager"]
    for datasource in (compose, helm):
        assert datasource["name"] == name
        assert datasource["type"] == "alertmanager" and datasource["jsonData"]["implementation"] == "prometheus"
    assert compose["url"] == "http://alertmanager:9093"
    assert helm["url"] == "http://prometheus-kube-prometheus-alertmanager.monitoring:9093/"
    assert helm["uid"] == compose["uid"]
    # A second, added by hand beside the chart's, is caught.
    doubled = {
        **_VALUES,
        "grafana": {**_VALUES["grafana"], "additionalDataSources": [{**compose, "uid": "alertmanager"}]},
    }
    assert len([d for d in grafana_datasources(doubled, release_and_namespace()) if d["type"] == "alertmanager"]) == 2


def panels_reading(series: str):
    return [
        (path.stem, p)
        for path in DASHBOARDS
        for p in query_panels(load(path))
        if any(series in t["expr"] for t in p["targets"])
    ]


@pytest.mark.parametrize("ratio", SLOS)
def test_burn_rate_panels_draw_the_alerts_thresholds(ratio):
    budget, _ = SLOS[ratio]
    burn = [(d, p) for d, p in panels_reading(ratio) if "burn rate" in p["title"]]
    assert burn, f"no burn-rate panel for {ratio}"
    for _, panel in burn:
        defaults = panel["fieldConfig"]["defaults"]
        steps = [s["value"] for s in defaults["thresholds"]["steps"]]
        assert steps == [None, *BURN_THRESHOLDS], panel["title"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] in {"line", "dashed"}, panel["title"]
        for target in panel["targets"]:
            # The ratio divided by its own budget, so that the lines are in budget rates.
            assert target["expr"].endswith(f"}} / {budget:g}"), target["expr"]
        windows = {re.search(rf"{ratio}(\w+)\{{", t["expr"]).group(1) for t in panel["targets"]}
        assert windows >= {"5m", "30m", "1h", "2h", "6h", "1d", "3d"}, panel["title"]


def recorded(suffix: str) -> set[str]:
    return {r["record"] for g in rule_groups() for r in g["rules"] if r.get("record", "").endswith(suffix)}


@pytest.mark.parametrize("remaining", sorted({r for _, r in SLOS.values()} | recorded(":remaining_ratio30d")))
def test_every_slo_budget_has_a_burn_down_over_its_window(remaining):
    burn_down = [
        p
        for _, p in panels_reading(remaining)
        if p["type"] == "timeseries" and p.get("timeFrom") == "30d" and "burn-down" in p["title"]
    ]
    assert burn_down, f"no 30-day burn-down of {remaining}"
    for panel in burn_down:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, 0]  # The line where the budget is spent.


def test_heatmaps_show_rates_not_overlapping_increases():
    heatmaps = [(path.stem, p) for path in DASHBOARDS for p in load(path)["panels"] if p["type"] == "heatmap"]
    assert len(heatmaps) >= 2
    for _, panel in heatmaps:
        for target in panel["targets"]:
            # increase() over $__rate_interval at a shorter step counts each event in several cells.
            assert target["expr"].startswith("sum by (le) (rate(") and "increase(" not in target["expr"]
            assert target["format"] == "heatmap"
        assert "4 cells" in panel["description"], panel["title"]


def test_latency_panels_are_over_successful_requests():
    [panel] = [p for _, p in panels_reading("flask_http_request_duration_seconds_bucket") if p["type"] == "heatmap"]
    assert 'status=~"2.."' in panel["targets"][0]["expr"]
    [panel] = [
        p
        for _, p in panels_reading("flask_http_request_duration_seconds_bucket")
        if "successful" in p["title"] and p["type"] == "timeseries"
    ]
    ours = [
        t["expr"] for t in panel["targets"] if substitute_variables(t["expr"], {"job": "hvs-api"}) not in USERS_QUERIES
    ]
    assert len(ours) == 3 and all('status=~"2.."' in e for e in ours)


def test_overview_has_red_rows_and_saturation():
    overview = load(ROOT / "grafana/dashboards/hvs-api-overview.json")
    rows = [p["title"].split(":")[0] for p in overview["panels"] if p["type"] == "row"]
    # First whether it serves at all, then RED and saturation, then whether its telemetry is whole.
    assert rows == ["Is it serving? Model, probes and targets", "Rate", "Errors", "Duration", "Saturation", "Telemetry"]


def test_every_recording_rule_is_read_by_a_dashboard_or_another_rule():
    rules = [r for g in rule_groups() for r in g["rules"]]
    exprs = [r["expr"] for r in rules] + [
        t["expr"] for path in DASHBOARDS for p in query_panels(load(path)) for t in p["targets"]
    ]
    for name in {r["record"] for r in rules if "record" in r}:
        readers = [e for e in exprs if re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", e)]
        assert readers, f"{name} is recorded but nothing reads it"


def test_recorded_series_name_the_labels_they_keep():
    """level:metric:operations, where the level lists the labels the rule aggregates by (le aside)."""
    for rule in (r for g in rule_groups() for r in g["rules"] if "record" in r):
        grouping = re.search(r"\bby \(([^)]*)\)", rule["expr"])
        if grouping:
            labels = [label.strip() for label in grouping.group(1).split(",") if label.strip() != "le"]
            assert rule["record"].split(":")[0] == "_".join(labels), rule["record"]


# Panels that colour a single value: Grafana's default thresholds (green, red from 80) colour
# them when a panel sets none, green at 0 targets up or at 100 % errors.
COLOURED_BY_VALUE = {"stat", "gauge", "bargauge", "state-timeline", "status-history"}
GRAFANA_DEFAULT_STEPS = [{"color": "green", "value": None}, {"color": "red", "value": 80}]
RUNBOOK_LINK = re.compile(r"/runbook#([a-z0-9]+)$")


def colour_problem(panel: dict) -> str | None:
    defaults = panel.get("fieldConfig", {}).get("defaults", {})
    if defaults.get("color", {}).get("mode") == "fixed":
        return None
    steps = defaults.get("thresholds", {}).get("steps")
    if not steps:
        return "no thresholds and no fixed colour: Grafana's default green/red-at-80 applies"
    if steps == GRAFANA_DEFAULT_STEPS:
        return "Grafana's default thresholds, written out"
    return None


def test_every_single_value_panel_colours_on_purpose():
    problems = [
        f"{path.stem} / {panel['title']}: {problem}"
        for path in DASHBOARDS
        for panel in all_panels(load(path)["panels"])
        if panel["type"] in COLOURED_BY_VALUE and (problem := colour_problem(panel))
    ]
    assert problems == []


def test_the_colour_check_catches_a_stat_panel_left_to_the_defaults():
    assert colour_problem({"type": "stat", "fieldConfig": {"defaults": {"unit": "none"}}})
    assert colour_problem(
        {"type": "stat", "fieldConfig": {"defaults": {"thresholds": {"steps": GRAFANA_DEFAULT_STEPS}}}}
    )


def alert_thresholds() -> dict[str, dict[str, list[tuple[str, float]]]]:
    """For each alert: the comparisons of a series with a constant, ``series > c``, by series name."""
    found: dict[str, dict[str, list[tuple[str, float]]]] = {}
    for group in rule_groups():
        for rule in (r for r in group["rules"] if "alert" in r):
            for name, operator, constant in re.findall(
                r"([a-zA-Z_:][\w:]*)(?:\{[^}]*\})?\s*(>=|<=|==|>|<)\s*(\([\d.\s*/]+\)|[\d.]+)", rule["expr"]
            ):
                # A constant written as a product, (14.4 * 0.005): its value.
                value = 1.0
                for factor in constant.strip("()").split("*"):
                    value *= float(factor)
                found.setdefault(rule["alert"].lower(), {}).setdefault(name, []).append((operator, value))
    return found


def colour_at(steps: list[dict], value: float) -> str:
    """The colour Grafana gives ``value``: that of the last step at or below it."""
    colour = steps[0]["color"]
    for step in steps[1:]:
        if value >= step["value"]:
            colour = step["color"]
    return colour


def threshold_disagreements(panel: dict, thresholds: dict[str, dict[str, list[tuple[str, float]]]]) -> list[str]:
    """A panel with thresholds, linked to an alert's runbook, that queries a series the alert
    compares with a constant: red exactly where the alert's comparison holds, next to it."""
    steps = panel.get("fieldConfig", {}).get("defaults", {}).get("thresholds", {}).get("steps", [])
    if not steps:
        return []
    problems = []
    for link in panel.get("links", []):
        anchor = RUNBOOK_LINK.search(link.get("url", ""))
        if not anchor:
            continue
        for target in panel.get("targets", []):
            for name, comparisons in thresholds.get(anchor.group(1), {}).items():
                if not re.search(rf"(?<![\w:]){re.escape(name)}(?![\w:])", target.get("expr", "")):
                    continue
                # The series divided by a budget (a burn rate) is another panel's scale.
                if re.search(rf"{re.escape(name)}(?:\{{[^}}]*\}})?\s*/", target["expr"]):
                    continue
                [(operator, constant), *_] = comparisons
                # A value just inside the alert's condition is red, one just outside is not.
                near = max(abs(constant) * 1e-6, 1e-9)
                inside, outside = {
                    ">": (constant + near, constant - near),
                    ">=": (constant, constant - near),
                    "<": (constant - near, constant + near),
                    "<=": (constant, constant + near),
                    "==": (constant, constant + 1),
                }[operator]
                if colour_at(steps, inside) != "red" or colour_at(steps, outside) == "red":
                    problems.append(
                        f"{panel['title']}: {name} {operator} {constant} alerts, the panel's steps are {steps}"
                    )
    return problems


def test_a_panel_linked_to_an_alert_turns_red_where_the_alert_fires():
    thresholds = alert_thresholds()
    assert thresholds["hvsapihigherrorrate"]["job:hvs_api_predict_errors:ratio_rate5m"] == [(">", 0.05)]
    linked = [p for path in DASHBOARDS for p in all_panels(load(path)["panels"]) if p.get("links")]
    assert linked
    assert [problem for panel in linked for problem in threshold_disagreements(panel, thresholds)] == []
    # And the check sees a disagreement.
    [five_xx] = [p for p in linked if p["title"] == "5xx ratio of /predict (5m)"]
    wrong = json.loads(json.dumps(five_xx))
    wrong["fieldConfig"]["defaults"]["thresholds"]["steps"][1]["value"] = 0.1
    assert threshold_disagreements(wrong, thresholds)


PROMQL_WORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan"}


def series_names(expr: str) -> set[str]:
    """The series an expression reads: its names outside strings, label matchers, grouping
    clauses and function calls."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = re.findall(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {n for n in names if n not in PROMQL_WORDS}


def test_series_names_are_the_series_not_the_functions_or_labels():
    assert series_names('sum by (job) (rate(flask_http_request_total{job="x"}[5m])) > 0.05 and on (job) up == 1') == {
        "flask_http_request_total",
        "up",
    }


def panels_showing(alert: dict) -> list[str]:
    """The panels that link to the alert's runbook section and query one of the series it reads
    (``vector(1)``, the Watchdog, reads none: its link alone)."""
    url = alert["annotations"]["runbook_url"]
    reads = series_names(alert["expr"])
    found = []
    for path in DASHBOARDS:
        for panel in all_panels(load(path)["panels"]):
            if url not in {link.get("url") for link in panel.get("links", [])}:
                continue
            shown = set().union(*(series_names(t.get("expr", "")) for t in panel.get("targets", [])))
            if not reads or reads & shown:
                found.append(f"{path.stem} / {panel['title']}")
    return found


def test_every_alert_has_a_panel_that_shows_what_it_fires_on_with_its_runbook():
    alerts = {rule["alert"]: rule for group in rule_groups() for rule in group["rules"] if "alert" in rule}
    assert len(alerts) >= 25
    assert [name for name, alert in alerts.items() if not panels_showing(alert)] == []
    # A link to the runbook on a panel that shows none of the alert's series does not count.
    down = alerts["HvsApiDown"]
    assert not series_names(down["expr"]) & series_names("sum(rate(flask_http_request_total[5m]))")


def test_navigation_keeps_the_variables_and_the_time_and_finds_the_apis_own_job():
    for path in DASHBOARDS:
        dashboard = load(path)
        for link in dashboard.get("links", []):
            assert link.get("includeVars") and link.get("keepTime"), (path.stem, link)
    for path in api_dashboards():
        found = variables(load(path))
        # The API's own model gauge: app_info comes with every prometheus-flask-exporter app.
        assert found["job"]["query"] == "label_values(hvs_model_loaded, job)", path.stem
        if "instance" in found:
            # Kubernetes' pods, and the instances of the pods chosen.
            assert found["pod"]["query"] == 'label_values(up{job="$job"}, pod)', path.stem
            assert found["pod"]["includeAll"] and found["pod"]["allValue"] == ".*"
            assert "$pod" in found["instance"]["query"], path.stem
    # The SLO dashboard opens on a range that holds its 1-day and 3-day windows.
    slo = load(ROOT / "grafana/dashboards/hvs-slo.json")
    assert slo["time"]["to"] == "now" and seconds(slo["time"]["from"].removeprefix("now-")) >= seconds("3d")


def test_every_container_query_keeps_to_the_lab_and_saturation_is_shown_whole():
    """cAdvisor sees every container on the host (every Compose project) and kubelet every
    namespace: each container query keeps to this lab's. And the USE method's saturation
    signals of the API are each on a panel."""
    resources = load(ROOT / "grafana/dashboards/hvs-resources.json")
    unscoped = [
        f"{path.stem} / {panel['title']}"
        for path in DASHBOARDS
        for panel in query_panels(load(path))
        for target in panel["targets"]
        if re.search(r"\b(container|kube)_\w+\{", target["expr"])
        and not re.search(r'(\$scope_label|namespace)=~"\$scope"', target["expr"])
    ]
    assert unscoped == []
    shown = set().union(*(series_names(t["expr"]) for p in query_panels(resources) for t in p["targets"]))
    assert {
        "container_spec_cpu_quota",  # CPU against the limit
        "container_spec_cpu_shares",  # and the request
        "container_cpu_cfs_throttled_periods_total",
        "container_spec_memory_limit_bytes",
        "container_start_time_seconds",  # restarts
        "container_oom_events_total",
        "kube_horizontalpodautoscaler_spec_max_replicas",
        "hvs_api_connections_capacity",
    } <= shown


# The steps Grafana asks annotations at: range / 100 (2 minutes on a 3-hour view, 5 on 6 to 12
# hours, 15 on a day), never below the annotation's own step, the scrape interval.
ANNOTATION_STEPS = ("15s", "2m", "5m", "15m")
# An info gauge's label values over 2 hours of 15 s samples (sample i at i x 15 s): value 1
# served from the start, value 2 promoted at 33m15s (1 drops to 0), the API down from 60m15s
# to 75m (longer than the lookback) and back at 75m15s with 2 (1's series gone), 1 rolled back
# at 97m30s. Changes off every step's grid, and a restart that is no change.
INFO_SCENARIO = {
    "1": "1x132 0x107 _x149 1x90",
    "2": "_x133 1x107 _x60 1x88 0x90",
}
INFO_CHANGES = {0: "1", 133 * 15: "2", 390 * 15: "1"}  # second of the change: the value now served


def info_annotations() -> list[tuple[str, dict]]:
    return [
        (path.stem, a)
        for path in DASHBOARDS
        for a in load(path)["annotations"]["list"]
        if re.search(r"hvs_model_\w*info\b", a.get("expr", ""))
    ]


def test_the_model_and_runtime_changes_are_annotated_on_the_dashboards_that_show_them():
    found = {(name, a["tagKeys"]) for name, a in info_annotations()}
    assert {("hvs-api-overview", "model_version"), ("hvs-model", "model_version"), ("hvs-model", "runtime")} <= found
    for _, annotation in info_annotations():
        assert annotation["enable"] and annotation["datasource"] == PROMETHEUS_DS
        assert f"{{{{{annotation['tagKeys']}}}}}" in annotation["titleFormat"]


@pytest.mark.parametrize("step", ANNOTATION_STEPS)
@pytest.mark.parametrize(
    ("dashboard", "annotation"), info_annotations(), ids=lambda x: x if isinstance(x, str) else x["name"]
)
def test_each_change_is_annotated_exactly_once_at_every_step(tmp_path, dashboard, annotation, step):
    """The annotation's query, run by promtool at every instant of a step's grid with
    ``$__interval`` as Grafana substitutes it: true at exactly one instant per promotion and
    rollback (the first at or after it), and never for a restart."""
    label = annotation["tagKeys"]
    metric = re.search(r"hvs_model_\w*info\b", annotation["expr"]).group(0)
    expr = substitute_variables(annotation["expr"], {"job": "hvs-api"}).replace("$__interval", step)
    every = seconds(step)
    expected: dict[int, list[str]] = {t: [] for t in range(0, 120 * 60 + 1, int(every))}
    for changed_at, value in INFO_CHANGES.items():
        expected[min(t for t in expected if t >= changed_at)].append(value)
    tests = [
        {
            "interval": "15s",
            "input_series": [
                {"series": f'{metric}{{job="hvs-api", instance="api:5001", {label}="{v}"}}', "values": values}
                for v, values in INFO_SCENARIO.items()
            ],
            "promql_expr_test": [
                {
                    "expr": expr,
                    "eval_time": f"{t}s",
                    "exp_samples": [{"labels": f'{{{label}="{v}"}}', "value": 1} for v in values],
                }
                for t, values in expected.items()
            ],
        }
    ]
    (tmp_path / "none.yml").write_text("groups: []\n")
    (tmp_path / "annotation.test.yml").write_text(yaml.safe_dump({"rule_files": ["none.yml"], "tests": tests}))
    result = subprocess.run(
        ["promtool", "test", "rules", "annotation.test.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode == 0, textwrap.shorten(result.stdout + result.stderr, 2000)


def test_the_users_queries_are_on_the_dashboards():
    exprs = {q.expr for q in panel_queries()}
    for query in USERS_QUERIES:
        assert query in exprs, query


def test_panel_queries_put_in_every_variables_default():
    for query in panel_queries():
        assert "$" not in query.expr, f"{query.dashboard} / {query.panel}: {query.expr}"
    exprs = {q.expr for q in panel_queries()}
    assert 'sum(up{job="hvs-api", instance=~".*"}) or vector(0)' in exprs
    assert any('job=~"prometheus|alertmanager|grafana"' in e for e in exprs)


def test_only_marked_panels_may_be_empty():
    marked = {(q.dashboard, q.panel) for q in panel_queries() if q.may_be_empty}
    for path in DASHBOARDS:
        for panel in query_panels(load(path)):
            if (path.stem, panel["title"]) in marked:
                reason = panel["description"].removeprefix(EXPECTED_EMPTY).split(".")[0].strip()
                assert len(reason) > 10, f"{panel['title']} must say when it is empty"
    assert ("hvs-api-overview", "5xx responses per second by endpoint and status") in marked
    assert not any(d in {"hvs-model", "hvs-slo"} for d, _ in marked)
