"""Ground truth: prediction ids, ``POST /feedback`` and the confusion counts it keeps."""

import random
import re
import string
import time

import pytest
from hvs_model import readings

from hvs_api.extensions import feedback
from hvs_api.feedback import FEEDBACK_REASONS
from hvs_api.feedback_ledger import DELAY_BUCKETS
from tests.support.metrics_text import metric_value, samples

CONFUSION = "hvs_model_feedback_records_total"


def metrics(client) -> str:
    return client.get("/metrics").get_data(as_text=True)


def confusion(client, role: str = "champion") -> dict[tuple[str, str, str], float]:
    """``(model_version, predicted, true) -> records`` for one model role."""
    return {
        (labels["model_version"], labels["predicted_label_text"], labels["true_label_text"]): value
        for name, labels, value in samples(metrics(client))
        if name == CONFUSION and labels["model_role"] == role
    }


def predict(client, records: list[dict]) -> list[dict]:
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200
    return response.json["predictions"]


def labelled_batch(n: int, seed: int) -> tuple[list[dict], list[str]]:
    pairs = readings.labelled_records(n, seed=seed, drift=0.6)
    return [record for record, _ in pairs], [label for _, label in pairs]


def test_every_prediction_carries_an_id_of_its_own(client, payloads):
    single = client.post("/predict", json=payloads["Normal"]).json["prediction"]
    batch = predict(client, [payloads["Normal"]] * 50)
    ids = [single["id"], *(p["id"] for p in batch)]
    assert all(isinstance(i, str) and 20 < len(i) < 100 for i in ids)
    assert len(set(ids)) == 51
    # and matches the pattern /openapi.json gives, so that a client may check ids with it
    pattern = client.get("/openapi.json").json["components"]["schemas"]["Label"]["properties"]["id"]["pattern"]
    assert all(re.fullmatch(pattern, i) for i in ids)


def test_labels_are_counted_by_model_version_predicted_and_true_label(client, champion):
    records, truth = labelled_batch(200, seed=21)
    predictions = predict(client, records)
    body = {"feedback": [{"id": p["id"], "label": t} for p, t in zip(predictions, truth, strict=True)]}
    response = client.post("/feedback", json=body)
    assert response.status_code == 200 and response.json == {"recorded": 200}
    expected: dict[tuple[str, str, str], float] = {}
    for p, t in zip(predictions, truth, strict=True):
        key = (champion.version, p["label"], t)
        expected[key] = expected.get(key, 0) + 1
    assert confusion(client) == expected
    # A single label adds one.
    one = client.post("/predict", json=records[0]).json["prediction"]
    assert client.post("/feedback", json={"id": one["id"], "label": truth[0]}).json == {"recorded": 1}
    key = (champion.version, one["label"], truth[0])
    assert confusion(client)[key] == expected[key] + 1


def test_an_id_labelled_twice_is_refused_and_counted_once(client, payloads):
    [prediction] = predict(client, [payloads["Hazardous"]])
    first = client.post("/feedback", json={"id": prediction["id"], "label": "Hazardous"})
    assert first.status_code == 200
    before = confusion(client)
    again = client.post("/feedback", json={"id": prediction["id"], "label": "Normal"})
    assert again.status_code == 409 and again.json["error"] == "already_labelled" and again.json["field"] == "id"
    assert confusion(client) == before
    assert metric_value(metrics(client), "hvs_api_invalid_feedback_total", reason="already_labelled") == 1


def test_a_batch_with_one_labelled_id_records_nothing(client, payloads):
    predictions = predict(client, [payloads["Normal"]] * 3)
    assert client.post("/feedback", json={"id": predictions[1]["id"], "label": "Normal"}).status_code == 200
    before = confusion(client)
    batch = {"feedback": [{"id": p["id"], "label": "Normal"} for p in predictions]}
    response = client.post("/feedback", json=batch)
    assert response.status_code == 409
    assert [p["field"] for p in response.json["problems"]] == ["feedback[1].id"]
    assert confusion(client) == before
    # The two that were refused with it can still be labelled.
    rest = {"feedback": [{"id": predictions[i]["id"], "label": "Normal"} for i in (0, 2)]}
    assert client.post("/feedback", json=rest).json == {"recorded": 2}


