"""The API under a real gunicorn with several workers, started as the image starts it."""

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import psutil
import pytest

from hvs_api.metrics_files import ARCHIVE, FOLDABLE
from tests.support.api_server import answers_of_both_workers, connections_to_each_worker, request_on
from tests.support.dockerfile import image_cmd, image_env
from tests.support.environment import run_id_of
from tests.support.metrics_text import metric_value, predict_ok, samples, values_by_label
from tests.support.paths import HAZARDOUS, NORMAL, ROOT
from tests.support.waiting import wait_for
from tests.support.web import free_port, http

pytestmark = pytest.mark.integration


def predict_many(server, normal: int, hazardous: int) -> None:
    for payload, count in ((NORMAL, normal), (HAZARDOUS, hazardous)):
        for _ in range(count):
            status, _ = http("POST", server.url + "/predict", payload)
            assert status == 200


def outcome(text: str, label: str) -> float:
    return metric_value(text, "hvs_api_prediction_outcomes_total", predicted_label_text=label)


def test_counts_are_exact_across_workers_and_a_killed_worker(trained_mlruns, start_api):
    server = start_api(trained_mlruns, workers=2)
    workers = server.worker_pids()
    assert len(workers) == 2

    # One worker predicts one Normal record, the other three Normal and two Hazardous: both count.
    with connections_to_each_worker(server) as connections:
        first, second = sorted(connections)
        assert request_on(connections[first], "POST", "/predict", NORMAL)[0] == 200
        for payload in [NORMAL] * 3 + [HAZARDOUS] * 2:
            assert request_on(connections[second], "POST", "/predict", payload)[0] == 200
    assert server.predictions_by_worker() == {first: 1, second: 5}
    sent_normal, sent_hazardous = 4, 2
    n = sent_normal + sent_hazardous
    text = server.metrics()
    assert predict_ok(text) == n
    assert (outcome(text, "Normal"), outcome(text, "Hazardous")) == (sent_normal, sent_hazardous)

    victim = server.kill_worker()
    assert victim == workers[0]
    wait_for(lambda: http("GET", server.url + "/ready")[0] == 200, 30, "readiness after the restart")

    predict_many(server, 7, 4)
    status, _ = http("POST", server.url + "/predict", {"records": [NORMAL] * 10 + [HAZARDOUS] * 5})
    assert status == 200
    text = server.metrics()
    assert predict_ok(text) == n + 11 + 1
    assert outcome(text, "Normal") == sent_normal + 7 + 10
    assert outcome(text, "Hazardous") == sent_hazardous + 4 + 5
    # The killed worker's files are gone: its live gauges dropped, its counts folded into the archive.
    assert not list(server.metrics_dir.glob(f"*_{victim}.db"))
    assert (server.metrics_dir / "counter_archive.db").exists()


def test_metrics_carry_the_users_label_shapes_and_pass_promtool(trained_mlruns, start_api):
    server = start_api(trained_mlruns, workers=2)
    # /ready is one worker's word: the other may still be asking the registry for its model, its
    # live gauges at 0 until it has one (hvs_model_loaded reads the lowest).
    wait_for(lambda: metric_value(server.metrics(), "hvs_model_loaded") == 1, 30, "both workers' models published")
    predict_many(server, 2, 2)
    # A label too, so that the feedback ledger's series are linted with the rest.
    _, body = http("POST", server.url + "/predict", NORMAL)
    assert (
        http("POST", server.url + "/feedback", {"id": json.loads(body)["prediction"]["id"], "label": "Normal"})[0]
        == 200
    )
    text = server.metrics()
    # The series the user's PromQL selects, label for label.
    assert predict_ok(text) == 5
    assert 'flask_http_request_duration_seconds_bucket{endpoint="/predict",handler="api.predict"' in text
    assert metric_value(text, "hvs_api_prediction_outcomes_total", predicted_label_text="Hazardous") == 2
    assert metric_value(text, "hvs_model_feedback_delay_seconds_count") == 1
    assert metric_value(text, "app_info", version="1.0.0") == 1
    assert metric_value(text, "hvs_model_loaded") == 1
    # Two live workers of worker_connections (api/gunicorn.conf.py) each.
    assert metric_value(text, "hvs_api_connections_capacity") == 2 * 1000

    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    problems = [line for line in (lint.stdout + lint.stderr).splitlines() if line.strip()]
    assert problems == [], problems


