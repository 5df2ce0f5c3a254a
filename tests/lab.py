"""The Compose lab run natively: Debian's Prometheus, Alertmanager and blackbox exporter and the
project's alert receiver, on 127.0.0.1, from the very files Compose mounts. Only hosts, ports,
intervals, the rules' ``for:`` durations and range windows, and Alertmanager's timings are
rewritten, all by the same factor, so that a test sees in a minute what the lab shows in an hour, and an alert
fires on the same share of the same traffic as in the lab, whatever Locust's throughput.
"""

import contextlib
import csv
import json
import os
import re
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from loadtest.managed_process import ManagedProcess
from tests.support.paths import ROOT
from tests.support.rules import seconds
from tests.support.waiting import NotYet, wait_for
from tests.support.web import free_port, http

# `for:` durations, range windows, group intervals and Alertmanager's timings shrink by this factor (1m -> 2s,
# 5m -> 10s, 1h -> 2m). Not further: Prometheus only starts scraping after its first 5-second
# discovery round, and a 5s `for:` on HvsApiDown's no-target rule would fire during that start-up gap.
TIME_SCALE = 30
SCRAPE_INTERVAL = "1s"
# A rate needs two samples in its window: with a 1s scrape, no window below 4s.
SHORTEST_WINDOW = 4
# Where each program of the lab says it is ready.
READY_PATHS = {
    "alert-receiver": "/health",
    "alertmanager": "/-/ready",
    "blackbox": "/-/healthy",
    "prometheus": "/-/ready",
}


def scaled(duration: str) -> str:
    return f"{max(1, round(seconds(duration) / TIME_SCALE))}s"


def scaled_windows(expr: str) -> str:
    """An expression with every range window (``[5m]``, ``[1h]``, ``[30d]``) scaled down."""

    def window(match: re.Match) -> str:
        return f"[{max(SHORTEST_WINDOW, round(seconds(match.group(1)) / TIME_SCALE))}s]"

    return re.sub(r"\[(\d+(?:ms|s|m|h|d))\]", window, expr)


def rewrite_rules(source: Path, target: Path) -> None:
    rules = yaml.safe_load(source.read_text())
    for group in rules["groups"]:
        if "interval" in group:  # A slow group (the long SLO windows) runs as much faster.
            group["interval"] = scaled(group["interval"])
        for rule in group["rules"]:
            rule["expr"] = scaled_windows(rule["expr"])
            if "for" in rule:
                rule["for"] = scaled(rule["for"])
    target.write_text(yaml.safe_dump(rules, sort_keys=False))


def rewrite_target(target: str, hosts: dict[str, str]) -> str:
    """A scrape target (``host:port``) or a probed URL (``http://host:port/path``), its host rewritten."""
    if "://" not in target:
        return hosts[target]
    parts = urllib.parse.urlsplit(target)
    return parts._replace(netloc=hosts[parts.netloc]).geturl()


def rewrite_prometheus(source: Path, target: Path, rules_dir: Path, hosts: dict[str, str]) -> None:
    config = yaml.safe_load(source.read_text())
    config["global"]["scrape_interval"] = SCRAPE_INTERVAL
    config["global"]["evaluation_interval"] = SCRAPE_INTERVAL
    config["rule_files"] = [str(rules_dir / Path(pattern).name) for pattern in config["rule_files"]]
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        for static in job["static_configs"]:
            static["targets"] = [rewrite_target(t, hosts) for t in static["targets"]]
        # A probe job scrapes the blackbox exporter, whose address a relabeling sets.
        for relabel in job.get("relabel_configs", []):
            if relabel.get("target_label") == "__address__":
                relabel["replacement"] = hosts[relabel["replacement"]]
    for alertmanager in config["alerting"]["alertmanagers"]:
        for static in alertmanager["static_configs"]:
            static["targets"] = [hosts[t] for t in static["targets"]]
    target.write_text(yaml.safe_dump(config, sort_keys=False))


