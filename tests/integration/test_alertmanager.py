"""The inhibitions and grouping of alertmanager/alertmanager.yml, in Debian's real Alertmanager:
which of the alerts Prometheus would send it holds back (``suppressed``) and which it lets
through (``active``), with the webhooks' host rewritten to a closed port; and which alerts
arrive together, delivered to a local webhook endpoint.
"""

import contextlib
import json
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from loadtest.managed_process import ManagedProcess
from tests.support.paths import ROOT
from tests.support.rules import rule_groups
from tests.support.waiting import wait_for
from tests.support.web import free_port, http

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


@contextlib.contextmanager
def running_alertmanager(workdir: Path, webhooks_at: str, pages_group_wait: str | None = None) -> Iterator[str]:
    """Alertmanager on a free port with the lab's configuration, its webhooks sent to
    ``webhooks_at`` (host:port), and optionally a shorter wait before the first page; its URL."""
    config = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = urllib.parse.urlsplit(webhook["url"])._replace(netloc=webhooks_at).geturl()
    if pages_group_wait:
        [pages] = [r for r in config["route"]["routes"] if r["receiver"] == "lab-pages"]
        pages["group_wait"] = pages_group_wait
    (workdir / "alertmanager.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        "prometheus-alertmanager",
        f"--config.file={workdir / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        # A single Alertmanager: no gossip port.
        "--cluster.listen-address=",
    ]
    with ManagedProcess("alertmanager", command, workdir / "alertmanager.log", ready_url=url + "/-/ready") as process:
        process.start(timeout=30)
        yield url


@pytest.fixture
def alertmanager(tmp_path):
    """Alertmanager whose webhooks go to a closed port: only its inhibitions are looked at."""
    with running_alertmanager(tmp_path, f"127.0.0.1:{free_port()}") as url:
        yield url


class Webhooks(ThreadingHTTPServer):
    """A webhook endpoint that keeps every notification posted to it, with its path."""

    def __init__(self):
        self.notifications: list[tuple[str, dict]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.notifications.append((self.path, json.loads(body)))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def delivering_alertmanager(tmp_path):
    """Alertmanager delivering to a local webhook endpoint (pages after 2 s rather than 10 s:
    the grouping is what is looked at); its URL and the endpoint."""
    webhooks = Webhooks()
    thread = threading.Thread(target=webhooks.serve_forever, daemon=True)
    thread.start()
    try:
        with running_alertmanager(tmp_path, f"127.0.0.1:{webhooks.server_port}", pages_group_wait="2s") as url:
            yield url, webhooks
    finally:
        webhooks.shutdown()
        webhooks.server_close()
        thread.join()


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


def test_the_critical_alerts_of_one_job_arrive_as_one_page(delivering_alertmanager):
    """The pages route groups by job: three pages of the API at once are one notification to
    the pages receiver, and another job's page is another. (A ticket sent with them, on its own
    route, is no page.)"""
    url, webhooks = delivering_alertmanager
    api_pages = ["HvsApiErrorBudgetBurnFast", "HvsApiLatencyBudgetBurnFast", "HvsApiProbeBudgetBurnFast"]
    send(
        url,
        *[alert(name) for name in api_pages],
        alert("HvsPrometheusRuleFailures", job="prometheus", instance="localhost:9090"),
        alert("HvsApiHighErrorRate"),
    )

    def pages() -> list[dict] | None:
        found = [body for path, body in webhooks.notifications if path == "/alerts/pages"]
        return found if len(found) >= 2 else None

    delivered = wait_for(pages, 30, "the pages to be delivered")
    time.sleep(3)  # Anything more that would be sent at once.
    grouped = sorted(
        (body["groupLabels"].get("job", ""), sorted(a["labels"]["alertname"] for a in body["alerts"]))
        for path, body in webhooks.notifications
        if path == "/alerts/pages"
    )
    assert len(delivered) >= 2
    assert grouped == [("hvs-api", sorted(api_pages)), ("prometheus", ["HvsPrometheusRuleFailures"])]