def test_labels_are_exact_across_workers_a_killed_worker_and_a_restart(trained_mlruns, start_api):
    server = start_api(trained_mlruns, workers=2)
    with connections_to_each_worker(server) as connections:
        first, second = sorted(connections)
        ids = []
        for pid in (first, second):
            _, body = request_on(connections[pid], "POST", "/predict", {"records": [NORMAL] * 3 + [HAZARDOUS] * 2})
            ids += [p["id"] for p in json.loads(body)["predictions"]]
        # Each worker records labels for ids the other issued.
        for pid, half in ((second, ids[:5]), (first, ids[5:8])):
            items = [{"id": i, "label": "Hazardous"} for i in half]
            assert request_on(connections[pid], "POST", "/feedback", {"feedback": items})[0] == 200
    server.kill_worker()
    wait_for(lambda: http("GET", server.url + "/ready")[0] == 200, 30, "readiness after the restart")
    # Labelled before the worker died: still refused, whichever worker answers.
    for i in ids[:8]:
        assert http("POST", server.url + "/feedback", {"id": i, "label": "Normal"})[0] == 409
    server.stop()
    server.start()
    # After a restart of the whole server, on the same ledger: the rest, once.
    assert (
        http("POST", server.url + "/feedback", {"feedback": [{"id": i, "label": "Normal"} for i in ids[8:]]})[0] == 200
    )
    assert http("POST", server.url + "/feedback", {"id": ids[9], "label": "Normal"})[0] == 409
    text = server.metrics()
    counts = {
        (labels["predicted_label_text"], labels["true_label_text"]): value
        for name, labels, value in samples(text)
        if name == "hvs_model_feedback_records_total"
    }
    # ids[:8]: 3 Normal and 2 Hazardous predicted, then 3 Normal; all labelled Hazardous. ids[8:]:
    # the second batch's 2 Hazardous, labelled Normal.
    assert counts == {("Normal", "Hazardous"): 6, ("Hazardous", "Hazardous"): 2, ("Hazardous", "Normal"): 2}


def cpu_seconds_by_thread(pid: int) -> dict[int, float]:
    """User plus system CPU time of each thread of a process (psutil reads it from /proc), in seconds."""
    return {thread.id: thread.user_time + thread.system_time for thread in psutil.Process(pid).threads()}


def test_each_worker_runs_inference_on_one_thread(trained_mlruns, start_api):
    """Two workers each starting one OpenMP thread per core would oversubscribe the CPUs.

    The threads counted are those that do the predictions' work: a gevent worker may hold
    other threads (its resolver's pool), idle ones. A gradient-boosting model is served, whose
    predict runs OpenMP loops that would spread a batch over every inference thread.
    """
    env = {"BEST_MLFLOW_RUN_ID": run_id_of(trained_mlruns, "hist_gradient_boosting_small"), "MODEL_RELOAD_SECONDS": "0"}
    server = start_api(trained_mlruns, workers=2, extra_env=env)
    before = {pid: cpu_seconds_by_thread(pid) for pid in server.worker_pids()}
    with connections_to_each_worker(server) as connections:
        for _ in range(15):
            for sock in connections.values():
                assert request_on(sock, "POST", "/predict", {"records": [NORMAL] * 1000})[0] == 200
    for pid, ticks in before.items():
        busy = {tid for tid, spent in cpu_seconds_by_thread(pid).items() if spent > ticks.get(tid, 0)}
        assert busy == {pid}, f"worker {pid}: threads {sorted(busy)} did the predictions' work, not its main one alone"


def test_a_stale_metrics_directory_is_emptied_at_start(trained_mlruns, start_api, tmp_path):
    stale = tmp_path / "metrics-0"
    stale.mkdir()
    (stale / "counter_999999.db").write_bytes(b"left over from an earlier server")
    server = start_api(trained_mlruns, workers=1)
    assert not (stale / "counter_999999.db").exists()
    assert server.metrics_dir == stale


def empty_store(trained: Path, tmp_path: Path) -> Path:
    (tmp_path / "empty-mlruns").mkdir()
    return tmp_path / "empty-mlruns"


def store_with_a_corrupt_model(trained: Path, tmp_path: Path) -> Path:
    store = shutil.copytree(trained, tmp_path / "corrupt-mlruns")
    for model_file in store.glob("artifacts/models/*/artifacts/model.skops"):
        model_file.write_bytes(b"\x00" * 64)
    return store