def rewrite_alertmanager(source: Path, target: Path, hosts: dict[str, str]) -> None:
    config = yaml.safe_load(source.read_text())

    def shrink(route: dict) -> None:
        for key in ("group_wait", "group_interval", "repeat_interval"):
            if key in route:
                route[key] = scaled(route[key])
        for child in route.get("routes", []):
            shrink(child)

    shrink(config["route"])
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            webhook["url"] = rewrite_target(webhook["url"], hosts)
    target.write_text(yaml.safe_dump(config, sort_keys=False))


def program(name: str, command: list[str], log: Path, env: dict | None = None, ready_url: str | None = None):
    """One of the lab's programs: this environment plus ``env``, run from the project root."""
    return ManagedProcess(name, command, log, env={**os.environ, **(env or {})}, cwd=ROOT, ready_url=ready_url)


@dataclass
class Lab:
    """Prometheus, Alertmanager, the blackbox exporter and the alert receiver around an API
    already listening on api_port."""

    workdir: Path
    api_port: int
    ports: dict[str, int] = field(default_factory=dict)
    processes: list[ManagedProcess] = field(default_factory=list)

    def start(self) -> "Lab":
        for name in ("prometheus", "alertmanager", "alert-receiver", "blackbox"):
            self.ports[name] = free_port()
        # Grafana and cAdvisor cannot run here: their targets point at a closed port.
        closed = f"127.0.0.1:{free_port()}"
        hosts = {
            "api:5001": f"127.0.0.1:{self.api_port}",
            "localhost:9090": f"127.0.0.1:{self.ports['prometheus']}",
            "alertmanager:9093": f"127.0.0.1:{self.ports['alertmanager']}",
            "alert-receiver:9095": f"127.0.0.1:{self.ports['alert-receiver']}",
            "blackbox:9115": f"127.0.0.1:{self.ports['blackbox']}",
            "grafana:3000": closed,
            "cadvisor:8080": closed,
        }
        rules_dir = self.workdir / "rules"
        rules_dir.mkdir()
        for rule_file in (ROOT / "prometheus" / "rules").glob("*.yml"):
            rewrite_rules(rule_file, rules_dir / rule_file.name)
        rewrite_prometheus(ROOT / "prometheus" / "prometheus.yml", self.workdir / "prometheus.yml", rules_dir, hosts)
        rewrite_alertmanager(ROOT / "alertmanager" / "alertmanager.yml", self.workdir / "alertmanager.yml", hosts)

        self.processes.append(
            program(
                "alert-receiver",
                [sys.executable, "-m", "hvs_alert_receiver"],
                self.workdir / "alert-receiver.log",
                {
                    "HOST": "127.0.0.1",
                    "PORT": str(self.ports["alert-receiver"]),
                    "RUNBOOK_PATH": str(ROOT / "prometheus" / "runbook.md"),
                },
                self.ready_url("alert-receiver"),
            ).start(wait=False)
        )
        self.processes.append(
            program(
                "alertmanager",
                [
                    "prometheus-alertmanager",
                    f"--config.file={self.workdir / 'alertmanager.yml'}",
                    f"--storage.path={self.workdir / 'alertmanager-data'}",
                    f"--web.listen-address=127.0.0.1:{self.ports['alertmanager']}",
                    # A single Alertmanager: no gossip port.
                    "--cluster.listen-address=",
                ],
                self.workdir / "alertmanager.log",
                ready_url=self.ready_url("alertmanager"),
            ).start(wait=False)
        )
        self.processes.append(
            program(
                "blackbox",
                [
                    "prometheus-blackbox-exporter",
                    # The lab's own file, as Compose mounts it: nothing in it names a host.
                    f"--config.file={ROOT / 'blackbox' / 'blackbox.yml'}",
                    f"--web.listen-address=127.0.0.1:{self.ports['blackbox']}",
                ],
                self.workdir / "blackbox.log",
                ready_url=self.ready_url("blackbox"),
            ).start(wait=False)
        )
        self.processes.append(
            program(
                "prometheus",
                [
                    "prometheus",
                    f"--config.file={self.workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                    f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}",
                    # Firing alerts reach Alertmanager at once rather than after a minute.
                    "--rules.alert.resend-delay=1s",
                ],
                self.workdir / "prometheus.log",
                ready_url=self.ready_url("prometheus"),
            ).start(wait=False)
        )
        # Started together, then awaited: a program that exits says why (its log's end).
        for process in self.processes:
            process.wait_ready(60)
        return self

    def ready_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}{READY_PATHS[name]}"

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()

    def restart(self, name: str) -> tuple[int, int]:
        """Stop one program gracefully, start it again on the same data and wait until it is
        ready; return the old and the new pid."""
        [process] = [p for p in self.processes if p.name == name]
        old_pid = process.pid
        process.stop()
        assert not process.running(), f"{name} did not stop"
        process.start(timeout=60)
        return old_pid, process.pid

    # Prometheus's HTTP API.
    def query(self, expr: str, instant: bool = True) -> dict:
        port = self.ports["prometheus"]
        if instant:
            url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        else:
            now = time.time()
            params = {"query": expr, "start": now - 300, "end": now, "step": "5"}
            url = f"http://127.0.0.1:{port}/api/v1/query_range?" + urllib.parse.urlencode(params)
        try:
            status, body = http("GET", url)
        except OSError as error:  # A timeout on a loaded 2-core runner, or a refused connection.
            raise NotYet(f"{expr}: {error}") from error
        try:
            payload = json.loads(body)
        except ValueError:
            # Not the API's JSON: Prometheus answering "Service Unavailable" while it starts or
            # replays its WAL. A bad query gets a JSON error instead, and fails below.
            raise NotYet(f"{expr}: HTTP {status} {body[:200]!r}") from None
        assert status == 200 and payload["status"] == "success", f"{expr}: {payload}"
        return payload["data"]

    def has_data(self, expr: str, instant: bool = True) -> bool:
        data = self.query(expr, instant)
        return bool(data["result"])

    def targets(self) -> list[dict]:
        status, body = http("GET", f"http://127.0.0.1:{self.ports['prometheus']}/api/v1/targets")
        return json.loads(body)["data"]["activeTargets"]

    def received_alerts(self) -> list[dict]:
        return json.loads(http("GET", f"http://127.0.0.1:{self.ports['alert-receiver']}/alerts")[1])

    def alertmanager_alerts(self) -> list[dict]:
        return json.loads(http("GET", f"http://127.0.0.1:{self.ports['alertmanager']}/api/v2/alerts")[1])

    def wait_for_delivery(self, alertname: str, timeout: float) -> dict:
        def delivered():
            found = [a for a in self.received_alerts() if a["alertname"] == alertname and a["status"] == "firing"]
            return found[0] if found else None

        return wait_for(delivered, timeout, f"{alertname} to reach the alert receiver", interval=1.0)


