"""Hostile input, faults under load and restarts, against real processes on 127.0.0.1, bounded in
count and time. Each test records its figures (results/reliability.json, `make reliability`)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.lab import Lab, locust
from tests.support import NORMAL, http, metric_value, predict_ok, wait_for

pytestmark = pytest.mark.reliability
FUZZ_CASES = 150


def test_fuzzing_from_the_openapi_description(trained_mlruns, start_api, figures, tmp_path):
    """Schemathesis: generated and mutated requests from /openapi.json, every check on."""
    server = start_api(trained_mlruns, workers=2)
    report = tmp_path / "fuzz.json"
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
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
    summary = re.search(r"(\d+) generated, (\d+) (passed|found)", result.stdout)
    assert result.returncode == 0, result.stdout[-4000:]
    generated = int(summary.group(1))
    assert generated >= 100
    text = server.metrics()
    server_errors = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("flask_http_request_total{") and 'status="5' in line
    )
    assert server_errors == 0
    figures["fuzzing"] = {"cases": generated, "failures": 0, "server_errors": int(server_errors)}


def test_a_worker_killed_under_load_loses_only_its_requests(trained_mlruns, start_api, figures, tmp_path):
    server = start_api(trained_mlruns, workers=2, extra_env={"MODEL_RELOAD_SECONDS": "0"})
    load = locust(server.url, "SteadyUser", "20s", tmp_path / "locust.log", users=8, HVS_MAX_FAILURE_RATIO="1")
    totals, killed = [], []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        totals.append(predict_ok(server.metrics()))
        if len(totals) == 10:
            victim = server.worker_pids()[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        time.sleep(0.5)
    load.popen.wait(timeout=60)
    load.stop()
    log = (tmp_path / "locust.log").read_text()
    aggregated = re.search(r"Aggregated\s+(\d+)\s+(\d+)\(", log)
    requests, failures = int(aggregated.group(1)), int(aggregated.group(2))
    assert killed and killed[0] not in server.worker_pids()
    assert totals == sorted(totals), "a counter went down"
    # Only what the killed worker had in hand can fail: at most one request per user.
    assert failures <= 8, log[-3000:]
    figures["worker_killed_under_load"] = {"requests": requests, "failed": failures, "workers_killed": 1}


def test_worker_recycling_keeps_the_directory_and_the_scrape_flat(trained_mlruns, start_api, figures):
    server = start_api(trained_mlruns, workers=2, extra_env={"MAX_REQUESTS": "25", "MODEL_RELOAD_SECONDS": "0"})
    first_workers = set(server.worker_pids())
    started = time.perf_counter()
    server.metrics()
    scrape_before = time.perf_counter() - started
    # Two clients at once keep both workers busy: one client's sequential requests may all
    # be accepted by the same worker, leaving the other one never recycled.
    statuses: list[int] = []

    def client():
        statuses.extend(http("POST", server.url + "/predict", NORMAL)[0] for _ in range(300))

    clients = [threading.Thread(target=client) for _ in range(2)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=120)
    assert statuses == [200] * 600
    restarts = len(first_workers - set(server.worker_pids()))

    def only_live_files():
        # A worker that has just served its last request is folded once the master reaps it.
        if server.metric_files_of_dead_processes():
            return None
        return sorted(p.name for p in server.metrics_dir.glob("*.db"))

    files = wait_for(only_live_files, 15, "the last recycled worker to be folded")
    started = time.perf_counter()
    text = server.metrics()
    scrape_after = time.perf_counter() - started
    assert predict_ok(server.metrics()) == 600
    assert metric_value(text, "hvs_api_prediction_outcomes_total", predicted_label_text="Normal") == 600
    assert restarts == 2
    recycled = int(600 / 25)  # About: jitter moves each worker's limit by up to 10 %.
    figures["worker_recycling"] = {
        "requests": 600,
        "max_requests": 25,
        "workers_recycled_about": recycled,
        "files_after": len(files),
        "scrape_ms_before": round(scrape_before * 1000, 2),
        "scrape_ms_after": round(scrape_after * 1000, 2),
    }


def test_sigterm_lets_in_flight_requests_finish(trained_mlruns, start_api, figures):
    # Big batches take long enough to be in flight when the signal arrives.
    env = {"MAX_BATCH_RECORDS": "20000", "MAX_BODY_BYTES": str(16 * 1024 * 1024), "MODEL_RELOAD_SECONDS": "0"}
    server = start_api(trained_mlruns, workers=2, extra_env=env)
    body = {"records": [NORMAL] * 20000}
    results = []

    def send():
        results.append(http("POST", server.url + "/predict", body, timeout=60)[0])

    threads = [threading.Thread(target=send) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    os.kill(server.process.pid, signal.SIGTERM)
    for thread in threads:
        thread.join(timeout=60)
    assert results == [200, 200]
    assert server.process.wait(timeout=30) == 0
    figures["graceful_shutdown"] = {"in_flight": 2, "completed": results.count(200)}


def test_a_corrupt_model_is_never_served(trained_mlruns, start_api, tmp_path):
    store = tmp_path / "mlruns"
    shutil.copytree(trained_mlruns, store)
    for model_file in store.glob("artifacts/models/*/artifacts/model.skops"):
        model_file.write_bytes(b"\x00" * 64)
    server = start_api(store, wait_ready=False, workers=1)
    status, body = http("POST", server.url + "/predict", NORMAL)
    assert status == 503 and "could not load model" in json.loads(body)["message"]
    assert http("GET", server.url + "/ready")[0] == 503
    assert "no model loaded" in server.log()


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

        restarted = lab.restart("prometheus", "/-/ready")
        restarted += lab.restart("alertmanager", "/-/ready")
        after = float(lab.query(query)["result"][0]["value"][1])
        assert after == before
        silences = json.loads(http("GET", am + "/api/v2/silences")[1])
        assert [s["id"] for s in silences if s["status"]["state"] == "active"] == [silence_id]
        figures["monitoring_restarts"] = {
            "restarts": restarted,
            "samples_before": before,
            "samples_after": after,
            "silences_kept": 1,
        }
    finally:
        lab.stop()
