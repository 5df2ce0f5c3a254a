"""Prometheus rules and Alertmanager routing, checked by the real promtool and amtool."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support import ROOT, rule_groups

PROMETHEUS = ROOT / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
ALERTMANAGER_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"


def rules(kind: str) -> list[dict]:
    """Every rule of one kind ("alert" or "record") across the rule files."""
    return [rule for group in rule_groups() for rule in group["rules"] if kind in rule]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


def test_prometheus_config_is_valid():
    result = run("promtool", "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_are_valid():
    result = run("promtool", "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass():
    result = run("promtool", "test", "rules", *map(str, RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_has_a_unit_test_on_both_sides_of_its_boundary():
    tested_alerts: dict[str, set[bool]] = {}
    tested_exprs = []
    for path in RULE_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                tested_alerts.setdefault(check["alertname"], set()).add(bool(check["exp_alerts"]))
            tested_exprs += [check["expr"] for check in case.get("promql_expr_test", [])]
    for alert in rules("alert"):
        assert tested_alerts.get(alert["alert"]) == {True, False}, f"{alert['alert']} needs a firing and a quiet case"
    for record in {r["record"] for r in rules("record")}:
        assert record in tested_exprs, f"recording rule {record} has no promql_expr_test"


def test_alerts_are_documented_and_routable():
    runbook = (PROMETHEUS / "runbook.md").read_text()
    sections = {heading.lower() for heading in re.findall(r"^## (\w+)$", runbook, re.MULTILINE)}
    for alert in rules("alert"):
        name, labels, notes = alert["alert"], alert.get("labels", {}), alert.get("annotations", {})
        assert re.fullmatch(r"Hvs[A-Z][A-Za-z]+", name), name
        assert labels.get("severity") in ("critical", "warning"), name
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        assert "{{" not in notes["summary"], f"{name}: the summary must be static"
        # HvsApiAbsent has no series to take values from; every other description is templated.
        assert "{{" in notes["description"] or name == "HvsApiAbsent", f"{name}: the description must be templated"
        anchor = notes["runbook_url"].rsplit("#", 1)[1]
        assert anchor == name.lower() and anchor in sections, f"{name}: no runbook section #{anchor}"


def test_recording_rules_follow_the_naming_convention():
    for record in rules("record"):
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", record["record"]), record["record"]
        assert 'job="hvs-api"' in record["expr"] or record["expr"].startswith("1 - job:"), record["record"]


def test_alertmanager_config_is_valid():
    result = run("amtool", "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=HvsApiDown", "job=hvs-api"], "lab-pages"),
        (["severity=critical", "alertname=HvsApiErrorBudgetBurnFast", "job=hvs-api"], "lab-pages"),
        (["severity=warning", "alertname=HvsModelHazardousShareDrift", "job=hvs-api"], "lab-tickets"),
        (["alertname=SomethingUnlabelled"], "lab-tickets"),
    ],
)
def test_routing(labels, receiver):
    result = run(
        "amtool",
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--verify.receivers={receiver}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_severity_reaches_a_receiver_and_down_inhibits_the_apis_other_alerts():
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    severities = {rule["labels"]["severity"] for rule in rules("alert")}
    routed = {m.split("=")[1].strip('"') for route in config["route"]["routes"] for m in route["matchers"]}
    assert severities <= routed
    [down] = [r for r in config["inhibit_rules"] if r["source_matchers"] == ['alertname="HvsApiDown"']]
    inhibited = re.search(r'=~"([^"]+)"', down["target_matchers"][0]).group(1).split("|")
    assert {"HvsApiPredictLatencyHigh", "HvsApiHighErrorRate"} <= set(inhibited)
    assert set(inhibited) <= {rule["alert"] for rule in rules("alert")}
    assert down["equal"] == ["job"]


def test_yaml_files_pass_yamllint():
    # From the root, so the ignore patterns of .yamllint.yml (relative paths) apply.
    yamllint = str(Path(sys.executable).parent / "yamllint")
    result = subprocess.run([yamllint, "-c", ".yamllint.yml", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


EXTERNAL_CONFIG = ROOT / "alertmanager" / "alertmanager.external.yml"


def test_external_notification_config_is_valid_and_the_lab_config_plus_slack_and_email():
    result = run("amtool", "check-config", str(EXTERNAL_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    external = yaml.safe_load(EXTERNAL_CONFIG.read_text())
    for receiver in external["receivers"]:
        for slack in receiver.pop("slack_configs", []):
            assert slack["api_url_file"].startswith("/run/secrets/") and "api_url" not in slack
        for email in receiver.pop("email_configs", []):
            assert email["auth_password_file"].startswith("/run/secrets/") and "auth_password" not in email
    assert external == yaml.safe_load(ALERTMANAGER_CONFIG.read_text())


def test_the_notify_override_mounts_the_secrets_the_config_reads():
    override = yaml.safe_load((ROOT / "docker-compose.notify.yml").read_text())
    alertmanager = override["services"]["alertmanager"]
    assert f"--config.file=/etc/alertmanager/{EXTERNAL_CONFIG.name}" in alertmanager["command"]
    read = set(re.findall(r"/run/secrets/(\w+)", EXTERNAL_CONFIG.read_text()))
    assert read == set(alertmanager["secrets"]) == set(override["secrets"])
    for secret in override["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    assert "/secrets/" in (ROOT / ".gitignore").read_text().splitlines()