@pytest.mark.parametrize("make_store", [empty_store, store_with_a_corrupt_model], ids=["empty", "corrupt"])
def test_without_a_model_the_server_stays_up_and_says_how_to_train(trained_mlruns, tmp_path, start_api, make_store):
    """No model to serve, because none was trained or its file is corrupt: never served, never a
    crash loop; /predict and /ready answer 503 saying how to train, /health stays 200."""
    server = start_api(make_store(trained_mlruns, tmp_path), wait_ready=False, workers=2)
    master, workers = server.process.pid, server.worker_pids()

    status, body = http("POST", server.url + "/predict", NORMAL)
    assert status == 503 and "make train" in json.loads(body)["message"]
    assert http("GET", server.url + "/ready")[0] == 503
    assert http("GET", server.url + "/health")[0] == 200
    text = server.metrics()
    assert metric_value(text, "flask_http_request_total", endpoint="/predict", method="POST", status="503") == 1
    assert metric_value(text, "hvs_model_loaded") == 0
    assert "make train" in server.log()
    # Still the same master and workers: nothing crashed or restarted.
    assert server.process.poll() is None and server.process.pid == master and server.worker_pids() == workers


@pytest.mark.parametrize("variable", ["BEST_MLFLOW_RUN_ID", "MODEL_URI"])
def test_the_users_variables_choose_the_model(trained_mlruns, start_api, variable):
    run_id = run_id_of(trained_mlruns, "logistic_regression")
    value = run_id if variable == "BEST_MLFLOW_RUN_ID" else f"runs:/{run_id}/model"
    server = start_api(trained_mlruns, workers=1, extra_env={variable: value})
    health = json.loads(http("GET", server.url + "/health")[1])
    assert health["model"]["run_id"] == run_id
    assert health["model"]["version"] == "unregistered"


def test_a_promoted_champion_is_served_without_a_restart(tmp_path, start_api):
    """Retraining in the running lab: every worker moves to the new version, and /metrics says so."""
    mlruns = tmp_path / "mlruns"
    train = [sys.executable, "-m", "hvs_model.train", "--samples", "1500", "--candidates", "logistic_regression"]
    subprocess.run(train, env={**os.environ, "MLRUNS_DIR": str(mlruns)}, check=True, capture_output=True)
    server = start_api(mlruns, workers=2, extra_env={"MODEL_RELOAD_SECONDS": "1"})
    master, workers = server.process.pid, server.worker_pids()
    assert json.loads(http("GET", server.url + "/health")[1])["model"]["version"] == "1"

    subprocess.run(train, env={**os.environ, "MLRUNS_DIR": str(mlruns)}, check=True, capture_output=True)

    def both_workers_answer_with_version_2():
        answers = answers_of_both_workers(server, NORMAL)
        return [json.loads(body)["prediction"]["model_version"] for _, body in answers] == ["2", "2"]

    wait_for(both_workers_answer_with_version_2, 30, "both workers to serve version 2")
    text = server.metrics()
    # The dashboard's version series: version 2 up, version 1 down to 0 (not gone stale at 1).
    assert values_by_label(text, "hvs_model_info", "model_version") == {"1": 0.0, "2": 1.0}
    assert metric_value(text, "hvs_model_loaded") == 1
    assert server.process.pid == master and server.worker_pids() == workers  # No restart.


def test_workers_forked_after_a_promotion_serve_the_new_champion_from_their_first_request(tmp_path, start_api):
    """A replaced worker starts from the master's preloaded model; it must not answer with it."""
    mlruns = tmp_path / "mlruns"
    train = [sys.executable, "-m", "hvs_model.train", "--samples", "1500", "--candidates", "logistic_regression"]
    subprocess.run(train, env={**os.environ, "MLRUNS_DIR": str(mlruns)}, check=True, capture_output=True)
    # No poll during the test: only the new workers' own start can find version 2.
    server = start_api(mlruns, workers=2, extra_env={"MODEL_RELOAD_SECONDS": "3600"})
    subprocess.run(train, env={**os.environ, "MLRUNS_DIR": str(mlruns)}, check=True, capture_output=True)
    for _ in range(server.workers):
        server.kill_worker()
    # Every worker is now one forked after the promotion; their first answers must be version 2.
    answers = answers_of_both_workers(server, NORMAL)
    assert [status for status, _ in answers] == [200, 200]
    versions = [json.loads(body)["prediction"]["model_version"] for _, body in answers]
    assert versions == ["2", "2"]
    info = values_by_label(server.metrics(), "hvs_model_info", "model_version")
    assert info == {"1": 0.0, "2": 1.0}, info


