"""Prometheus rules and Alertmanager routing, checked by the real promtool and amtool."""

import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.etree import ElementTree

import pytest
import yaml

from tests.support.paths import ROOT
from tests.support.rules import rule_groups, seconds

PROMETHEUS = ROOT / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
RULE_TESTS = sorted((PROMETHEUS / "tests").glob("*.test.yml"))
ALERTMANAGER_CONFIG = ROOT / "alertmanager" / "alertmanager.yml"
# The dead man's switch (rules/monitoring-stack.yml): no threshold, no `for:`, severity none,
# routed to the heartbeat alone. The checks below that judge the other alerts do not apply to
# it; test_the_watchdog_always_fires_and_only_reaches_the_heartbeat checks it instead.
HEARTBEAT = "Watchdog"
# Alerts HvsApiDown does not hold back: the monitoring stack's own (their job is Prometheus's
# or Alertmanager's, not the API's) and the API's scrape budget, which a job that is down
# cannot raise (it has no samples, and only successful scrapes count as slow).
NOT_THE_APIS_SYMPTOMS = ("monitoring-stack.yml", "hvs-api-scrape.yml")
# libyaml's parser and emitter: the unit tests are copied and rewritten some fifty times.
FAST_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
FAST_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def rules(kind: str) -> list[dict]:
    """Every rule of one kind ("alert" or "record") across the rule files."""
    return [rule for group in rule_groups() for rule in group["rules"] if kind in rule]


def rules_of(file_name: str) -> list[dict]:
    """Every rule of one rule file."""
    groups = yaml.safe_load((PROMETHEUS / "rules" / file_name).read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True)


