"""The challenger: the runner-up of training, scored beside the champion, never answering."""

import dataclasses

import hvs_store as store
import numpy as np
import pytest
from hvs_model import readings, train
from hvs_model.features import LABELS

from hvs_api import create_app
from hvs_api.extensions import model_state
from tests.support.metrics_text import metric_value, samples


def metrics(client) -> str:
    return client.get("/metrics").get_data(as_text=True)


def records(n: int, seed: int) -> tuple[list[dict], list[str]]:
    pairs = readings.labelled_records(n, seed=seed, drift=0.5)
    return [r for r, _ in pairs], [label for _, label in pairs]


def without_ids(body: dict) -> dict:
    return {**body, "predictions": [{k: v for k, v in p.items() if k != "id"} for p in body["predictions"]]}


def test_training_registers_the_runner_up_as_challenger(session_store, champion, challenger):
    client = store.client()
    runs = {
        r.info.run_id: r for r in client.search_runs([client.get_experiment_by_name(store.EXPERIMENT).experiment_id])
    }
    assert challenger.run_id != champion.run_id and challenger.version != champion.version
    others = [
        train.Result(None, run_id, "", r.data.metrics["f1_hazardous"], r.data.metrics["single_record_latency_ms"])
        for run_id, r in runs.items()
        if run_id != champion.run_id
    ]
    assert train.pick_champion(others).run_id == challenger.run_id


def test_a_training_of_one_candidate_leaves_no_challenger_behind(tmp_path, use_store):
    use_store(tmp_path / "mlruns")
    train.train(samples=1500, candidates=train.CANDIDATES[:2])
    assert str(store.client().get_model_version_by_alias(store.MODEL_NAME, store.CHALLENGER_ALIAS).version) == "2"
    train.train(samples=1500, candidates=train.CANDIDATES[:1])
    with pytest.raises(Exception, match="alias"):
        store.client().get_model_version_by_alias(store.MODEL_NAME, store.CHALLENGER_ALIAS)


def test_the_challenger_changes_no_answer_and_its_agreement_is_counted(champion, challenger, make_app):
    alone = make_app({"TESTING": True, "MODEL": champion}).test_client()
    beside = make_app(
        {"TESTING": True, "MODEL": champion, "CHALLENGER": challenger, "CHALLENGER_SHARE": 1.0}
    ).test_client()
    batch, _ = records(300, seed=31)
    answers = [c.post("/predict", json={"records": batch}).json for c in (alone, beside)]
    assert without_ids(answers[0]) == without_ids(answers[1])
    matrix = np.array([[r[name] for name in readings.FEATURE_NAMES] for r in batch])
    ours = champion.hazard_probability(matrix) > 0.5
    theirs = challenger.hazard_probability(matrix) > 0.5
    text = metrics(beside)
    assert metric_value(text, "hvs_model_challenger_scored_records_total") == 300
    assert metric_value(text, "hvs_model_challenger_agreed_records_total") == np.count_nonzero(ours == theirs)
    info = {labels["model_version"]: v for n, labels, v in samples(text) if n == "hvs_model_challenger_info"}
    assert info == {challenger.version: 1}
    assert metric_value(metrics(alone), "hvs_model_challenger_scored_records_total") == 0


def test_labels_score_the_challenger_beside_the_champion(champion, challenger, make_app):
    client = make_app(
        {"TESTING": True, "MODEL": champion, "CHALLENGER": challenger, "CHALLENGER_SHARE": 1.0}
    ).test_client()
    batch, truth = records(200, seed=32)
    predictions = client.post("/predict", json={"records": batch}).json["predictions"]
    items = [{"id": p["id"], "label": t} for p, t in zip(predictions, truth, strict=True)]
    assert client.post("/feedback", json={"feedback": items}).status_code == 200
    matrix = np.array([[r[name] for name in readings.FEATURE_NAMES] for r in batch])
    theirs = (challenger.hazard_probability(matrix) > 0.5).astype(int)
    expected: dict[tuple, float] = {}
    for label_id, true_label in zip(theirs.tolist(), truth, strict=True):
        key = (challenger.version, LABELS[label_id], true_label)
        expected[key] = expected.get(key, 0) + 1
    found = {
        (labels["model_version"], labels["predicted_label_text"], labels["true_label_text"]): value
        for name, labels, value in samples(metrics(client))
        if name == "hvs_model_feedback_records_total" and labels["model_role"] == "challenger"
    }
    assert found == expected