def locust(host: str, scenario: str, duration: str, log: Path, users: int = 8, **env: str) -> ManagedProcess:
    """Start the project's locustfile headless against ``host`` (stop it, or let it run out).

    Its request counts land in ``<log without suffix>_stats.csv`` (see locust_totals).
    """
    return program(
        f"locust-{scenario}",
        [
            str(Path(sys.executable).parent / "locust"),
            "-f",
            str(ROOT / "loadtest" / "locustfile.py"),
            "--headless",
            "-H",
            host,
            "-u",
            str(users),
            "-r",
            str(users),
            "-t",
            duration,
            "--csv",
            str(log.with_suffix("")),
            "--only-summary",
            scenario,
        ],
        log,
        env,
    ).start()


def locust_totals(log: Path) -> tuple[int, int]:
    """``(requests, failures)`` of a finished Locust run, from its CSV report."""
    with open(log.with_suffix("").with_name(log.stem + "_stats.csv"), newline="") as handle:
        [total] = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    return int(total["Request Count"]), int(total["Failure Count"])


@contextlib.contextmanager
def traffic(host: str, scenario: str, log: Path, users: int = 8, **env: str):
    """Locust drives ``scenario`` for the duration of the block (at most ten minutes), and is
    stopped on leaving it; the block's ``totals`` are read from its report afterwards."""
    process = locust(host, scenario, "600s", log, users, **env)
    run = TrafficRun(log)
    try:
        yield run
    finally:
        process.stop()
    run.requests, run.failures = locust_totals(log)


@dataclass
class TrafficRun:
    log: Path
    requests: int = 0
    failures: int = 0
