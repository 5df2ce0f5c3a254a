"""Hostile input, faults under load and restarts, against real processes on 127.0.0.1, bounded in
count and time. Each test records its figures (results/reliability.json, `make reliability`)."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.lab import Lab, locust_totals, traffic
from tests.support.api_server import connections_to_each_worker, one_worker_held
from tests.support.metrics_text import metric_value, predict_ok, samples
from tests.support.paths import NORMAL
from tests.support.waiting import wait_for
from tests.support.web import answers_200, http

pytestmark = [pytest.mark.integration, pytest.mark.reliability]
FUZZ_CASES = 150
REQUESTS = "flask_http_request_total"


def test_fuzzing_from_the_openapi_description(trained_mlruns, start_api, figures, tmp_path):
    """Schemathesis: generated and mutated requests from /openapi.json, every check on."""
    server = start_api(trained_mlruns, workers=2)
    report = tmp_path / "fuzz.json"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(FUZZ_CASES),
            "--seed",
            "20261127",
            "--report",
            "ndjson",
            "--report-ndjson-path",
            str(report),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    generated = int(re.search(r"(\d+) generated", result.stdout).group(1))
    assert generated >= 100
    answered = [(labels["status"], value) for name, labels, value in samples(server.metrics()) if name == REQUESTS]
    server_errors = sum(value for status, value in answered if status.startswith("5"))
    assert server_errors == 0, answered
    figures["fuzzing"] = {
        "cases_generated": generated,
        "requests_answered": int(sum(value for _, value in answered)),
        "server_errors": int(server_errors),
    }


def predictions_until(server, target: float, timeout: float = 60) -> list[float]:
    """The /predict count read from /metrics every 0.2 s until it reaches ``target``: every
    reading, in order, so that the caller can check that the counter never went down."""
    readings = [predict_ok(server.metrics())]
    deadline = time.monotonic() + timeout
    while readings[-1] < target:
        if time.monotonic() > deadline:
            raise TimeoutError(f"/predict count still {readings[-1]} after {timeout} s, waiting for {target}")
        time.sleep(0.2)
        readings.append(predict_ok(server.metrics()))
    return readings


def test_a_worker_killed_under_load_loses_only_the_requests_on_its_connections(
    trained_mlruns, start_api, figures, tmp_path
):
    """One worker holds a half-sent request while Locust keeps both busy; SIGKILL on it costs the
    requests on that worker's connections (a gevent worker serves many) and no others, no
    counter goes down, and the replacement serves."""
    server = start_api(trained_mlruns, workers=2, extra_env={"MODEL_RELOAD_SECONDS": "0"})
    log = tmp_path / "locust.log"
    totals = []
    users = 8
    with traffic(server.url, "SteadyUser", log, users=users, HVS_MAX_P95_MS="inf"):
        # Both workers have counts of their own first, so the victim's must survive its death.
        wait_for(lambda: min(server.predictions_by_worker().values()) >= 10, 60, "both workers to predict")
        with one_worker_held(server.port, NORMAL, server) as held:
            victim_counted = server.predictions_by_worker()[held.worker]
            totals += predictions_until(server, 50)
            # Locust's connections on the victim, beside the held one: the most it may lose.
            victim_connections = server.connections_held_by(held.worker) - 1
            server.kill_worker(held.worker)
        # The replacement serves too: traffic goes on past the kill.
        after_kill = totals[-1]
        totals += predictions_until(server, after_kill + 50)
    requests, failures = locust_totals(log)
    assert held.status == 0 and held.error is not None, (held.status, held.body)
    assert 0 <= victim_connections <= users, victim_connections
    assert failures <= victim_connections, log.read_text()[-3000:]
    assert victim_counted >= 10 and totals == sorted(totals), "a counter went down"
    # The master counted what died with the worker: at least the held request, at most every
    # request on its connections; and the worker itself, once.
    text = server.metrics()
    aborted = metric_value(text, "hvs_api_aborted_requests_total")
    assert 1 <= aborted <= victim_connections + 1, aborted
    assert metric_value(text, "hvs_api_aborted_workers_total") == 1
    figures["worker_killed_under_load"] = {
        "aborted_requests_counted": aborted,
        "locust_requests": requests,
        "locust_failures": failures,
        "locust_connections_on_the_victim": victim_connections,
        "workers_killed": 1,
        "held_requests_lost": int(held.error is not None),
    }


def test_worker_recycling_keeps_the_directory_to_live_workers_and_every_count(trained_mlruns, start_api, figures):
    """Workers recycled by MAX_REQUESTS leave no files of their own and lose no count. (What a
    scrape costs after many replacements is a `make bench` figure: a timing here would be noise.)"""
    server = start_api(trained_mlruns, workers=2, extra_env={"MAX_REQUESTS": "25", "MODEL_RELOAD_SECONDS": "0"})
    first_workers = set(server.worker_pids())
    # Two clients at once, in rounds of 25 requests each, until every first worker has been
    # recycled (at most 3,000 requests or 90 s). Which worker accepts a connection is the
    # kernel's and gevent's choice: a gevent worker accepts greedily, so a fixed number of
    # requests could leave one worker with fewer than MAX_REQUESTS (it happened, once the
    # model call got faster).
    statuses: list[int] = []
    deadline = time.monotonic() + 90

    def first_workers_remain() -> bool:
        return not first_workers.isdisjoint(server.worker_pids())

    def client():
        while first_workers_remain() and len(statuses) < 3_000 and time.monotonic() < deadline:
            statuses.extend(http("POST", server.url + "/predict", NORMAL)[0] for _ in range(25))

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=120)
    assert statuses and statuses == [200] * len(statuses)
    assert not first_workers_remain(), f"a first worker was never recycled in {len(statuses)} requests"

    def only_live_files():
        # A worker that has just served its last request is folded once the master reaps it.
        if server.metric_files_of_dead_processes():
            return None
        return sorted(p.name for p in server.metrics_dir.glob("*.db"))

    # The directory holds only the live processes' files and the archive (or this times out).
    files = wait_for(only_live_files, 15, "the last recycled worker to be folded")
    text = server.metrics()
    assert predict_ok(text) == len(statuses)
    assert metric_value(text, "hvs_api_prediction_outcomes_total", predicted_label_text="Normal") == len(statuses)
    # A recycled worker finishes its requests first: nothing was aborted.
    assert metric_value(text, "hvs_api_aborted_requests_total") == 0
    assert metric_value(text, "hvs_api_aborted_workers_total") == 0
    # gunicorn logs each worker it boots: the first ones, then one per recycled worker.
    recycled = server.log().count("Booting worker with pid") - len(first_workers)
    figures["worker_recycling"] = {
        "requests_answered_200": statuses.count(200),
        "max_requests_setting": 25,
        "workers_recycled": recycled,
        "files_after": len(files),
    }


def test_sigterm_lets_the_requests_workers_hold_finish(trained_mlruns, start_api, figures):
    """Both workers sit reading a request when the master gets SIGTERM; both requests complete."""
    server = start_api(trained_mlruns, workers=2, extra_env={"MODEL_RELOAD_SECONDS": "0"})
    with (
        connections_to_each_worker(server) as connections,
        one_worker_held(server.port, NORMAL, server, sock=min(connections.items())[1]) as first,
        one_worker_held(server.port, NORMAL, server, sock=max(connections.items())[1]) as second,
    ):
        in_flight = len({first.worker, second.worker})
        assert in_flight == 2
        os.kill(server.process.pid, signal.SIGTERM)
        # The master has told the workers to finish: it no longer accepts connections.
        wait_for(lambda: not answers_200(server.url + "/health"), 10, "the listener to close")
    results = [first.status, second.status]
    assert results == [200, 200], (first.error, second.error)
    assert server.process.wait(timeout=30) == 0
    figures["graceful_shutdown"] = {"in_flight": in_flight, "completed": results.count(200)}


def test_prometheus_and_alertmanager_keep_their_state_across_restarts(trained_mlruns, start_api, tmp_path, figures):
    api = start_api(trained_mlruns, workers=1)
    lab = Lab(tmp_path / "lab", api.port)
    lab.workdir.mkdir()
    lab.start()
    try:
        wait_for(lambda: lab.has_data('count_over_time(up{job="hvs-api"}[5m]) > 5'), 60, "some samples")
        at = time.time()
        query = f'count_over_time(up{{job="hvs-api"}}[5m] @ {at:.3f})'
        before = float(lab.query(query)["result"][0]["value"][1])

        silence = {
            "matchers": [{"name": "alertname", "value": "HvsApiDown", "isRegex": False}],
            "startsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "endsAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600)),
            "createdBy": "test",
            "comment": "kept across a restart",
        }
        am = f"http://127.0.0.1:{lab.ports['alertmanager']}"
        status, body = http("POST", am + "/api/v2/silences", silence)
        assert status == 200
        silence_id = json.loads(body)["silenceID"]

        pids = [lab.restart("prometheus"), lab.restart("alertmanager")]
        restarted = sum(old != new for old, new in pids)
        assert restarted == 2, pids
        after = float(lab.query(query)["result"][0]["value"][1])
        assert after == before
        silences = json.loads(http("GET", am + "/api/v2/silences")[1])
        kept = [s["id"] for s in silences if s["status"]["state"] == "active"]
        assert kept == [silence_id]
        figures["monitoring_restarts"] = {
            "restarts": restarted,
            "samples_before": before,
            "samples_after": after,
            "silences_kept": len(kept),
        }
    finally:
        lab.stop()
