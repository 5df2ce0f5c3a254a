"""`make bench-rules`: what the rule groups cost on 30 days of data from 10 API instances, before and after.

The pipeline, all under one temporary folder in /tmp that is removed at the end:

1. Synthetic API series (the names and labels hvs_api/metrics.py exports, the ones the rules
   read) for ``--instances`` instances over the ``--days`` that end now, one sample every 15 s
   (the lab's scrape interval), streamed as OpenMetrics text one TSDB block range at a time and
   backfilled with ``promtool tsdb create-blocks-from openmetrics``.
2. A preparing Prometheus on that TSDB answers ``promtool tsdb create-blocks-from rules`` for
   the recorded series that the AFTER rules read over long windows, so that a sum_over_time over
   30 days of one reads 30 days, as in a lab that has run that long. It then merges the
   overlapping blocks, so that the measured servers do not compact while they are measured.
3. The minutes the preparation took are backfilled too, so the data ends at the current time
   and the short windows (5m) are as full as in a live lab.
4. Two Prometheus servers start side by side on copies of the TSDB: one with the rules of the
   pinned BEFORE commit, one with the working tree's rules (AFTER). Each group's evaluation time
   is read from /api/v1/rules and prometheus_rule_group_last_duration_seconds until every group
   has been evaluated ``--evaluations`` times after its first (cold) evaluation.

Targets (reported, not enforced): the long-window rules (ranges of a day or more) at least
10 times cheaper after than before, and every group that holds a paging (severity critical)
alert under 1 % of its interval.

Usage: python -m loadtest.bench_rules [--days 30] [--instances 10] [--evaluations 3] [--max-interval 15s]
Writes results/bench-rules.json. BENCH_DAYS and BENCH_INSTANCES set the size too.
"""

import argparse
import json
import math
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml
from hvs_model.features import LABELS

from hvs_api.metrics import INFERENCE_BUCKETS, REQUEST_BUCKETS
from hvs_api.validation import INVALID_REASONS
from loadtest import prometheus_duration
from loadtest.managed_process import ManagedProcess

ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = "prometheus/rules"
# The rules before the long SLO windows were recorded in 5-minute tiles: the HEAD of the day the bench was
# written (`git rev-parse HEAD` then), whose 1d/3d/30d ratios read raw samples every 15 s.
BEFORE_COMMIT = "3604ecdfc7ae5a80a0e1a4fe0a8e7609555e6c83"
JOB = "hvs-api"
SCRAPE_SECONDS = 15
# The lab's retention (docker-compose.yml), so that the compactor plans as it does there.
RETENTION = "35d"
# Prometheus compacts blocks up to a tenth of the retention (3.5 days here): 2h, 6h, 18h, 54h.
# Backfilling 54-hour blocks gives the measured servers nothing left to compact, and promtool
# reads its input file once per block range, so each file holds exactly one range.
BLOCK_SECONDS = 54 * 3600
# A range of a day or more is a "long window": the 1d, 3d and 30d SLO windows.
LONG_WINDOW_SECONDS = 86400
# Ranges of an hour or more over a recorded series need that series' history, which a lab that
# has run for 30 days has: these are backfilled with promtool.
HISTORY_WINDOW_SECONDS = 3600
TARGET_LONG_WINDOW_RATIO = 10.0
TARGET_PAGING_SHARE = 0.01

# Traffic of one instance: /predict at 2 requests/s on average, 40 % more at the daily peak and
# less at night, and a health check every 10 s. 5xx answers at 0.4 % of /predict (just inside the
# 0.5 % error budget, so the ratios and the budget are not trivially 0) and 5 % refused as invalid.
PREDICT_PER_SECOND = 2.0
DIURNAL_SWING = 0.4
HEALTH_PER_SECOND = 0.1
PREDICT_STATUS_SHARES = {"200": 0.946, "400": 0.05, "500": 0.003, "503": 0.001}
# Latency as a log-normal (median seconds, sigma): about 3 % of successful predictions take more
# than 250 ms, so the latency quantiles and any latency SLO have slow requests to see.
LATENCY = {
    ("/predict", "200"): (0.020, 1.35),
    ("/predict", "400"): (0.002, 0.5),
    ("/predict", "500"): (0.050, 1.0),
    ("/predict", "503"): (0.001, 0.3),
    ("/health", "200"): (0.001, 0.3),
}
HANDLERS = {"/predict": ("api.predict", "POST"), "/health": ("api.health", "GET")}
INFERENCE_LATENCY = (0.003, 0.8)
RECORDS_PER_PREDICTION = 3.0
HAZARDOUS_SHARE = 0.17
# The black-box probe of the API's /ready (job hvs-api-probe, hvs-api-probe-slo.yml): one target,
# the Service, however many instances serve it; one probe in a thousand fails.
PROBE_JOB = "hvs-api-probe"
PROBE_INSTANCE = "http://api:5001/ready"
PROBE_FAILURES = 0.001


def log(message: str) -> None:
    print(message, flush=True)


# --- Durations ------------------------------------------------------------------------------

# Prometheus's format, parsed in one place (loadtest/prometheus_duration.py).
duration_seconds = prometheus_duration.seconds
duration_text = prometheus_duration.text


# --- Synthetic series -----------------------------------------------------------------------


