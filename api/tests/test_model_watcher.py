import pytest
from hvs_model import train

from hvs_api.extensions import ModelState
from hvs_api.model_watcher import ModelWatcher, alias_of
from tests.support.metrics_text import metric_value, values_by_label


def test_alias_of():
    assert alias_of("models:/hvs-hazard-classifier@champion") == ("hvs-hazard-classifier", "champion")
    assert alias_of("models:/hvs-hazard-classifier/3") is None
    assert alias_of("runs:/abc/model") is None


def test_nothing_to_watch_for_a_pinned_model(champion):
    assert not ModelWatcher(ModelState(champion), None, "runs:/abc/model", 30).watching
    assert ModelWatcher(ModelState(None), None, "runs:/abc/model", 30).watching
    assert not ModelWatcher(ModelState(None), None, "runs:/abc/model", 0).watching


@pytest.fixture
def own_store(tmp_path, use_store):
    """An empty store of this test's own, so promoting a champion here disturbs no other test."""
    return use_store(tmp_path / "mlruns")


def quick_train():
    return train.train(samples=1500, candidates=train.CANDIDATES[:1])


def metrics_text(client) -> str:
    return client.get("/metrics").get_data(as_text=True)


def test_a_new_champion_is_picked_up_and_the_metrics_follow(own_store, make_app, payloads):
    quick_train()
    app = make_app({"TESTING": True})
    client = app.test_client()
    watcher = app.extensions["hvs_watcher"]
    assert client.post("/predict", json=payloads["Normal"]).json["prediction"]["model_version"] == "1"
    assert not watcher.check_once()  # Nothing moved yet.

    quick_train()  # Registers version 2 and moves the alias to it.
    assert watcher.check_once()
    assert client.post("/predict", json=payloads["Normal"]).json["prediction"]["model_version"] == "2"
    assert values_by_label(metrics_text(client), "hvs_model_info", "model_version") == {"1": 0.0, "2": 1.0}


def test_an_api_started_before_training_becomes_ready(own_store, make_app):
    own_store.mkdir()
    app = make_app({"TESTING": True})
    client = app.test_client()
    assert client.get("/ready").status_code == 503
    quick_train()
    assert app.extensions["hvs_watcher"].check_once()
    assert client.get("/ready").status_code == 200
    assert metric_value(metrics_text(client), "hvs_model_loaded") == 1.0


def test_a_failed_check_keeps_the_current_model(own_store, use_store, make_app, payloads):
    quick_train()
    app = make_app({"TESTING": True})
    use_store(own_store.parent / "missing")
    assert not app.extensions["hvs_watcher"].check_once()
    assert app.test_client().post("/predict", json=payloads["Normal"]).status_code == 200
