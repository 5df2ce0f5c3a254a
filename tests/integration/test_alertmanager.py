"""The inhibitions of alertmanager/alertmanager.yml, in Debian's real Alertmanager: which of the
alerts Prometheus would send it holds back (``suppressed``) and which it lets through
(``active``). Only the webhooks' host is rewritten, to a closed port: nothing is delivered.
"""

import json
import subprocess
import urllib.parse

import pytest
import yaml

from tests.support import ROOT, answers_200, free_port, http, rule_groups, stop_process_group, wait_for

pytestmark = pytest.mark.integration

JOB = "hvs-api"
# Alert name -> severity, from the rule files, so every alert of the rules is sent below.
SEVERITY = {r["alert"]: r["labels"]["severity"] for group in rule_groups() for r in group["rules"] if "alert" in r}


def alerts_of(file_name: str) -> set[str]:
    """The alert names of one rule file."""
    groups = yaml.safe_load((ROOT / "prometheus" / "rules" / file_name).read_text())["groups"]
    return {rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule}


# Not the API's symptoms, so HvsApiDown holds none of them back: the heartbeat and the monitoring
# stack's alerts (whose job is Prometheus's or Alertmanager's), and the scrape budget's, which a
# job that is down cannot raise.
STACK = alerts_of("monitoring-stack.yml")
SCRAPE = alerts_of("hvs-api-scrape.yml")
PROBE_BLIND = "HvsApiProbeBlind"