def test_replaced_workers_leave_no_files_and_no_lost_counts(trained_mlruns, start_api):
    """Twenty worker deaths: the directory stays the size of the live server, every count stays."""
    server = start_api(trained_mlruns, workers=2, extra_env={"MODEL_RELOAD_SECONDS": "0"})
    sent = 0
    previous_total = 0.0
    for _ in range(20):
        predict_many(server, 2, 1)
        sent += 3
        server.kill_worker()
        total = predict_ok(server.metrics())
        assert total >= previous_total  # Never goes down, whatever a scrape catches.
        previous_total = total
    text = server.metrics()
    assert predict_ok(text) == sent
    assert outcome(text, "Normal") == 40 and outcome(text, "Hazardous") == 20
    # No file of a dead worker is left, and the archive is one file per foldable kind: the
    # directory holds the live processes' files and a fixed few more, however many workers died.
    # (A count taken at start would race the workers' first requests, which create files.)
    assert server.metric_files_of_dead_processes() == []
    archives = {p.name for p in server.metrics_dir.glob(f"*_{ARCHIVE}.db")}
    assert f"counter_{ARCHIVE}.db" in archives
    assert archives <= {f"{kind}_{ARCHIVE}.db" for kind in FOLDABLE}, archives


def test_the_real_server_names_no_version_and_no_development_server(trained_mlruns, start_api):
    server = start_api(trained_mlruns, workers=1)
    with urllib.request.urlopen(server.url + "/health", timeout=10) as response:
        software = response.headers.get("Server", "")
    assert software == "gunicorn", software


def test_a_charset_parameter_on_the_json_content_type_is_accepted(trained_mlruns, start_api):
    server = start_api(trained_mlruns, workers=1)
    for content_type in ("application/json; charset=utf-8", "application/json;charset=UTF-8"):
        request = urllib.request.Request(
            server.url + "/predict", data=json.dumps(NORMAL).encode(), headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, content_type
            assert json.loads(response.read())["prediction"]["label"] == "Normal"


def test_a_sighup_reload_replaces_the_workers_and_keeps_every_count(trained_mlruns, start_api):
    """gunicorn re-reads its config file on SIGHUP in the same master; the file must not empty
    the metrics directory then, or every count so far would vanish from /metrics."""
    server = start_api(trained_mlruns, workers=2, extra_env={"MODEL_RELOAD_SECONDS": "0"})
    predict_many(server, 3, 1)
    before = set(server.worker_pids())
    os.kill(server.process.pid, signal.SIGHUP)
    wait_for(lambda: before.isdisjoint(server.worker_pids()) and len(server.worker_pids()) == 2, 60, "new workers")
    wait_for(lambda: http("GET", server.url + "/ready")[0] == 200, 30, "readiness after the reload")
    predict_many(server, 1, 1)
    text = server.metrics()
    assert predict_ok(text) == 6
    assert (outcome(text, "Normal"), outcome(text, "Hazardous")) == (4, 2)
    assert "Hang up" in server.log() or "Handling signal: hup" in server.log()


def test_one_worker_without_a_model_reads_as_no_model_loaded(tmp_path, start_api):
    """hvs_model_loaded is the lowest of the live workers' values: while one worker still has no
    model (and answers 503), the scrape says 0, so HvsModelNotLoaded can see a partial failure."""
    mlruns = tmp_path / "mlruns"
    mlruns.mkdir()
    server = start_api(mlruns, wait_ready=False, workers=2, extra_env={"MODEL_RELOAD_SECONDS": "3600"})
    # Both workers have answered once, without a model; no poll will come during the test.
    assert sorted(status for status, _ in answers_of_both_workers(server, NORMAL)) == [503, 503]
    train = [sys.executable, "-m", "hvs_model.train", "--samples", "1500", "--candidates", "logistic_regression"]
    subprocess.run(train, env={**os.environ, "MLRUNS_DIR": str(mlruns)}, check=True, capture_output=True)
    server.kill_worker()
    # The new worker finds the champion before its first answer; the other one still has none.
    assert sorted(status for status, _ in answers_of_both_workers(server, NORMAL)) == [200, 503]
    assert metric_value(server.metrics(), "hvs_model_loaded") == 0


@pytest.mark.parametrize("variable, value", [("WORKERS", "two"), ("WORKER_CLASS", "eventlet"), ("TIMEOUT", "-5")])
def test_a_malformed_setting_stops_the_server_before_it_binds_naming_the_variable(tmp_path, variable, value):
    env = {**os.environ, **image_env(), "MLRUNS_DIR": str(tmp_path), "PORT": str(free_port()), variable: value}
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    result = subprocess.run(image_cmd(), cwd=ROOT / "api", env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert f"SettingError: {variable}={value!r}: must be" in result.stderr
