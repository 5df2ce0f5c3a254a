"""The whole lab, natively: the API under gunicorn, Debian's Prometheus and Alertmanager, the
alert receiver and the project's Locust scenarios, all from the files Compose mounts."""

import pytest

from tests.lab import Lab, locust
from tests.support import panel_queries, rule_groups, wait_for

# The user's queries from the original design, exactly as written.
USERS_QUERIES = [
    'sum(rate(flask_http_request_total{endpoint="/predict"}[1m]))',
    'histogram_quantile(0.95, sum(rate(flask_http_request_duration_seconds_bucket{endpoint="/predict"}[5m])) by (le))',
    'flask_http_request_total{status=~"5.."}',
    'sum(increase(hvs_api_prediction_outcomes_total{predicted_label_text="Hazardous"}[5m]))',
]
NOT_RUN_HERE = {"grafana", "cadvisor"}


@pytest.fixture
def lab(trained_mlruns, start_api, tmp_path):
    """API (2 workers, fault injection on, as in Compose) plus Prometheus, Alertmanager and the receiver."""
    api = start_api(trained_mlruns, workers=2, extra_env={"FAULT_INJECTION_ENABLED": "true"})
    lab = Lab(tmp_path / "lab", api.port)
    lab.workdir.mkdir()
    lab.api = api
    try:
        yield lab.start()
    finally:
        lab.stop()


def run_until(lab: Lab, scenario: str, alertname: str, timeout: float, **env) -> dict:
    """Drive one Locust scenario until ``alertname`` reaches the receiver, then stop it."""
    process = locust(lab.api.url, scenario, f"{int(timeout)}s", lab.workdir / f"locust-{scenario}.log", **env)
    try:
        return lab.wait_for_delivery(alertname, timeout)
    finally:
        process.stop()


def alert_state(lab: Lab, alertname: str) -> str | None:
    """The alert's state in Alertmanager: active, suppressed, or None when it holds no such alert."""
    states = {a["labels"]["alertname"]: a["status"]["state"] for a in lab.alertmanager_alerts()}
    return states.get(alertname)


def recording_rules(lab: Lab) -> set[str]:
    return {
        rule["record"] for group in rule_groups(lab.workdir / "rules") for rule in group["rules"] if "record" in rule
    }


def test_the_lab_end_to_end(lab):
    # Steady traffic first: the mix a lab user starts with.
    steady = locust(lab.api.url, "SteadyUser", "25s", lab.workdir / "locust-steady.log")
    exit_code = steady.popen.wait(timeout=90)
    steady.stop()
    assert exit_code == 0, (lab.workdir / "locust-steady.log").read_text()[-3000:]

    targets = {t["labels"]["job"]: t["health"] for t in lab.targets()}
    assert {job: health for job, health in targets.items() if job not in NOT_RUN_HERE} == {
        "hvs-api": "up",
        "prometheus": "up",
        "alertmanager": "up",
    }
    assert all(targets[job] == "down" for job in NOT_RUN_HERE)
    # Steady traffic fires nothing of the API's.
    assert [a for a in lab.received_alerts() if a["labels"].get("job") == "hvs-api"] == []

    # An error burst through the API's fault-injection switch fires the error-rate alert and, at
    # 40 % errors, the fast error-budget burn: the page is delivered, and it holds back the
    # error-rate ticket, which covers the same problem.
    page = run_until(lab, "ErrorBurstUser", "HvsApiErrorBudgetBurnFast", 90, HVS_FAULT_SHARE="0.4")
    assert page["severity"] == "critical" and page["route"] == "pages"
    assert page["runbook_url"].endswith("#hvsapierrorbudgetburnfast")
    wait_for(
        lambda: lab.has_data('ALERTS{alertname="HvsApiHighErrorRate", alertstate="firing"}'),
        30,
        "the error-rate alert to fire",
    )
    wait_for(lambda: alert_state(lab, "HvsApiHighErrorRate") == "suppressed", 30, "the ticket to be inhibited")

    # Drifted readings move the Hazardous share away from the training baseline.
    alert = run_until(lab, "DriftUser", "HvsModelHazardousShareDrift", 120, HVS_DRIFT="1.0")
    assert alert["severity"] == "warning" and alert["route"] == "tickets"
    share = float(lab.query("job:hvs_api_prediction_hazardous:ratio_rate15m")["result"][0]["value"][1])
    baseline = float(lab.query("job:hvs_model_training_hazardous:ratio")["result"][0]["value"][1])
    assert share - baseline > 0.15

    # Right after the load: every recording rule, every dashboard panel and the user's queries have data.
    records = recording_rules(lab)
    assert len(records) == 18
    for record in records:
        assert lab.has_data(record), f"recording rule {record} has no data"
    empty = [
        f"{q.dashboard} / {q.panel}: {q.expr}"
        for q in panel_queries()
        if not lab.has_data(q.expr, instant=q.instant) and not q.may_be_empty
    ]
    assert empty == []
    for query in USERS_QUERIES:
        assert lab.has_data(query), query

    # Stopping the API pages: the down alert reaches the receiver and holds back the API's others.
    lab.api.stop()
    alert = lab.wait_for_delivery("HvsApiDown", 60)
    assert alert["severity"] == "critical" and alert["route"] == "pages"
    wait_for(lambda: alert_state(lab, "HvsApiErrorBudgetBurnFast") == "suppressed", 30, "the page to be inhibited")