def lognormal_bucket_shares(median: float, sigma: float, bounds: tuple[float, ...]) -> np.ndarray:
    """Share of observations in each bucket interval (the last one is above the last bound)."""
    cdf = [0.5 * (1 + math.erf((math.log(b) - math.log(median)) / (sigma * math.sqrt(2)))) for b in bounds]
    return np.diff([0.0, *cdf, 1.0])


def bucket_means(bounds: tuple[float, ...]) -> np.ndarray:
    """A representative duration per bucket interval, for the histogram's _sum."""
    edges = [bounds[0] / 2, *bounds, bounds[-1] * 2]
    return np.array([math.sqrt(max(lo, 1e-6) * hi) for lo, hi in zip(edges[:-1], edges[1:], strict=True)])


def label_text(labels: dict[str, str]) -> str:
    return ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))


@dataclass
class Series:
    """One synthetic series: its exposition prefix and whether it is a counter or a float gauge."""

    name: str
    labels: dict[str, str]
    counter: bool = True
    floating: bool = False

    @property
    def prefix(self) -> str:
        return f"{self.name}{{{label_text(self.labels)}}}"


class Generator:
    """The API's series of several instances, window by window, counters carried across windows."""

    def __init__(self, instances: int, seed: int = 11):
        self.rng = np.random.default_rng(seed)
        self.instances = [f"api-{i}:5001" for i in range(instances)]
        self.series: list[Series] = []
        for instance in self.instances:
            base = {"job": JOB, "instance": instance}
            for endpoint, status in LATENCY:
                handler, method = HANDLERS[endpoint]
                labels = {**base, "endpoint": endpoint, "method": method, "status": status}
                self.series.append(Series("flask_http_request_total", labels))
                hist = {**labels, "handler": handler}
                for le in [*REQUEST_BUCKETS, "+Inf"]:
                    self.series.append(Series("flask_http_request_duration_seconds_bucket", {**hist, "le": str(le)}))
                self.series.append(Series("flask_http_request_duration_seconds_sum", hist, floating=True))
                self.series.append(Series("flask_http_request_duration_seconds_count", hist))
            for label in LABELS.values():
                self.series.append(Series("hvs_api_prediction_outcomes_total", {**base, "predicted_label_text": label}))
            for reason in INVALID_REASONS:
                self.series.append(Series("hvs_api_invalid_requests_total", {**base, "reason": reason}))
            for le in [*INFERENCE_BUCKETS, "+Inf"]:
                self.series.append(Series("hvs_model_inference_duration_seconds_bucket", {**base, "le": str(le)}))
            self.series.append(Series("hvs_model_inference_duration_seconds_sum", base, floating=True))
            self.series.append(Series("hvs_model_inference_duration_seconds_count", base))
            for name, floating in (
                ("up", False),
                ("hvs_model_loaded", False),
                ("hvs_model_training_hazardous_ratio", True),
                ("scrape_duration_seconds", True),
                ("scrape_samples_scraped", False),
            ):
                self.series.append(Series(name, base, counter=False, floating=floating))
        probe = {"job": PROBE_JOB, "instance": PROBE_INSTANCE}
        for name, floating in (("probe_success", False), ("probe_duration_seconds", True), ("up", False)):
            self.series.append(Series(name, probe, counter=False, floating=floating))
        self.index = {(s.name, label_text(s.labels)): i for i, s in enumerate(self.series)}
        self.totals = np.zeros(len(self.series))
        # OpenMetrics wants the samples of one metric family together: series sorted by name.
        self.order = sorted(range(len(self.series)), key=lambda i: self.series[i].name)

    @property
    def names(self) -> set[str]:
        return {s.name for s in self.series}

    def _slot(self, name: str, **labels: str) -> int:
        return self.index[(name, label_text(labels))]

    def window(self, times: np.ndarray) -> np.ndarray:
        """Values of every series at ``times`` (seconds), shape (series, len(times))."""
        steps = len(times)
        increments = np.zeros((len(self.series), steps))
        daily = 1 + DIURNAL_SWING * np.sin(2 * math.pi * (times % 86400) / 86400 - math.pi / 2)
        request_means = bucket_means(REQUEST_BUCKETS)
        inference_means = bucket_means(INFERENCE_BUCKETS)
        for instance in self.instances:
            base = {"job": JOB, "instance": instance}
            counts = {}
            for endpoint, status in LATENCY:
                if endpoint == "/predict":
                    lam = PREDICT_PER_SECOND * SCRAPE_SECONDS * daily * PREDICT_STATUS_SHARES[status]
                else:
                    lam = np.full(steps, HEALTH_PER_SECOND * SCRAPE_SECONDS)
                n = self.rng.poisson(lam)
                counts[(endpoint, status)] = n
                handler, method = HANDLERS[endpoint]
                labels = {**base, "endpoint": endpoint, "method": method, "status": status}
                increments[self._slot("flask_http_request_total", **labels)] = n
                per_bucket = self.rng.multinomial(
                    n, lognormal_bucket_shares(*LATENCY[(endpoint, status)], REQUEST_BUCKETS)
                )
                cumulative = per_bucket.cumsum(axis=1)
                hist = {**labels, "handler": handler}
                for j, le in enumerate([*REQUEST_BUCKETS, "+Inf"]):
                    increments[self._slot("flask_http_request_duration_seconds_bucket", **hist, le=str(le))] = (
                        cumulative[:, j]
                    )
                increments[self._slot("flask_http_request_duration_seconds_sum", **hist)] = per_bucket @ request_means
                increments[self._slot("flask_http_request_duration_seconds_count", **hist)] = n
            ok = counts[("/predict", "200")]
            records = self.rng.poisson(ok * RECORDS_PER_PREDICTION)
            hazardous = self.rng.binomial(records, HAZARDOUS_SHARE)
            increments[self._slot("hvs_api_prediction_outcomes_total", **base, predicted_label_text=LABELS[1])] = (
                hazardous
            )
            increments[self._slot("hvs_api_prediction_outcomes_total", **base, predicted_label_text=LABELS[0])] = (
                records - hazardous
            )
            refused = self.rng.multinomial(
                counts[("/predict", "400")], np.full(len(INVALID_REASONS), 1 / len(INVALID_REASONS))
            )
            for j, reason in enumerate(INVALID_REASONS):
                increments[self._slot("hvs_api_invalid_requests_total", **base, reason=reason)] = refused[:, j]
            per_bucket = self.rng.multinomial(ok, lognormal_bucket_shares(*INFERENCE_LATENCY, INFERENCE_BUCKETS))
            cumulative = per_bucket.cumsum(axis=1)
            for j, le in enumerate([*INFERENCE_BUCKETS, "+Inf"]):
                increments[self._slot("hvs_model_inference_duration_seconds_bucket", **base, le=str(le))] = cumulative[
                    :, j
                ]
            increments[self._slot("hvs_model_inference_duration_seconds_sum", **base)] = per_bucket @ inference_means
            increments[self._slot("hvs_model_inference_duration_seconds_count", **base)] = ok
            # Gauges are set, not added: their "increments" are their values.
            increments[self._slot("up", **base)] = 1
            increments[self._slot("hvs_model_loaded", **base)] = 1
            increments[self._slot("hvs_model_training_hazardous_ratio", **base)] = HAZARDOUS_SHARE
            increments[self._slot("scrape_duration_seconds", **base)] = self.rng.gamma(4.0, 0.002, steps)
            increments[self._slot("scrape_samples_scraped", **base)] = len(self.series) // len(self.instances) + 60
        probe = {"job": PROBE_JOB, "instance": PROBE_INSTANCE}
        increments[self._slot("probe_success", **probe)] = self.rng.random(steps) >= PROBE_FAILURES
        increments[self._slot("probe_duration_seconds", **probe)] = self.rng.gamma(4.0, 0.003, steps)
        increments[self._slot("up", **probe)] = 1
        counter = np.array([s.counter for s in self.series])
        values = increments.copy()
        values[counter] = self.totals[counter, None] + increments[counter].cumsum(axis=1)
        self.totals[counter] = values[counter, -1]
        return values

    def write(self, path: Path, start: int, end: int) -> int:
        """Write the samples at start, start+15 s, ... before ``end`` as OpenMetrics; returns their number."""
        times = np.arange(start, end, SCRAPE_SECONDS, dtype=np.int64)
        if not len(times):
            return 0
        values = self.window(times.astype(float))
        # Built once per window and shared by every series; joining strings with map() keeps the
        # loop over samples in C, a tenth of the time of formatting each line.
        stamps = [f" {t}\n" for t in times.tolist()]
        with open(path, "w", buffering=1 << 22) as out:
            for i in self.order:
                series = self.series[i]
                if series.floating:
                    texts = map(str, values[i].tolist())
                else:
                    texts = map(str, values[i].astype(np.int64).tolist())
                out.write("".join(map(str.__add__, map(f"{series.prefix} ".__add__, texts), stamps)))
            out.write("# EOF\n")
        return len(times) * len(self.series)