def test_prometheus_config_is_valid():
    result = run("promtool", "check", "config", str(PROMETHEUS / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_are_valid():
    result = run("promtool", "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass():
    # One promtool per CPU over a share of the files each; the failing ones run again for
    # promtool's own account of what failed.
    failing = failing_unit_test_files(list(RULE_TESTS))
    if failing:
        result = run("promtool", "test", "rules", *sorted(failing))
        pytest.fail(f"failing: {sorted(failing)}\n{result.stdout}{result.stderr}")


def alert_checks() -> dict[str, list[tuple[float, list[tuple[float, bool]]]]]:
    """Alert name -> per test case: its file's evaluation interval and the case's
    ``(eval_time, expected to fire)`` checks of that alert, in seconds and in time order."""
    checks: dict[str, list[tuple[float, list[tuple[float, bool]]]]] = {}
    for path in RULE_TESTS:
        tests = yaml.safe_load(path.read_text())
        step = seconds(tests.get("evaluation_interval", "1m"))
        for case in tests["tests"]:
            in_case: dict[str, list[tuple[float, bool]]] = {}
            for check in case.get("alert_rule_test", []):
                verdict = (seconds(check["eval_time"]), bool(check["exp_alerts"]))
                in_case.setdefault(check["alertname"], []).append(verdict)
            for name, found in in_case.items():
                checks.setdefault(name, []).append((step, sorted(found)))
    return checks


def test_every_rule_has_a_unit_test_on_both_sides_of_its_boundary():
    checks = alert_checks()
    for alert in (a for a in rules("alert") if a["alert"] != HEARTBEAT):
        name, hold = alert["alert"], seconds(alert.get("for", "0s"))
        cases = checks.get(name, [])
        # Both sides of `for:`: quiet one evaluation before it fires, in the same scenario.
        assert any(fires and (t - step, False) in case for step, case in cases for t, fires in case), (
            f"{name} needs a case where it is quiet one evaluation before it fires"
        )
        # Both sides of the threshold: a scenario where it stays quiet for longer than its `for:`.
        assert any(not any(f for _, f in case) and case[-1][0] >= hold for _, case in cases), (
            f"{name} needs a case that stays quiet past its for: ({alert.get('for')})"
        )
    tested_exprs = [
        check["expr"]
        for path in RULE_TESTS
        for case in yaml.safe_load(path.read_text())["tests"]
        for check in case.get("promql_expr_test", [])
    ]
    for record in {r["record"] for r in rules("record")}:
        assert record in tested_exprs, f"recording rule {record} has no promql_expr_test"


# A binary set operator of PromQL, with its matching modifier: `and on (job)`.
SET_OPERATOR = re.compile(r"(or|and|unless)\b(\s+(?:on|ignoring)\s*\([^)]*\))?")
# A condition's comparison with a number: `> 0.05`, `> (14.4 * 0.005)`, `== 0`.
COMPARISON = re.compile(r"\s(==|!=|>=|<=|>|<)\s*(\([\d.\s*/+-]+\)|[\d.]+)\s*$")


def set_operators(expr: str, names: set[str]) -> list[re.Match]:
    """The set operators called ``names`` in ``expr`` outside parentheses, braces and strings."""
    found, depth, quote, i = [], 0, None, 0
    while i < len(expr):
        char = expr[i]
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0 and (i == 0 or not (expr[i - 1].isalnum() or expr[i - 1] in "_:")):
            match = SET_OPERATOR.match(expr, i)
            if match and match.group(1) in names:
                found.append(match)
                i = match.end()
                continue
        i += 1
    return found


def wrapped(expr: str) -> bool:
    """True when ``expr`` is one parenthesised expression: its first parenthesis closes at its end."""
    depth = 0
    for i, char in enumerate(expr):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return char == ")" and i == len(expr) - 1
    return False


def weakened(expr: str) -> list[tuple[str, str]]:
    """``(what, expression)`` for each condition of an alert expression made always true, and
    each alternative (``or``) and exception (``unless``) dropped."""
    text = expr.strip()
    lead, trail = expr[: len(expr) - len(expr.lstrip())], expr[len(expr.rstrip()) :]
    if wrapped(text):
        return [(what, f"{lead}({inner}){trail}") for what, inner in weakened(text[1:-1])]
    operators = set_operators(text, {"or"}) or set_operators(text, {"and", "unless"})
    if not operators:
        comparison = COMPARISON.search(text)
        if not comparison:
            return []
        always = text[: comparison.start(1)] + "> -Inf" + text[comparison.end(2) :]
        return [(f"`{' '.join(text.split())}` always true", lead + always + trail)]
    bounds = [0, *[b for op in operators for b in (op.start(), op.end())], len(text)]
    variants = []
    for k, (start, end) in enumerate(zip(bounds[::2], bounds[1::2], strict=True)):
        variants += [(what, text[:start] + inner + text[end:]) for what, inner in weakened(text[start:end])]
        kind = operators[k - 1].group(1) if k else operators[0].group(1)
        dropped = " ".join(text[start:end].split())
        if k and kind in ("or", "unless"):
            variants.append((f"without `{kind} {dropped}`", text[: operators[k - 1].start()] + text[end:]))
        elif not k and kind == "or":
            variants.append((f"without `{dropped} or`", text[operators[0].end() :]))
    return [(what, lead + variant + trail) for what, variant in variants]


def recorded_inputs(expr: str, records: dict[str, list[dict]]) -> list[dict]:
    """The recording rules an expression reads, and those they read in turn."""
    needed, todo = [], [expr]
    while todo:
        for name in re.findall(r"\b[a-z_]+:[a-z_]+:[a-z0-9_]+\b", todo.pop()):
            for rule in records.pop(name, []):
                needed.append(rule)
                todo.append(rule["expr"])
    return needed


def without_annotations(rule: dict) -> dict:
    return {key: value for key, value in rule.items() if key != "annotations"}


def alert_suite(folder: Path, alertname: str, original: dict | None = None, variant: dict | None = None) -> list[Path]:
    """A copy of the unit tests that check ``alertname``, reduced to those checks, on rule files
    that hold only its rules (``original`` replaced by ``variant``) and the recording rules they
    read. Annotations are left out: a weakened condition may change ``$value``, not the verdict."""
    (folder / "rules").mkdir(parents=True)
    (folder / "tests").mkdir()
    # Alerts that ``alertname`` reads through ALERTS{alertname="..."} are kept too, unchanged.
    read = {
        name
        for rule in rules("alert")
        if rule["alert"] == alertname
        for name in re.findall(r'ALERTS\{alertname="(\w+)"', rule["expr"])
    }
    for path in RULE_FILES:
        groups = []
        for group in yaml.load(path.read_text(), Loader=FAST_LOADER)["groups"]:
            records: dict[str, list[dict]] = {}
            for rule in group["rules"]:
                if "record" in rule:
                    records.setdefault(rule["record"], []).append(rule)
            alerts = [
                without_annotations(variant if rule == original else rule)
                for rule in group["rules"]
                if rule.get("alert") == alertname or rule.get("alert") in read
            ]
            inputs = [record for alert in alerts for record in recorded_inputs(alert["expr"], records)]
            if alerts:
                groups.append({"name": group["name"], "rules": [r for r in group["rules"] if r in inputs] + alerts})
        (folder / "rules" / path.name).write_text(yaml.dump({"groups": groups}, Dumper=FAST_DUMPER))
    suites = []
    for path in RULE_TESTS:
        tests = yaml.load(path.read_text(), Loader=FAST_LOADER)
        cases = []
        for case in tests["tests"]:
            checks = [check for check in case.get("alert_rule_test", []) if check["alertname"] == alertname]
            for alert in (alert for check in checks for alert in check["exp_alerts"]):
                alert.pop("exp_annotations", None)
            if checks:
                cases.append({**{k: v for k, v in case.items() if k != "promql_expr_test"}, "alert_rule_test": checks})
        if cases:
            suites.append(folder / "tests" / path.name)
            suites[-1].write_text(yaml.dump({**tests, "tests": cases}, Dumper=FAST_DUMPER))
    return suites


def failing_unit_test_files(files: list[Path]) -> set[str]:
    """The unit test files that fail, of one promtool run per CPU over a share of them each (few
    processes: most of a small file's time is promtool starting). Each run writes its verdicts
    per file as JUnit XML (promtool 3 no longer prints a line per file on stdout)."""
    count = os.cpu_count() or 1
    shares = [share for i in range(count) if (share := files[i::count])]
    with tempfile.TemporaryDirectory() as reports:

        def verdicts(numbered: tuple[int, list[Path]]) -> tuple[dict[str, bool], str]:
            number, share = numbered
            report = Path(reports) / f"{number}.xml"
            result = run("promtool", "test", "rules", f"--junit={report}", *map(str, share))
            suites = ElementTree.parse(report).getroot().iter("testsuite") if report.exists() else []
            found = {suite.get("name"): suite.get("failures") == suite.get("errors") == "0" for suite in suites}
            return found, result.stdout + result.stderr

        with ThreadPoolExecutor(len(shares)) as pool:
            results = list(pool.map(verdicts, enumerate(shares)))
    passed = {name: ok for found, _ in results for name, ok in found.items()}
    assert set(passed) == set(map(str, files)), "".join(output for _, output in results)[-5000:]
    return {path for path, ok in passed.items() if not ok}


@pytest.mark.mutation
def test_every_condition_and_for_of_every_alert_decides_a_unit_test(tmp_path):
    """Each alert's `for:` dropped, each of its conditions made always true, each alternative
    (a burn-rate pair) and exception dropped, one at a time: some unit test must fail. So every
    threshold, window, minimum-traffic guard and `for:` is tested on both sides."""
    as_is, variants = {}, {}
    for index, alert in enumerate(rules("alert")):
        name = alert["alert"]
        as_is[f"{name} ({index})"] = alert_suite(tmp_path / f"{index}", name)
        weaker = [(f"without `for: {alert['for']}`", {**alert, "for": "0s"})] if "for" in alert else []
        weaker += [(what, {**alert, "expr": expr}) for what, expr in weakened(alert["expr"])]
        for number, (what, variant) in enumerate(weaker):
            variants[f"{name} {what}"] = alert_suite(tmp_path / f"{index}-{number}", name, alert, variant)
    # Every variant must be a valid rule, or its failure would prove nothing.
    folders = {path.parent.parent / "rules" for suites in variants.values() for path in suites}
    checked = run("promtool", "check", "rules", *[str(f) for folder in sorted(folders) for f in folder.glob("*.yml")])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    failing = failing_unit_test_files([path for suites in [*as_is.values(), *variants.values()] for path in suites])
    assert [name for name, suites in as_is.items() if failing & set(map(str, suites))] == []
    unnoticed = [what for what, suites in variants.items() if not failing & set(map(str, suites))]
    assert len(variants) > 30
    assert unnoticed == [], "no unit test notices:\n" + "\n".join(unnoticed)


def test_alerts_are_documented_and_routable():
    runbook = (PROMETHEUS / "runbook.md").read_text()
    sections = {heading.lower() for heading in re.findall(r"^## (\w+)$", runbook, re.MULTILINE)}
    for alert in rules("alert"):
        name, labels, notes = alert["alert"], alert.get("labels", {}), alert.get("annotations", {})
        if name != HEARTBEAT:
            assert re.fullmatch(r"Hvs[A-Z][A-Za-z]+", name), name
            assert labels.get("severity") in ("critical", "warning"), name
        assert set(notes) == {"summary", "description", "runbook_url"}, name
        assert "{{" not in notes["summary"], f"{name}: the summary must be static"
        assert "{{" in notes["description"], f"{name}: the description must be templated"
        anchor = notes["runbook_url"].rsplit("#", 1)[1]
        assert anchor == name.lower() and anchor in sections, f"{name}: no runbook section #{anchor}"


def test_the_watchdog_always_fires_and_only_reaches_the_heartbeat():
    [watchdog] = [rule for rule in rules("alert") if rule["alert"] == HEARTBEAT]
    assert (watchdog["expr"], watchdog.get("for"), watchdog["labels"]) == ("vector(1)", None, {"severity": "none"})
    # Its unit tests expect it firing at every check, from the first evaluation to a day later.
    [(_, case)] = alert_checks()[HEARTBEAT]
    assert all(fires for _, fires in case) and case[0][0] == 0 and case[-1][0] >= seconds("1d")
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    [route] = [r for r in config["route"]["routes"] if f'alertname="{HEARTBEAT}"' in r.get("matchers", [])]
    assert config["route"]["routes"][0] == route and not route.get("continue")
    # No inhibition can hold it back: none targets it by name, or by the severity it has.
    targets = [m for rule in config["inhibit_rules"] for m in rule["target_matchers"]]
    assert not [m for m in targets if HEARTBEAT in m or "severity" in m], targets


def test_recording_rules_follow_the_naming_convention():
    for record in rules("record"):
        assert re.fullmatch(r"[a-z_]+:[a-z_]+:[a-z0-9_]+", record["record"]), record["record"]
        # Each keeps job="hvs-api": it selects it, derives from a job: record, or (a series about
        # the API measured by another job, the black-box probe) stamps it through its labels.
        about_the_api = (
            'job="hvs-api"' in record["expr"]
            or record["expr"].startswith("1 - job:")
            or record.get("labels", {}).get("job") == "hvs-api"
        )
        assert about_the_api, record["record"]


def test_recorded_increases_tile_time():
    """A group that records increases over a window (``job:...:increase5m``, summed over the
    long SLO windows) runs at that window: longer leaves gaps between them, shorter counts
    requests twice. promtool's unit tests cannot see it: they run every group at their file's
    evaluation_interval, whatever the group's own."""
    tiling = 0
    for group in rule_groups():
        for rule in group["rules"]:
            window = re.fullmatch(r"[a-z_]+:[a-z_]+:increase(\d+[smhd])", rule.get("record", ""))
            if window:
                tiling += 1
                assert seconds(group.get("interval", "15s")) == seconds(window.group(1)), (group["name"], rule)
                assert f"[{window.group(1)}]" in rule["expr"], rule
    assert tiling >= 4


def test_every_mark_is_recorded_after_the_tiles_that_read_it_and_no_deployment_reorders_them():
    """A long group's tile is a counter less the mark of the evaluation before: the rule that
    records a mark (``job_instance:...:sum``) must come after every rule of its group that reads it,
    or a tile reads this evaluation's mark and is 0. Prometheus runs a group's rules in order
    unless its concurrent-rule-eval feature is on, which orders them by dependency instead (a
    tile depends on the mark it reads, so the mark would run first): no deployment turns it on."""
    marked = 0
    for group in rule_groups():
        names = [rule.get("record") or rule.get("alert") for rule in group["rules"]]
        for position, rule in enumerate(group["rules"]):
            if not re.fullmatch(r"job_instance:[a-z_]+:sum", rule.get("record", "")):
                continue
            readers = [i for i, r in enumerate(group["rules"]) if rule["record"] in r["expr"]]
            assert readers, f"{rule['record']} is read by no rule of {group['name']}"
            assert all(i < position for i in readers), (group["name"], rule["record"], [names[i] for i in readers])
            marked += 1
    assert marked >= 4
    deployments = [ROOT / "docker-compose.yml", ROOT / "k8s" / "helm-values.yaml", ROOT / "tests" / "lab.py"]
    assert not [p for p in deployments if "concurrent-rule-eval" in p.read_text()]


def test_alertmanager_config_is_valid():
    result = run("amtool", "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=critical", "alertname=HvsApiDown", "job=hvs-api"], "lab-pages"),
        (["severity=warning", "alertname=HvsApiInstanceDown", "job=hvs-api", "instance=api:5001"], "lab-tickets"),
        (["severity=critical", "alertname=HvsApiErrorBudgetBurnFast", "job=hvs-api"], "lab-pages"),
        (["severity=warning", "alertname=HvsModelHazardousShareDrift", "job=hvs-api"], "lab-tickets"),
        (["alertname=SomethingUnlabelled"], "lab-tickets"),
        (["severity=none", "alertname=Watchdog"], "lab-heartbeat"),
        # Whatever its severity, the heartbeat is never a page.
        (["severity=critical", "alertname=Watchdog"], "lab-heartbeat"),
        (["severity=warning", "alertname=HvsPrometheusConfigReloadFailed", "job=prometheus"], "lab-tickets"),
        (["severity=critical", "alertname=HvsPrometheusRuleFailures", "job=prometheus"], "lab-pages"),
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


def test_every_alert_severity_reaches_a_receiver_and_only_the_job_down_inhibits_the_apis_other_alerts():
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    severities = {rule["labels"]["severity"] for rule in rules("alert") if rule["alert"] != HEARTBEAT}
    routed = {m.split("=")[1].strip('"') for route in config["route"]["routes"] for m in route["matchers"]}
    assert severities <= routed
    [down] = [r for r in config["inhibit_rules"] if r["source_matchers"] == ['alertname="HvsApiDown"']]
    inhibited = re.search(r'=~"([^"]+)"', down["target_matchers"][0]).group(1).split("|")
    others = {rule["alert"] for name in NOT_THE_APIS_SYMPTOMS for rule in rules_of(name) if "alert" in rule}
    others.add("HvsApiProbeBlind")  # The blackbox exporter's failure, not the API's.
    assert {HEARTBEAT, "HvsApiScrapeSlow", "HvsPrometheusRuleFailures"} <= others
    assert set(inhibited) == {rule["alert"] for rule in rules("alert")} - {"HvsApiDown"} - others
    assert down["equal"] == ["job"]
    # HvsApiDown is job-wide: no rule of it keeps the instance label, which `equal: [job]`
    # would otherwise let one instance's outage hold back the whole job's pages.
    for rule in rules("alert"):
        if rule["alert"] == "HvsApiDown":
            assert re.fullmatch(r"max by \(job\) \(.*\) == 0|absent\(.*\)", rule["expr"].strip()), rule["expr"]
    # No other alert holds back alerts for a whole job, but a fast-burn page its own SLO's ticket.
    sources = {m for r in config["inhibit_rules"] for m in r["source_matchers"]}
    assert sources == {
        'alertname="HvsApiDown"',
        'alertname="HvsApiErrorBudgetBurnFast"',
        'alertname="HvsApiLatencyBudgetBurnFast"',
        'alertname="HvsApiProbeBudgetBurnFast"',
    }


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
