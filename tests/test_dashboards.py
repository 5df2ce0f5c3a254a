"""Grafana dashboards checked as data, since no Grafana server runs here: their structure
against Grafana's typed schema (the foundation SDK pinned to the lab's Grafana 10.1), and
their references to the provisioned datasources. Their queries run in tests/integration/test_lab.py."""

import json

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from tests.support import DASHBOARDS, EXPECTED_EMPTY, ROOT, panel_queries

register_default_plugins()
DATASOURCE_UIDS = {
    d["uid"]: d["type"]
    for d in yaml.safe_load((ROOT / "grafana/provisioning/datasources/datasources.yml").read_text())["datasources"]
}


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


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_survives_grafanas_typed_schema(path):
    original = json.loads(path.read_text())
    returned = json.loads(json.dumps(Dashboard.from_json(original), cls=JSONEncoder))
    assert lost_in_round_trip(original, returned) == []


def test_round_trip_check_catches_a_misspelt_field():
    original = json.loads(DASHBOARDS[0].read_text())
    original["panels"][0]["gridPosition"] = original["panels"][0].pop("gridPos")
    returned = json.loads(json.dumps(Dashboard.from_json(original), cls=JSONEncoder))
    assert lost_in_round_trip(original, returned) == ["/panels[0]/gridPosition: dropped"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_panels_use_the_provisioned_datasource(path):
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] == path.stem and dashboard["schemaVersion"] == 38
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "prometheus"}, panel["title"]
        assert panel["description"], f"{panel['title']} has no description"
        for target in panel["targets"]:
            assert DATASOURCE_UIDS[target["datasource"]["uid"]] == target["datasource"]["type"]


def test_the_users_queries_are_on_the_dashboards():
    exprs = {q.expr for q in panel_queries()}
    for query in (
        'sum(rate(flask_http_request_total{job="hvs-api", endpoint="/predict"}[1m]))',
        "histogram_quantile(0.95, sum(rate(flask_http_request_duration_seconds_bucket"
        '{job="hvs-api", endpoint="/predict"}[5m])) by (le))',
        'flask_http_request_total{job="hvs-api", status=~"5.."}',
        'sum(increase(hvs_api_prediction_outcomes_total{job="hvs-api", predicted_label_text="Hazardous"}[5m]))',
    ):
        assert query in exprs, query


def test_only_marked_panels_may_be_empty():
    marked = {(q.dashboard, q.panel) for q in panel_queries() if q.may_be_empty}
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            if (path.stem, panel["title"]) in marked:
                reason = panel["description"].removeprefix(EXPECTED_EMPTY).split(".")[0].strip()
                assert len(reason) > 10, f"{panel['title']} must say when it is empty"
    assert ("hvs-api-overview", "5xx responses") in marked
    assert not any(d == "hvs-model" for d, _ in marked)