# --- Rule files -----------------------------------------------------------------------------

RANGE = re.compile(r"([a-zA-Z_:][\w:]*)?\s*(\{[^}]*\})?\s*\[(\d+[a-z]+(?:\d+[a-z]+)*)(?::[^\]]*)?\]")
KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
KEYWORDS |= {"inf", "nan"}


def ranges(expr: str) -> list[tuple[str | None, float]]:
    """The metric name (None when the range is over a subquery or an unnamed selector) and
    length in seconds of every range selector in ``expr``."""
    return [(m.group(1), duration_seconds(m.group(3))) for m in RANGE.finditer(expr)]


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (a lexical approximation, enough for a warning)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    found = re.finditer(r"(?<![\w.:])([a-zA-Z_:][\w:]*)(\s*\()?", text)
    return {m.group(1) for m in found if not m.group(2) and m.group(1).lower() not in KEYWORDS}


@dataclass
class Rule:
    name: str
    expr: str
    alert: bool
    severity: str | None
    index: int

    @property
    def longest_range(self) -> float:
        return max((seconds for _, seconds in ranges(self.expr)), default=0.0)


@dataclass
class Group:
    file: str
    name: str
    interval: float
    rules: list[Rule]

    @property
    def key(self) -> str:
        return f"{self.file}:{self.name}"

    @property
    def pages(self) -> bool:
        return any(r.alert and r.severity == "critical" for r in self.rules)