def test_a_share_of_records_is_scored(champion, challenger, make_app):
    client = make_app(
        {"TESTING": True, "MODEL": champion, "CHALLENGER": challenger, "CHALLENGER_SHARE": 0.25}
    ).test_client()
    batch, _ = records(1000, seed=33)
    assert client.post("/predict", json={"records": batch}).status_code == 200
    scored = metric_value(metrics(client), "hvs_model_challenger_scored_records_total")
    # 250 expected; five standard deviations (about 14 each) either side.
    assert 180 < scored < 320


def test_a_challenger_that_fails_costs_the_client_nothing(champion, challenger, make_app, payloads):
    def broken(_x):
        raise RuntimeError("the challenger is broken")

    failing = dataclasses.replace(challenger, runtime=dataclasses.replace(challenger.runtime, predict=broken))
    client = make_app({"TESTING": True, "MODEL": champion, "CHALLENGER": failing}).test_client()
    response = client.post("/predict", json=payloads["Hazardous"])
    assert response.status_code == 200 and response.json["prediction"]["label"] == "Hazardous"
    assert metric_value(metrics(client), "hvs_model_challenger_scored_records_total") == 0


def test_the_api_loads_the_challenger_alias_beside_the_champion(session_store, challenger):
    app = create_app(
        {
            "TESTING": True,
            "CHALLENGER_SHARE": 1.0,
            "FEEDBACK_DB": str(session_store.parent / "challenger-feedback.sqlite"),
        }
    )
    try:
        assert model_state_of(app).challenger.version == challenger.version
        client = app.test_client()
        assert client.post("/predict", json={"records": records(10, seed=34)[0]}).status_code == 200
        assert metric_value(metrics(client), "hvs_model_challenger_scored_records_total") == 10
    finally:
        app.extensions["hvs_watcher"].stop()
        app.extensions["hvs_challenger_watcher"].stop()


def test_a_model_chosen_by_uri_has_no_challenger(session_store, champion, monkeypatch):
    monkeypatch.setenv("MODEL_URI", champion.uri.replace("@champion", f"/{champion.version}"))
    app = create_app({"TESTING": True, "FEEDBACK_DB": str(session_store.parent / "uri-feedback.sqlite")})
    try:
        assert model_state_of(app).challenger is None and app.extensions["hvs_challenger_watcher"] is None
    finally:
        app.extensions["hvs_watcher"].stop()


def model_state_of(app):
    with app.app_context():
        return model_state()


def test_the_challenger_follows_its_alias_and_goes_with_it(tmp_path, use_store, make_app):
    use_store(tmp_path / "mlruns")
    two = train.CANDIDATES[:2]
    train.train(samples=1500, candidates=two)  # champion 1, challenger 2
    app = make_app({"TESTING": True})
    state, watcher = model_state_of(app), app.extensions["hvs_challenger_watcher"]
    assert state.challenger.version == "2"
    client = app.test_client()
    client.get("/health")  # the process start: publishes both models
    train.train(samples=1500, candidates=two)  # champion 3, challenger 4
    assert watcher.check_once() and state.challenger.version == "4"
    train.train(samples=1500, candidates=train.CANDIDATES[:1])  # one candidate: no challenger
    assert watcher.check_once() and state.challenger is None
    info = {labels["model_version"]: v for n, labels, v in samples(metrics(client)) if n == "hvs_model_challenger_info"}
    assert info == {"2": 0, "4": 0}
    assert not watcher.check_once()  # Still none: nothing changes, nothing is logged as a failure.