def test_the_same_id_twice_in_one_batch_is_refused(client, payloads):
    [prediction] = predict(client, [payloads["Normal"]])
    item = {"id": prediction["id"], "label": "Normal"}
    response = client.post("/feedback", json={"feedback": [item, item]})
    assert response.status_code == 422 and response.json["error"] == "repeated_id"
    assert response.json["field"] == "feedback[1].id"
    assert confusion(client) == {}


def altered(text: str) -> str:
    position = len(text) // 2
    return text[:position] + ("A" if text[position] != "A" else "B") + text[position + 1 :]


@pytest.mark.parametrize(
    "make_id",
    [
        altered,
        lambda text: text[:-4],
        lambda text: "not an id",
        lambda text: "",
        lambda text: "é" * 10,
        lambda text: "A" * 40,
    ],
    ids=["altered", "cut short", "words", "empty", "non-ascii", "made up"],
)
def test_an_id_this_api_did_not_issue_is_unknown(client, payloads, make_id):
    [prediction] = predict(client, [payloads["Normal"]])
    response = client.post("/feedback", json={"id": make_id(prediction["id"]), "label": "Normal"})
    assert response.status_code == 422 and response.json["error"] == "unknown_prediction_id"
    assert confusion(client) == {}


def test_an_id_signed_by_another_secret_is_unknown(champion, make_app, payloads):
    one = make_app({"TESTING": True, "MODEL": champion, "FEEDBACK_SECRET": "one"}).test_client()
    other = make_app({"TESTING": True, "MODEL": champion, "FEEDBACK_SECRET": "other"}).test_client()
    [prediction] = predict(one, [payloads["Normal"]])
    response = other.post("/feedback", json={"id": prediction["id"], "label": "Normal"})
    assert response.json["error"] == "unknown_prediction_id"


def test_an_expired_id_is_refused(app, client):
    with app.app_context():
        store = feedback()
        [old] = store.ids().issue("1", [0], now=time.time() - store.max_age_seconds - 60)
        [recent] = store.ids().issue("1", [0], now=time.time() - store.max_age_seconds + 60)
    response = client.post("/feedback", json={"id": old, "label": "Normal"})
    assert response.status_code == 422 and response.json["error"] == "expired_prediction_id"
    assert client.post("/feedback", json={"id": recent, "label": "Normal"}).status_code == 200


def test_the_delay_from_prediction_to_label_is_a_histogram(app, client):
    with app.app_context():
        [two_minutes] = feedback().ids().issue("1", [0], now=time.time() - 120)
    assert client.post("/feedback", json={"id": two_minutes, "label": "Hazardous"}).status_code == 200
    text = metrics(client)
    bucket = {b: metric_value(text, "hvs_model_feedback_delay_seconds_bucket", le=repr(b)) for b in DELAY_BUCKETS}
    assert bucket[60.0] == 0 and bucket[300.0] == 1
    assert 120 <= metric_value(text, "hvs_model_feedback_delay_seconds_sum") < 130
    assert metric_value(text, "hvs_model_feedback_delay_seconds_count") == 1


