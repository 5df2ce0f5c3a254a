"""`make bench-rules` at a tiny size: the pipeline still backfills, measures both rule sets and
writes its figures. Speeds are the benchmark's to report, not this test's to judge."""

import json
import subprocess
import sys

import pytest
import yaml

from loadtest.bench_rules import BEFORE_COMMIT, JOB, RULES_DIR, Generator, history_inputs, inline_recorded, load_groups
from tests.support.paths import ROOT

pytestmark = pytest.mark.integration

DAYS, INSTANCES = 1, 2


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One tiny run of the bench, its TSDB and logs kept; returns (results, kept folder)."""
    folder = tmp_path_factory.mktemp("bench-rules")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "loadtest.bench_rules",
            *("--days", str(DAYS), "--instances", str(INSTANCES), "--evaluations", "1"),
            # Groups with a 5-minute interval would take minutes to be evaluated twice.
            *("--max-interval", "5s"),
            *("--out", str(folder), "--keep", str(folder / "kept")),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return json.loads((folder / "bench-rules.json").read_text()), folder / "kept"


def test_inlining_replaces_instant_reads_of_a_record_and_leaves_its_range_reads():
    """promtool backfills each rule from raw series alone: an instant read of a record is
    replaced by its expression, a range read (a tile's ``last_over_time(mark{...}[1d])``) is
    left whole, its braces too, or the backfill fails to parse."""
    expr = 'a:b:sum{job="x"} - last_over_time(a:b:sum{job="x"}[1d]) + a:b:sum[5m] + a:b:sum'
    assert inline_recorded(expr, {"a:b:sum": "sum(q)"}) == (
        '(sum(q)) - last_over_time(a:b:sum{job="x"}[1d]) + a:b:sum[5m] + (sum(q))'
    )


def group_keys(rule_files: dict[str, str]) -> set[str]:
    return {f"{name}:{g['name']}" for name, text in rule_files.items() for g in yaml.safe_load(text)["groups"]}


def test_the_tsdb_holds_every_generated_api_series_over_the_whole_period(bench):
    results, kept = bench
    api_series = [s for s in Generator(INSTANCES).series if s.labels["job"] == JOB]
    assert results["tsdb"]["series_in_tsdb"] == len(api_series)
    assert {s.name for s in api_series} <= set(results["tsdb"]["metric_names"])
    assert "flask_http_request_duration_seconds_bucket" in results["tsdb"]["metric_names"]
    metas = [json.loads(m.read_text()) for m in (kept / "data").glob("*/meta.json")]
    assert sum(m["stats"]["numSamples"] for m in metas) == results["tsdb"]["samples_in_blocks"]
    covered = (max(m["maxTime"] for m in metas) - min(m["minTime"] for m in metas)) / 1000
    assert covered >= DAYS * 86400 - 60
    assert results["tsdb"]["samples_in_blocks"] >= results["tsdb"]["generated_samples"]
    # The data ends when the measuring starts, not when the preparation (a minute or more) began.
    assert results["tsdb"]["data_age_at_start_s"] < 45


def test_the_recorded_inputs_of_long_windows_are_backfilled_over_the_whole_period(bench):
    results, _ = bench
    inputs = history_inputs(load_groups(ROOT / RULES_DIR))
    backfilled = results["tsdb"]["recorded_backfill"]
    assert set(backfilled["series_names"]) == inputs
    if inputs:
        assert backfilled["series"] >= len(inputs)
        # One recorded sample every 5 minutes over the day, give or take the alignment.
        assert backfilled["min_samples_per_series"] >= DAYS * 288 - 2


def test_every_group_of_both_rule_sets_was_evaluated(bench):
    results, _ = bench
    before = {
        name: subprocess.run(
            ["git", "show", f"{BEFORE_COMMIT}:{RULES_DIR}/{name}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
        for name in subprocess.run(
            ["git", "ls-tree", "--name-only", f"{BEFORE_COMMIT}:{RULES_DIR}"],
            cwd=ROOT,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
    }
    after = {p.name: p.read_text() for p in (ROOT / RULES_DIR).glob("*.yml")}
    for name, files in (("before", before), ("after", after)):
        measured = {g["group"]: g for g in results["groups"][name]}
        assert set(measured) == group_keys(files), name
        for key, group in measured.items():
            assert group["evaluations"] >= 1 and group["median_s"] is not None, (name, key)
            assert group["errors"] == [], (name, key)


def test_the_figures_name_their_commit_and_time_and_every_target(bench):
    results, _ = bench
    assert results["before_commit"] == BEFORE_COMMIT
    assert results["commit"] and results["finished"]
    assert results["settings"]["days"] == DAYS and results["settings"]["instances"] == INSTANCES
    checks = [c["check"] for c in results["checks"]]
    assert any("long-window" in c for c in checks)
    paging = [g["group"] for g in results["groups"]["after"] if g["pages"]]
    assert all(any(g in c for c in checks) for g in paging)