def load_groups(folder: Path, default_interval: float = SCRAPE_SECONDS) -> list[Group]:
    groups = []
    for path in sorted(folder.glob("*.yml")):
        for group in (yaml.safe_load(path.read_text()) or {}).get("groups", []):
            rules = [
                Rule(
                    name=rule.get("record") or rule["alert"],
                    expr=str(rule["expr"]),
                    alert="alert" in rule,
                    severity=(rule.get("labels") or {}).get("severity"),
                    index=i,
                )
                for i, rule in enumerate(group.get("rules", []))
            ]
            interval = duration_seconds(group["interval"]) if "interval" in group else default_interval
            groups.append(Group(path.name, group["name"], interval, rules))
    return groups


def history_inputs(groups: list[Group]) -> set[str]:
    """Recorded series that some rule reads over a range of an hour or more: they need history."""
    recorded = {r.name for g in groups for r in g.rules if not r.alert}
    return {
        name
        for g in groups
        for r in g.rules
        for name, seconds in ranges(r.expr)
        if name in recorded and seconds >= HISTORY_WINDOW_SECONDS
    }


def inline_recorded(expr: str, definitions: dict[str, str]) -> str:
    """``expr`` with every instant read of a recorded series replaced by the rule's expression.

    promtool backfills a rule by asking a Prometheus that has only the raw series, so a rule
    that reads another recorded series (job:..:slow = job:..:successes - ...) would find
    nothing. The label matchers of the replaced selector are dropped: in this TSDB every
    recorded series has job="hvs-api", the only value the rules select.
    """
    for _ in range(5):  # Records of records of records: deeper than any rule here.
        changed = expr
        for name, definition in definitions.items():
            # Not a range read (``name[1d]``, ``name{...}[1d]``): after the name, with or without
            # its braces, comes neither "[" nor "{" (or the braces would be left behind).
            selector = re.compile(rf"(?<![\w:]){re.escape(name)}(\s*\{{[^}}]*\}})?(?!\s*[\[{{])(?![\w:])")
            changed = selector.sub(lambda _, d=definition: f"({d.strip()})", changed)
        if changed == expr:
            return expr
        expr = changed
    return expr


def write_rules_snapshot(target: Path, sources: dict[str, str], max_interval: float | None) -> None:
    """Write rule files, with every group's interval capped at ``max_interval`` if given."""
    target.mkdir(parents=True)
    for name, text in sources.items():
        if max_interval is not None:
            document = yaml.safe_load(text) or {}
            for group in document.get("groups", []):
                declared = duration_seconds(group["interval"]) if "interval" in group else SCRAPE_SECONDS
                group["interval"] = duration_text(min(declared, max_interval))
            text = yaml.safe_dump(document, sort_keys=False)
        (target / name).write_text(text)


def before_sources(commit: str) -> dict[str, str]:
    listed = git("ls-tree", "--name-only", f"{commit}:{RULES_DIR}").split()
    return {name: git("show", f"{commit}:{RULES_DIR}/{name}") for name in listed if name.endswith(".yml")}


def after_sources() -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((ROOT / RULES_DIR).glob("*.yml"))}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout


# --- Prometheus -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """Debian's Prometheus on a TSDB folder, with the rule files of one folder (or none)."""

    def __init__(self, name: str, workdir: Path, data: Path, rules: Path | None):
        self.name, self.data, self.port = name, data, free_port()
        self.config = workdir / f"prometheus-{name}.yml"
        self.log_path = workdir / f"prometheus-{name}.log"
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s", "evaluation_interval": f"{SCRAPE_SECONDS}s"},
            # Only itself, so that rules about Prometheus's own health have their inputs.
            "scrape_configs": [{"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{self.port}"]}]}],
        }
        if rules is not None:
            config["rule_files"] = [str(rules / "*.yml")]
        self.config.write_text(yaml.safe_dump(config))
        self.program: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Prometheus":
        command = [
            "prometheus",
            f"--config.file={self.config}",
            f"--storage.tsdb.path={self.data}",
            f"--storage.tsdb.retention.time={RETENTION}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        ready = f"{self.url}/-/ready"
        self.program = ManagedProcess(f"Prometheus {self.name}", command, self.log_path, ready_url=ready)
        self.program.start(wait=False)
        return self

    def wait_ready(self, timeout: float = 600) -> None:
        self.program.wait_ready(timeout, interval=0.5)

    def get(self, path: str, **params) -> dict | str:
        url = f"{self.url}{path}" + (f"?{urllib.parse.urlencode(params, doseq=True)}" if params else "")
        with urllib.request.urlopen(url, timeout=120) as response:
            body = response.read().decode()
        return json.loads(body)["data"] if path.startswith("/api/") else body

    def metric(self, text: str, name: str) -> dict[str, float]:
        """The value of every series of ``name`` in a /metrics text, by its rule_group label."""
        found = {}
        for line in text.splitlines():
            if line.startswith(name + "{"):
                labels, value = line.rsplit(" ", 1)
                group = re.search(r'rule_group="([^"]*)"', labels)
                if group:
                    found[group.group(1)] = float(value)
        return found

    def stop(self) -> None:
        # Prometheus compacts and closes its TSDB on SIGTERM: on 30 days of data, give it time.
        if self.program:
            self.program.stop(timeout=120)


def blocks(data: Path) -> list[dict]:
    """meta.json of every complete block in a TSDB folder."""
    metas = []
    for meta in data.glob("*/meta.json"):
        if ".tmp" in meta.parent.name:
            continue
        try:
            metas.append(json.loads(meta.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):  # Being written or deleted meanwhile.
            continue
    return sorted(metas, key=lambda m: m["minTime"])


def overlapping(metas: list[dict]) -> bool:
    """Whether any two blocks (sorted by start) overlap in time."""
    reach = -math.inf
    for meta in metas:
        if meta["minTime"] < reach:
            return True
        reach = max(reach, meta["maxTime"])
    return False


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def promtool_backfill(source: Path, data: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [
            "promtool",
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            # A hidden flag of promtool (2.42 to 3.5): blocks of the largest range Prometheus compacts to.
            f"--max-block-duration={BLOCK_SECONDS}s",
            "--quiet",
            str(source),
            str(data),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def backfill_range(generator: Generator, folder: Path, data: Path, start: int, end: int) -> int:
    """Generate and backfill [start, end), one file per block range. promtool is single-threaded:
    two of them read the previous files while the next one is written."""
    edges = [start, *range((start // BLOCK_SECONDS + 1) * BLOCK_SECONDS, end, BLOCK_SECONDS), end]
    samples, running = 0, []
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        path = folder / f"window-{k}.om"
        samples += generator.write(path, lo, hi)
        if len(running) == 2:
            finish(*running.pop(0))
        running.append((promtool_backfill(path, data), path))
        log(
            f"  backfilling {time.strftime('%Y-%m-%d %H:%M', time.gmtime(lo))} .. "
            f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(hi))} UTC ({samples:,} samples so far)"
        )
    for process, path in running:
        finish(process, path)
    return samples


def finish(process: subprocess.Popen, path: Path) -> None:
    output = process.communicate()[0].decode()
    path.unlink()
    if process.returncode:
        sys.exit(f"promtool failed on {path.name}: {output[-2000:]}")


# --- Measuring ------------------------------------------------------------------------------


def poll_rules(server: Prometheus, seen: dict) -> None:
    """Record each group's evaluations not seen before: the rules API's figures, with the group's
    prometheus_rule_group_last_duration_seconds when its last evaluation is the same one."""
    metrics = server.get("/metrics")
    last_duration = server.metric(metrics, "prometheus_rule_group_last_duration_seconds")
    last_stamp = server.metric(metrics, "prometheus_rule_group_last_evaluation_timestamp_seconds")
    for group in server.get("/api/v1/rules")["groups"]:
        key = f"{Path(group['file']).name}:{group['name']}"
        if group["lastEvaluation"].startswith("0001-"):
            continue  # Not evaluated yet.
        evaluations = seen.setdefault(key, {"interval": group["interval"], "evaluations": {}})["evaluations"]
        if group["lastEvaluation"] in evaluations:
            continue
        metric_key = f"{group['file']};{group['name']}"
        stamp = last_stamp.get(metric_key)
        evaluations[group["lastEvaluation"]] = {
            "seconds": group["evaluationTime"],
            "metric_seconds": last_duration.get(metric_key)
            if stamp is not None and abs(stamp - parse_time(group["lastEvaluation"])) < 1
            else None,
            "rules": {f"{i}:{r['name']}": r["evaluationTime"] for i, r in enumerate(group["rules"])},
            "errors": sorted({r["lastError"] for r in group["rules"] if r.get("lastError")}),
        }


def parse_time(text: str) -> float:
    """Unix seconds of an RFC 3339 time as the rules API writes it."""
    return datetime.fromisoformat(text).timestamp()


def measured(seen: dict, key: str) -> list[dict]:
    """The evaluations of a group in time order, without the first (cold) one."""
    evaluations = seen.get(key, {}).get("evaluations", {})
    return [evaluations[stamp] for stamp in sorted(evaluations, key=parse_time)][1:]


def group_report(groups: list[Group], seen: dict, long_inputs: set[str]) -> list[dict]:
    report = []
    for group in groups:
        runs = measured(seen, group.key)
        seconds = [r["seconds"] for r in runs]
        metric = [r["metric_seconds"] for r in runs if r["metric_seconds"] is not None]
        per_rule = {}
        for rule in group.rules:
            key = f"{rule.index}:{rule.name}"
            values = [r["rules"][key] for r in runs if key in r["rules"]]
            per_rule[key] = statistics.median(values) if values else None
        long_rules = [f"{r.index}:{r.name}" for r in group.rules if r.longest_range >= LONG_WINDOW_SECONDS]
        input_rules = [f"{r.index}:{r.name}" for r in group.rules if not r.alert and r.name in long_inputs]
        report.append(
            {
                "group": group.key,
                "file": group.file,
                "declared_interval_s": group.interval,
                "evaluated_every_s": seen.get(group.key, {}).get("interval"),
                "pages": group.pages,
                "evaluations": len(runs),
                "median_s": statistics.median(seconds) if seconds else None,
                "min_s": min(seconds, default=None),
                "max_s": max(seconds, default=None),
                "metric_median_s": statistics.median(metric) if metric else None,
                "share_of_interval": statistics.median(seconds) / group.interval if seconds else None,
                "long_window_rules": long_rules,
                "long_window_median_s": sum(per_rule[k] or 0 for k in long_rules),
                "long_window_input_rules": input_rules,
                "long_window_input_median_s": sum(per_rule[k] or 0 for k in input_rules),
                "costliest_rules": sorted(
                    ((k, v) for k, v in per_rule.items() if v is not None), key=lambda kv: -kv[1]
                )[:3],
                "errors": sorted({e for r in runs for e in r["errors"]}),
            }
        )
    return report


def all_measured(sets: dict, evaluations: int) -> bool:
    return all(len(measured(seen, group.key)) >= evaluations for groups, seen, _ in sets.values() for group in groups)


# --- Main -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=float, default=float(os.environ.get("BENCH_DAYS", 30)))
    parser.add_argument("--instances", type=int, default=int(os.environ.get("BENCH_INSTANCES", 10)))
    parser.add_argument("--before", default=BEFORE_COMMIT, help="commit whose rules are BEFORE")
    parser.add_argument("--evaluations", type=int, default=3, help="per group, after its first")
    parser.add_argument(
        "--max-interval",
        type=duration_seconds,
        default=None,
        help="evaluate every group at least this often (a quick run; shares still use the declared interval)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--keep", type=Path, default=None, help="keep the TSDB and logs in this folder")
    args = parser.parse_args(argv)
    for tool in ("promtool", "prometheus"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: `make system-deps` installs it from Debian")

    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="hvs-bench-rules-", dir="/tmp"))
    servers: list[Prometheus] = []
    try:
        results = run(args, workdir, servers, started)
    finally:
        for server in servers:
            server.stop()
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for item in workdir.iterdir():
                shutil.move(str(item), args.keep / item.name)
        shutil.rmtree(workdir, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench-rules.json").write_text(json.dumps(results, indent=2) + "\n")
    print(render(results))
    return 0


def run(args, workdir: Path, servers: list, started: float) -> dict:
    sets = {
        "before": before_sources(args.before),
        "after": after_sources(),
    }
    declared = {}
    for name, sources in sets.items():
        # What the server evaluates (intervals capped for a quick run), and the files as written.
        write_rules_snapshot(workdir / f"rules-{name}", sources, args.max_interval)
        write_rules_snapshot(workdir / f"rules-{name}-declared", sources, None)
        declared[name] = load_groups(workdir / f"rules-{name}-declared")
    long_inputs = history_inputs(declared["after"])

    generator = Generator(args.instances)
    read = {n for g in declared["before"] + declared["after"] for r in g.rules for n in metric_names(r.expr)}
    recorded = {r.name for g in declared["before"] + declared["after"] for r in g.rules if not r.alert}
    # Prometheus's own metrics come from its scrape of itself; anything else read is absent.
    not_generated = sorted(n for n in read - recorded - generator.names if not n.startswith("prometheus_"))
    if not_generated:
        log(f"Read by the rules but not generated (absent in this TSDB): {', '.join(not_generated)}")

    data = workdir / "data"
    data.mkdir()
    om = workdir / "openmetrics"
    om.mkdir()
    end = int(time.time()) // SCRAPE_SECONDS * SCRAPE_SECONDS
    start = end - int(args.days * 86400) // SCRAPE_SECONDS * SCRAPE_SECONDS
    log(
        f"Generating {args.days:g} days x {args.instances} instances "
        f"({len(generator.series)} series, {len(generator.series) * (end - start) // SCRAPE_SECONDS:,} samples)"
    )
    samples = backfill_range(generator, om, data, start, end)
    generated_s = time.monotonic() - started

    log("Preparing: a Prometheus on the backfilled TSDB")
    prepare = Prometheus("prepare", workdir, data, None).start()
    servers.append(prepare)
    prepare.wait_ready()
    series = prepare.get("/api/v1/series", **{"match[]": f'{{job="{JOB}"}}', "start": start, "end": end})
    recorded_backfill = backfill_recorded(declared["after"], long_inputs, prepare, workdir, data, start, end)
    prepare_s = time.monotonic() - started - generated_s
    prepare.stop()
    servers.remove(prepare)

    # The preparation took minutes: backfill them too, so that the data ends now.
    tail_end = int(time.time()) // SCRAPE_SECONDS * SCRAPE_SECONDS + SCRAPE_SECONDS
    samples += backfill_range(generator, om, data, end, tail_end)
    metas = blocks(data)
    tsdb = {
        "generated_series": len(generator.series),
        "generated_samples": samples,
        "series_in_tsdb": len(series),
        "metric_names": sorted({s["__name__"] for s in series}),
        "blocks": len(metas),
        "samples_in_blocks": sum(m["stats"]["numSamples"] for m in metas),
        "bytes": folder_bytes(data),
        "start": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start)),
        "end": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(tail_end)),
        "not_generated_but_read": not_generated,
        "recorded_backfill": recorded_backfill,
        "backfill_seconds": round(generated_s, 1),
        "prepare_seconds": round(prepare_s, 1),
    }
    log(f"TSDB: {tsdb['samples_in_blocks']:,} samples in {len(metas)} blocks, {tsdb['bytes'] / 2**20:,.0f} MiB")

    measuring = {}
    for name in sets:
        copy = workdir / f"data-{name}"
        # Hard links: blocks are immutable, and each server gets its own folder to lock and write.
        subprocess.run(["cp", "-al", str(data), str(copy)], check=True)
        server = Prometheus(name, workdir, copy, workdir / f"rules-{name}")
        servers.append(server.start())
        measuring[name] = (declared[name], {}, server)
    for _, _, server in measuring.values():
        server.wait_ready()
    # How old the newest sample is when the measuring starts (the 5m windows need it fresh).
    newest = measuring["before"][2].get("/api/v1/query", query=f'max(timestamp(up{{job="{JOB}"}}))')["result"]
    tsdb["data_age_at_start_s"] = round(time.time() - float(newest[0]["value"][1]), 1) if newest else None
    longest = max(g.interval for groups, _, _ in measuring.values() for g in groups)
    if args.max_interval is not None:
        longest = min(longest, args.max_interval)
    deadline = time.monotonic() + (args.evaluations + 2) * longest * 1.5 + 120
    log(f"Measuring: both rule sets side by side until every group has {args.evaluations} evaluations after its first")
    while time.monotonic() < deadline:
        for _, seen, server in measuring.values():
            poll_rules(server, seen)
        if all_measured(measuring, args.evaluations):
            break
        time.sleep(2)
    report = {name: group_report(groups, seen, long_inputs) for name, (groups, seen, _) in measuring.items()}
    return {
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit(),
        "before_commit": args.before,
        "settings": {
            "days": args.days,
            "instances": args.instances,
            "evaluations": args.evaluations,
            "max_interval_s": args.max_interval,
            "scrape_interval_s": SCRAPE_SECONDS,
            "retention": RETENTION,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "prometheus": subprocess.run(
                ["prometheus", "--version"], capture_output=True, text=True
            ).stdout.splitlines()[0],
        },
        "wall_seconds": round(time.monotonic() - started, 1),
        "tsdb": tsdb,
        "groups": report,
        "checks": checks(report),
    }


def backfill_recorded(
    groups: list[Group], names: set[str], server: Prometheus, workdir: Path, data: Path, start: int, end: int
) -> dict:
    """Backfill the recorded series ``names`` over [start, end] from the server's raw data, and
    wait until the server has merged the new blocks with the raw ones."""
    if not names:
        log("  the AFTER rules read no recorded series over long windows: nothing to backfill from rules")
        return {"series_names": [], "series": 0}
    recorded = workdir / "recorded"
    document = {"groups": []}
    records = [r for g in groups for r in g.rules if not r.alert]
    # A name recorded by several rules (one per quantile, say) has no single expression to inline.
    definitions = {r.name: r.expr for r in records if [x.name for x in records].count(r.name) == 1}
    for group in groups:
        chosen = [r for r in group.rules if not r.alert and r.name in names]
        if chosen:
            source = {
                g["name"]: g
                for g in yaml.safe_load((workdir / "rules-after-declared" / group.file).read_text())["groups"]
            }[group.name]
            document["groups"].append(
                {
                    "name": group.name,
                    "interval": duration_text(group.interval),
                    "rules": [
                        {**r, "expr": inline_recorded(str(r["expr"]), definitions)}
                        for r in source["rules"]
                        if r.get("record") in names
                    ],
                }
            )
    rule_file = workdir / "backfill-rules.yml"
    rule_file.write_text(yaml.safe_dump(document, sort_keys=False))
    log(f"  backfilling {', '.join(sorted(names))} with promtool tsdb create-blocks-from rules")
    backfill = subprocess.run(
        [
            "promtool",
            "tsdb",
            "create-blocks-from",
            "rules",
            f"--max-block-duration={BLOCK_SECONDS}s",
            f"--url={server.url}",
            f"--start={start}",
            f"--end={end}",
            f"--output-dir={recorded}",
            str(rule_file),
        ],
        capture_output=True,
        text=True,
    )
    if backfill.returncode != 0:
        raise SystemExit(f"promtool could not backfill the recorded series:\n{backfill.stdout}{backfill.stderr}")
    for block in recorded.iterdir():
        if (block / "meta.json").exists():
            block.rename(data / block.name)
    # The server loads new blocks and merges overlapping ones about once a minute.
    deadline = time.monotonic() + 1800
    while time.monotonic() < deadline:
        metas = blocks(data)
        loaded = re.search(r"^prometheus_tsdb_blocks_loaded (\S+)$", server.get("/metrics"), re.M)
        if not overlapping(metas) and loaded and float(loaded.group(1)) == len(metas):
            break
        time.sleep(2)
    else:
        sys.exit("the preparing Prometheus did not merge the backfilled blocks in 30 minutes")
    # One query per name: `or` would keep only the first of series that share their labels.
    counts = [
        float(sample["value"][1])
        for name in sorted(names)
        for sample in server.get("/api/v1/query", query=f"count_over_time({name}[{int(end - start)}s])", time=end)[
            "result"
        ]
    ]
    found = server.get(
        "/api/v1/series", **{"match[]": [f'{{__name__=~"{"|".join(sorted(names))}"}}'], "start": start, "end": end}
    )
    return {
        "series_names": sorted(names),
        "series": len(found),
        "min_samples_per_series": min(counts, default=0),
    }


def commit() -> str:
    short = git("rev-parse", "--short", "HEAD").strip()
    dirty = git("status", "--porcelain").strip()
    return short + ("+uncommitted" if dirty else "")


def long_window_costs(groups: list[dict]) -> dict[str, dict]:
    """Per rule file: its long-window rules' time per evaluation, and with the recorded series
    that feed them, their evaluation time per hour (groups run at different intervals)."""
    costs: dict[str, dict] = {}
    for g in groups:
        if not g["long_window_rules"] and not g["long_window_input_rules"]:
            continue
        cost = costs.setdefault(g["file"], {"per_evaluation_s": 0.0, "per_hour_s": 0.0})
        cost["per_evaluation_s"] += g["long_window_median_s"]
        per_hour = 3600 / g["declared_interval_s"]
        cost["per_hour_s"] += (g["long_window_median_s"] + g["long_window_input_median_s"]) * per_hour
    return costs


def checks(report: dict) -> list[dict]:
    """The targets: for every rule file whose long windows read raw samples BEFORE, those rules
    at least 10 times cheaper AFTER; every AFTER group that pages under 1 % of its interval."""
    before, after = long_window_costs(report["before"]), long_window_costs(report["after"])
    found = []
    for file, old in sorted(before.items()):
        new = after.get(file, {"per_evaluation_s": 0.0, "per_hour_s": 0.0})
        for what, field in (("one evaluation", "per_evaluation_s"), ("with their inputs, per hour", "per_hour_s")):
            value = old[field] / new[field] if new[field] else math.inf
            found.append(
                {
                    "check": f"{file} long-window rules, {what}, before / after",
                    "before_s": old[field],
                    "after_s": new[field],
                    "value": value,
                    "target": f">= {TARGET_LONG_WINDOW_RATIO:g}",
                    "met": value >= TARGET_LONG_WINDOW_RATIO,
                }
            )
    for group in report["after"]:
        if group["pages"]:
            share = group["share_of_interval"]
            found.append(
                {
                    "check": f"paging group {group['group']}: share of its interval",
                    "value": share,
                    "target": f"< {TARGET_PAGING_SHARE:.0%}",
                    "met": share is not None and share < TARGET_PAGING_SHARE,
                }
            )
    return found


def ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:,.1f}"


def render(results: dict) -> str:
    t, s = results["tsdb"], results["settings"]
    lines = [
        f"Rules benchmark: {s['days']:g} days x {s['instances']} instances, {t['series_in_tsdb']} API series, "
        f"{t['samples_in_blocks']:,} samples in {t['blocks']} blocks ({t['bytes'] / 2**20:,.0f} MiB) from "
        f"{t['start']} to {t['end']} ({t['data_age_at_start_s']} s old when measuring began);"
        f" backfill {t['backfill_seconds']:.0f} s, preparation "
        f"{t['prepare_seconds']:.0f} s, whole run {results['wall_seconds']:.0f} s. {results['machine']['prometheus']}, "
        f"{results['machine']['cpus']} CPUs. BEFORE = {results['before_commit'][:12]}, AFTER = working tree "
        f"of {results['commit']}.",
    ]
    if t["recorded_backfill"]["series_names"]:
        rb = t["recorded_backfill"]
        lines.append(
            f"Backfilled from rules: {', '.join(rb['series_names'])} ({rb['series']} series, at least "
            f"{rb['min_samples_per_series']:.0f} samples each)."
        )
    else:
        lines.append("Backfilled from rules: nothing (the AFTER rules read no recorded series over long windows).")
    if s["max_interval_s"]:
        lines.append(
            f"Every group evaluated at least every {s['max_interval_s']:g} s (shares use the declared interval)."
        )
    lines += [
        "",
        f"{'set':<7} {'group':<50} {'interval':>8} {'evals':>5} {'median ms':>10} {'min-max ms':>19} "
        f"{'share':>8} {'long-window ms':>14} pages",
    ]
    for name in ("before", "after"):
        for g in results["groups"][name]:
            share = "-" if g["share_of_interval"] is None else f"{g['share_of_interval']:.2%}"
            lines.append(
                f"{name:<7} {g['group']:<50} {duration_text(g['declared_interval_s']):>8} {g['evaluations']:>5} "
                f"{ms(g['median_s']):>10} {ms(g['min_s']) + '-' + ms(g['max_s']):>19} {share:>8} "
                f"{ms(g['long_window_median_s']) if g['long_window_rules'] else '':>14} {'yes' if g['pages'] else ''}"
            )
            if g["errors"]:
                lines.append(f"        errors: {'; '.join(g['errors'])[:300]}")
    lines.append("")
    before = long_window_costs(results["groups"]["before"])
    for file, cost in sorted(long_window_costs(results["groups"]["after"]).items()):
        if file not in before:
            lines.append(
                f"info  {file} long-window rules (none BEFORE): {ms(cost['per_evaluation_s'])} ms per evaluation, "
                f"{ms(cost['per_hour_s'])} ms per hour with their inputs"
            )
    for check in results["checks"]:
        value = check["value"]
        if value is None:
            shown = "not measured"
        else:
            shown = f"{value:.2%}" if "share" in check["check"] else f"{value:.1f}x"
        extra = f" (before {ms(check['before_s'])} ms, after {ms(check['after_s'])} ms)" if "before_s" in check else ""
        lines.append(
            f"{'PASS' if check['met'] else 'FAIL'}  {check['check']}: {shown}{extra}, target {check['target']}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