@pytest.fixture
def alertmanager(tmp_path):
    """Alertmanager on a free port with the lab's configuration; its URL."""
    config = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    closed = f"127.0.0.1:{free_port()}"
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = urllib.parse.urlsplit(webhook["url"])._replace(netloc=closed).geturl()
    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    url = f"http://127.0.0.1:{free_port()}"
    with open(tmp_path / "alertmanager.log", "wb") as log:
        process = subprocess.Popen(
            [
                "prometheus-alertmanager",
                f"--config.file={tmp_path / 'alertmanager.yml'}",
                f"--storage.path={tmp_path / 'data'}",
                f"--web.listen-address={url.removeprefix('http://')}",
                # A single Alertmanager: no gossip port.
                "--cluster.listen-address=",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for(lambda: answers_200(url + "/-/ready"), 30, "Alertmanager to be ready")
            yield url
        finally:
            stop_process_group(process)


def alert(name: str, job: str | None = JOB, **labels: str) -> dict:
    """An alert as Prometheus sends it: the rule's name and severity, the job (None: none), any other labels."""
    return {"labels": {"alertname": name, "severity": SEVERITY[name], **({"job": job} if job else {}), **labels}}


def send(url: str, *alerts: dict) -> None:
    status, body = http("POST", url + "/api/v2/alerts", list(alerts))
    assert status == 200, body


def states(url: str) -> dict[tuple[str, str, str], str]:
    """``(alertname, job, instance) -> state`` of every alert Alertmanager holds."""
    status, body = http("GET", url + "/api/v2/alerts")
    assert status == 200, body
    return {
        (a["labels"]["alertname"], a["labels"].get("job", ""), a["labels"].get("instance", "")): a["status"]["state"]
        for a in json.loads(body)
    }


def settle(url: str, expected: dict[tuple[str, str, str], str]) -> None:
    """Wait until Alertmanager shows exactly ``expected`` (it takes in source alerts asynchronously)."""
    try:
        wait_for(lambda: states(url) == expected, 15, f"Alertmanager to show {expected}")
    except TimeoutError:
        assert states(url) == expected


def test_the_job_down_holds_back_every_other_alert_of_the_job_and_no_other_jobs(alertmanager):
    # A blind probe is the blackbox exporter's failure: the API being down does not explain it.
    others = sorted(set(SEVERITY) - {"HvsApiDown", PROBE_BLIND} - STACK - SCRAPE)
    stack = sorted(STACK - {"Watchdog"})
    send(
        alertmanager,
        alert("HvsApiDown", cause="scrapes-fail"),
        *[alert(name, instance="api-1:5001") for name in others],
        alert(PROBE_BLIND, instance="blackbox:9115"),
        alert("HvsApiHighErrorRate", job="other-api", instance="other:5001"),
        *[alert(name, instance="api-1:5001") for name in SCRAPE],
        *[alert(name, job="prometheus", instance="localhost:9090") for name in stack],
        alert("Watchdog", job=None),
    )
    settle(
        alertmanager,
        {
            ("HvsApiDown", JOB, ""): "active",
            **{(name, JOB, "api-1:5001"): "suppressed" for name in others},
            ("HvsApiHighErrorRate", "other-api", "other:5001"): "active",
            (PROBE_BLIND, JOB, "blackbox:9115"): "active",
            **{(name, JOB, "api-1:5001"): "active" for name in SCRAPE},
            **{(name, "prometheus", "localhost:9090"): "active" for name in stack},
            ("Watchdog", "", ""): "active",
        },
    )


def test_nothing_holds_back_the_watchdog(alertmanager):
    # Every alert of the rules at once, the inhibitions' sources among them, with and without a
    # job: the heartbeat stays active whatever else fires.
    others = sorted(set(SEVERITY) - {"Watchdog"})
    send(
        alertmanager,
        alert("Watchdog", job=None),
        *[alert(name) for name in others],
        *[alert(name, job=None, instance="no-job") for name in others],
    )

    def taken_in() -> dict | None:
        """Every alert held, and the inhibitor at work (the job's instance ticket held back)."""
        found = states(alertmanager)
        held_back = found.get(("HvsApiInstanceDown", JOB, "")) == "suppressed"
        return found if len(found) == 1 + 2 * len(others) and held_back else None

    found = wait_for(taken_in, 15, "Alertmanager to take in every alert and inhibit")
    assert found[("Watchdog", "", "")] == "active"


def test_one_instance_of_two_down_leaves_the_jobs_fast_burn_page_active(alertmanager):
    # What Prometheus fires when api-1 of api-1 and api-2 is down and half the requests fail:
    # the instance's ticket and the job's burn-rate and error-rate alerts, but no HvsApiDown.
    send(
        alertmanager,
        alert("HvsApiInstanceDown", instance="api-1:5001"),
        alert("HvsApiErrorBudgetBurnFast"),
        alert("HvsApiHighErrorRate"),
    )
    # HvsApiHighErrorRate suppressed shows that the inhibitor has taken in this batch.
    settle(
        alertmanager,
        {
            ("HvsApiInstanceDown", JOB, "api-1:5001"): "active",
            ("HvsApiErrorBudgetBurnFast", JOB, ""): "active",
            ("HvsApiHighErrorRate", JOB, ""): "suppressed",
        },
    )


def test_the_fast_burn_page_holds_back_the_slow_burn_and_error_rate_tickets(alertmanager):
    send(
        alertmanager,
        alert("HvsApiErrorBudgetBurnFast"),
        alert("HvsApiErrorBudgetBurnSlow"),
        alert("HvsApiHighErrorRate"),
        alert("HvsApiPredictLatencyHigh"),
    )
    settle(
        alertmanager,
        {
            ("HvsApiErrorBudgetBurnFast", JOB, ""): "active",
            ("HvsApiErrorBudgetBurnSlow", JOB, ""): "suppressed",
            ("HvsApiHighErrorRate", JOB, ""): "suppressed",
            # A latency ticket is another problem: the page does not cover it.
            ("HvsApiPredictLatencyHigh", JOB, ""): "active",
        },
    )


@pytest.mark.parametrize("slo", ["Latency", "Probe"])
def test_each_slos_fast_burn_page_holds_back_its_own_slow_burn_ticket_only(alertmanager, slo):
    send(
        alertmanager,
        alert(f"HvsApi{slo}BudgetBurnFast"),
        alert(f"HvsApi{slo}BudgetBurnSlow"),
        alert("HvsApiErrorBudgetBurnSlow"),
        alert("HvsApiPredictLatencyHigh"),
    )
    settle(
        alertmanager,
        {
            (f"HvsApi{slo}BudgetBurnFast", JOB, ""): "active",
            (f"HvsApi{slo}BudgetBurnSlow", JOB, ""): "suppressed",
            # Another SLO's ticket, and the user's p95 alert over every answer, are other problems.
            ("HvsApiErrorBudgetBurnSlow", JOB, ""): "active",
            ("HvsApiPredictLatencyHigh", JOB, ""): "active",
        },
    )
