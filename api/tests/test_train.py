import os
import shutil
import subprocess
import sys

import hvs_store as store
import pytest
from hvs_model import train
from hvs_model.train import Result, pick_champion
from hvs_settings import ApiSettings

from hvs_api import model
from tests.support.environment import modules_of_the_api_loaded_by


def result(name, f1, latency):
    return Result(train.Candidate(name, {}, lambda seed: None), name, f"runs:/{name}/model", f1, latency)


def test_best_f1_wins_when_nothing_close_is_faster():
    chosen = pick_champion([result("a", 0.90, 1.0), result("b", 0.95, 2.0), result("c", 0.80, 0.1)])
    assert chosen.run_id == "b"


def test_faster_model_within_tolerance_wins():
    chosen = pick_champion([result("slow", 0.950, 3.0), result("fast", 0.945, 0.3), result("fastest", 0.90, 0.1)])
    assert chosen.run_id == "fast"


def test_training_logs_every_candidate_and_registers_the_champion(session_store):
    client = store.client()
    experiment = client.get_experiment_by_name(store.EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert {r.info.run_name for r in runs} == {c.name for c in train.CANDIDATES}
    for run in runs:
        for key in ("f1_hazardous", "roc_auc", "recall_hazardous", "single_record_latency_ms", store.BASELINE_METRIC):
            assert key in run.data.metrics, key
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert "confusion_matrix.json" in artifacts
    champion = client.get_model_version_by_alias(store.MODEL_NAME, store.CHAMPION_ALIAS)
    best = max(runs, key=lambda r: r.data.metrics["f1_hazardous"]).data.metrics["f1_hazardous"]
    chosen = client.get_run(champion.run_id).data.metrics["f1_hazardous"]
    assert chosen >= best - train.F1_TOLERANCE
    assert experiment.artifact_location == store.ARTIFACT_ROOT


def test_a_store_holds_no_path_to_where_it_was_written_and_loads_elsewhere(mlruns, tmp_path, use_store):
    """A store written in one place loads from another, as between the host and /app/mlruns."""
    moved = tmp_path / "elsewhere" / "mlruns"
    shutil.copytree(mlruns, moved)
    # The session's store stays where it was written (other tests read it), so rather than
    # renaming it away, check that nothing in the copy names that place and so could read from it.
    written_at = str(mlruns).encode()
    assert [path for path in moved.rglob("*") if path.is_file() and written_at in path.read_bytes()] == []
    use_store(moved)
    loaded = model.load(ApiSettings().model_uri_to_serve)
    assert loaded.version == "1"
    assert loaded.hazard_probability([[50.0, 3.0, 200.0, 40.0, 100.0]])[0] < 0.5


def test_main_prints_the_best_run_id(tmp_path, use_store, capsys):
    use_store(tmp_path / "mlruns")
    train.main(["--samples", "1000", "--candidates", train.CANDIDATES[0].name])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("BEST_MLFLOW_RUN_ID=")
    run_id = last.split("=", 1)[1]
    assert store.client().get_run(run_id).info.run_name == train.CANDIDATES[0].name


def test_training_refuses_an_empty_dataset(tmp_path, use_store):
    use_store(tmp_path / "mlruns")
    with pytest.raises(ValueError):
        train.train(samples=0)


def test_if_missing_trains_once(tmp_path, use_store, capsys):
    use_store(tmp_path / "mlruns")
    args = ["--samples", "1000", "--candidates", train.CANDIDATES[0].name, "--if-missing"]
    train.main(args)
    first = capsys.readouterr().out
    assert "BEST_MLFLOW_RUN_ID=" in first
    train.main(args)
    second = capsys.readouterr().out
    assert "not training" in second and "BEST_MLFLOW_RUN_ID=" not in second
    assert str(train.registered_champion().version) == "1"


def test_training_and_the_generator_load_nothing_of_the_api():
    """The trainer and the load tests import hvs_model alone: no Flask, no exporter, no hvs_api."""
    assert modules_of_the_api_loaded_by("import hvs_model.train, hvs_model.readings") == ["sklearn"]


def test_the_earlier_training_command_still_trains(tmp_path):
    """``python -m hvs_api.train`` (the command of earlier versions of the lab) runs the same step."""
    env = {**os.environ, "MLRUNS_DIR": str(tmp_path / "mlruns")}
    for module in ("hvs_api.train", "hvs_model.train"):
        result = subprocess.run([sys.executable, "-m", module, "--help"], env=env, capture_output=True, text=True)
        assert result.returncode == 0 and "--samples" in result.stdout, result.stderr