def test_labels_outlive_the_app_and_an_app_on_the_same_ledger_knows_its_ids(champion, make_app, payloads, tmp_path):
    ledger = str(tmp_path / "feedback.sqlite")
    first = make_app({"TESTING": True, "MODEL": champion, "FEEDBACK_DB": ledger}).test_client()
    labelled, unlabelled = predict(first, [payloads["Normal"]] * 2)
    assert first.post("/feedback", json={"id": labelled["id"], "label": "Normal"}).status_code == 200
    # A restart: a new app on the same file, with the secret the first one stored there.
    second = make_app({"TESTING": True, "MODEL": champion, "FEEDBACK_DB": ledger}).test_client()
    assert confusion(second) == confusion(first) != {}
    assert second.post("/feedback", json={"id": labelled["id"], "label": "Normal"}).status_code == 409
    assert second.post("/feedback", json={"id": unlabelled["id"], "label": "Normal"}).status_code == 200


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"data": "{}", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"data": "{", "content_type": "application/json"}, 400, "malformed_json"),
        (
            {"data": '{"id": "a", "id": "b", "label": "Normal"}', "content_type": "application/json"},
            400,
            "duplicate_key",
        ),
        ({"json": [1, 2]}, 400, "invalid_shape"),
        ({"json": {"feedback": "all"}}, 400, "invalid_shape"),
        ({"json": {"feedback": [5]}}, 400, "invalid_shape"),
        ({"json": {"feedback": []}}, 422, "empty_batch"),
        ({"json": {"feedback": [{"id": "x", "label": "Normal"}] * 1001}}, 422, "batch_too_large"),
        ({"json": {"feedback": [], "extra": 1}}, 422, "unknown_field"),
        ({"json": {"label": "Normal"}}, 422, "missing_field"),
        ({"json": {"id": "x"}}, 422, "missing_field"),
        ({"json": {"id": "x", "label": "Normal", "score": 1}}, 422, "unknown_field"),
        ({"json": {"id": 5, "label": "Normal"}}, 422, "wrong_type"),
        ({"json": {"id": "x", "label": 1}}, 422, "wrong_type"),
        ({"json": {"id": "x", "label": "hazardous"}}, 422, "unknown_label"),
        ({"data": " " * (1024 * 1024 + 1), "content_type": "application/json"}, 413, "body_too_large"),
    ],
)
def test_bad_feedback_gets_a_json_4xx_and_records_nothing(client, payloads, kwargs, status, reason):
    [prediction] = predict(client, [payloads["Normal"]])
    assert client.post("/feedback", json={"id": prediction["id"], "label": "Normal"}).status_code == 200
    before = confusion(client)
    response = client.post("/feedback", **kwargs)
    assert response.status_code == status
    assert response.is_json and response.json["error"] == reason and response.json["message"]
    assert metric_value(metrics(client), "hvs_api_invalid_feedback_total", reason=reason) == 1
    assert confusion(client) == before


def test_every_feedback_reason_starts_at_zero(client):
    text = metrics(client)
    assert {
        r: metric_value(text, "hvs_api_invalid_feedback_total", reason=r) for r in FEEDBACK_REASONS
    } == dict.fromkeys(FEEDBACK_REASONS, 0.0)


def test_random_ids_never_raise(client):
    rng = random.Random(5)
    alphabet = string.ascii_letters + string.digits + "-_=+/ "
    for _ in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 80)))
        response = client.post("/feedback", json={"id": text, "label": "Normal"})
        assert response.status_code == 422, text
    assert confusion(client) == {}


def test_a_secret_file_shared_by_two_ledgers_lets_each_take_the_others_ids(
    champion, make_app, payloads, tmp_path, monkeypatch
):
    """As the Kubernetes pods do with the mounted Secret: each its own ledger, one key."""
    (tmp_path / "secret").write_text("shared key\n")
    monkeypatch.setenv("FEEDBACK_SECRET_FILE", str(tmp_path / "secret"))
    one, other = (make_app({"TESTING": True, "MODEL": champion}).test_client() for _ in range(2))
    [prediction] = predict(one, [payloads["Normal"]])
    assert other.post("/feedback", json={"id": prediction["id"], "label": "Normal"}).status_code == 200
    monkeypatch.setenv("FEEDBACK_SECRET_FILE", str(tmp_path / "absent"))
    alone = make_app({"TESTING": True, "MODEL": champion}).test_client()
    assert (
        alone.post("/feedback", json={"id": prediction["id"], "label": "Normal"}).json["error"]
        == "unknown_prediction_id"
    )


def test_a_ledger_that_cannot_be_written_costs_feedback_only(champion, make_app, payloads, tmp_path):
    """As a store mounted read-only or owned by another user: predictions and scrapes go on."""
    (tmp_path / "a-file").write_text("")
    client = make_app(
        {"TESTING": True, "MODEL": champion, "FEEDBACK_DB": str(tmp_path / "a-file" / "f.sqlite")}
    ).test_client()
    response = client.post("/predict", json=payloads["Normal"])
    assert response.status_code == 200 and response.json["prediction"]["id"]
    refused = client.post("/feedback", json={"id": response.json["prediction"]["id"], "label": "Normal"})
    assert refused.status_code == 503 and refused.json["error"] == "feedback_unavailable"
    assert "FEEDBACK_DB" in refused.json["message"]
    page = client.get("/metrics")
    assert (
        page.status_code == 200
        and metric_value(page.get_data(as_text=True), "hvs_model_feedback_delay_seconds_count") == 0
    )
