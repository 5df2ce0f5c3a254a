import pytest

from hvs_api import create_app, train
from hvs_api.reloader import ModelWatcher, alias_of
from hvs_api.state import ModelState


def test_alias_of():
    assert alias_of("models:/hvs-hazard-classifier@champion") == ("hvs-hazard-classifier", "champion")
    assert alias_of("models:/hvs-hazard-classifier/3") is None
    assert alias_of("runs:/abc/model") is None


def test_nothing_to_watch_for_a_pinned_model(champion):
    assert not ModelWatcher(ModelState(champion), None, "runs:/abc/model", 30).watching
    assert ModelWatcher(ModelState(None), None, "runs:/abc/model", 30).watching
    assert not ModelWatcher(ModelState(None), None, "runs:/abc/model", 0).watching


@pytest.fixture
def own_store(tmp_path, monkeypatch):
    """An empty store of this test's own, so promoting a champion here disturbs no other test."""
    monkeypatch.setenv("MLRUNS_DIR", str(tmp_path / "mlruns"))
    return tmp_path / "mlruns"


def quick_train():
    return train.train(samples=1500, candidates=train.CANDIDATES[:1])


def metrics_text(client) -> str:
    return client.get("/metrics").get_data(as_text=True)


def test_a_new_champion_is_picked_up_and_the_metrics_follow(own_store, payloads):
    quick_train()
    app = create_app({"TESTING": True})
    client = app.test_client()
    watcher = app.extensions["hvs_watcher"]
    assert client.post("/predict", json=payloads["Normal"]).json["prediction"]["model_version"] == "1"
    assert not watcher.check_once()  # Nothing moved yet.

    quick_train()  # Registers version 2 and moves the alias to it.
    assert watcher.check_once()
    assert client.post("/predict", json=payloads["Normal"]).json["prediction"]["model_version"] == "2"
    info = {
        line.split('model_version="')[1].split('"')[0]: line.rsplit(" ", 1)[1]
        for line in metrics_text(client).splitlines()
        if line.startswith("hvs_model_info{")
    }
    assert info == {"1": "0.0", "2": "1.0"}


def test_an_api_started_before_training_becomes_ready(own_store, payloads):
    own_store.mkdir()
    app = create_app({"TESTING": True})
    client = app.test_client()
    assert client.get("/ready").status_code == 503
    quick_train()
    assert app.extensions["hvs_watcher"].check_once()
    assert client.get("/ready").status_code == 200
    assert "hvs_model_loaded 1.0" in metrics_text(client)


def test_a_failed_check_keeps_the_current_model(own_store, payloads, monkeypatch):
    quick_train()
    app = create_app({"TESTING": True})
    monkeypatch.setenv("MLRUNS_DIR", str(own_store.parent / "missing"))
    assert not app.extensions["hvs_watcher"].check_once()
    assert app.test_client().post("/predict", json=payloads["Normal"]).status_code == 200
