import dataclasses
import math
import random
import re
import string

import pytest
import yaml
from hvs_model.features import FEATURE_NAMES

from hvs_api import runtime
from hvs_api.validation import INVALID_REASONS
from tests.support.metrics_text import metric_value, samples
from tests.support.paths import ROOT

# The example Normal record as JSON text, for bodies that only a text can make (a key twice).
NORMAL_TEXT = (ROOT / "test_payload.json").read_text().strip()


def metrics_text(client) -> str:
    return client.get("/metrics").get_data(as_text=True)


def sample(client, name: str, **labels) -> float | None:
    """The value of one series on the app's /metrics (None when absent)."""
    return metric_value(metrics_text(client), name, **labels)


def series_count(client) -> int:
    return len(samples(metrics_text(client)))


def test_shipped_payloads_predict_their_labels(client, payloads):
    for label, payload in payloads.items():
        response = client.post("/predict", json=payload)
        assert response.status_code == 200
        prediction = response.json["prediction"]
        assert prediction["label"] == label
        assert prediction["label_id"] == (1 if label == "Hazardous" else 0)
        assert (prediction["hazard_probability"] > 0.5) == (label == "Hazardous")
        assert prediction["model_version"] == "1"


def test_batch_counts_every_record_once(client, payloads):
    before = {k: sample(client, "hvs_api_prediction_outcomes_total", predicted_label_text=k) for k in payloads}
    records = [payloads["Normal"]] * 3 + [payloads["Hazardous"]] * 2
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200
    assert [p["label"] for p in response.json["predictions"]] == ["Normal"] * 3 + ["Hazardous"] * 2
    assert sample(client, "hvs_api_prediction_outcomes_total", predicted_label_text="Normal") == before["Normal"] + 3
    assert (
        sample(client, "hvs_api_prediction_outcomes_total", predicted_label_text="Hazardous") == before["Hazardous"] + 2
    )
    assert sample(client, "hvs_api_prediction_batch_records_count") == 1
    assert sample(client, "hvs_api_prediction_batch_records_sum") == 5
    assert sample(client, "hvs_api_hazard_probability_count") == 5


def test_request_metrics_carry_the_route_as_endpoint(client, payloads):
    client.post("/predict", json=payloads["Normal"])
    assert sample(client, "flask_http_request_total", endpoint="/predict", method="POST", status="200") == 1
    assert (
        sample(
            client,
            "flask_http_request_duration_seconds_count",
            endpoint="/predict",
            handler="api.predict",
            method="POST",
            status="200",
        )
        == 1
    )


def test_metrics_show_the_model(client, champion):
    labels = {"model_name": champion.name, "model_version": champion.version, "run_id": champion.run_id}
    assert sample(client, "hvs_model_info", **labels) == 1
    assert sample(client, "hvs_model_loaded") == 1
    assert sample(client, "hvs_model_training_hazardous_ratio") == pytest.approx(champion.training_hazardous_share)
    assert sample(client, "app_info", version="1.0.0") == 1


def test_a_model_without_a_training_share_exports_no_baseline(champion, make_app):
    # Not 0: a baseline of 0 would make the drift alert fire on normal traffic.
    unknown = dataclasses.replace(champion, training_hazardous_share=None)
    client = make_app({"TESTING": True, "MODEL": unknown}).test_client()
    assert math.isnan(sample(client, "hvs_model_training_hazardous_ratio"))


def test_no_model_exports_no_baseline(make_app, monkeypatch):
    client = make_app({"TESTING": True, "MODEL": None}).test_client()
    assert math.isnan(sample(client, "hvs_model_training_hazardous_ratio"))


def test_every_invalid_reason_starts_at_zero(client):
    text = metrics_text(client)
    found = {reason: metric_value(text, "hvs_api_invalid_requests_total", reason=reason) for reason in INVALID_REASONS}
    assert found == dict.fromkeys(INVALID_REASONS, 0.0)


@pytest.mark.parametrize(
    ("kwargs", "status", "reason"),
    [
        ({"data": "{}", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"data": "x=1", "content_type": "application/x-www-form-urlencoded"}, 415, "unsupported_media_type"),
        # Near misses of application/json, and none at all.
        *[
            ({"data": NORMAL_TEXT, "content_type": kind}, 415, "unsupported_media_type")
            for kind in ("application/xml", "multipart/form-data", "", "application/jsonx")
        ],
        # A feature given twice in one record.
        *[
            (
                {"data": NORMAL_TEXT[:-1] + f', "{name}": 1.0}}', "content_type": "application/json"},
                400,
                "duplicate_key",
            )
            for name in FEATURE_NAMES
        ],
        ({"data": "{", "content_type": "application/json"}, 400, "malformed_json"),
        ({"data": b"\xc3\x28", "content_type": "application/json"}, 400, "malformed_json"),
        ({"json": {"temperature_c": 1}}, 422, "missing_field"),
        ({"json": {"records": []}}, 422, "empty_batch"),
        ({"data": " " * (1024 * 1024 + 1), "content_type": "application/json"}, 413, "body_too_large"),
        # A body that ends before the length its header gives.
        (
            {
                "data": NORMAL_TEXT,
                "content_type": "application/json",
                "environ_overrides": {"CONTENT_LENGTH": str(len(NORMAL_TEXT) + 1)},
            },
            400,
            "body_incomplete",
        ),
    ],
)
def test_bad_requests_get_a_json_4xx_and_change_no_good_count(client, kwargs, status, reason):
    good_before = series_good(client)
    response = client.post("/predict", **kwargs)
    assert response.status_code == status
    assert response.is_json and response.json["error"] == reason and response.json["message"]
    assert sample(client, "hvs_api_invalid_requests_total", reason=reason) == 1
    assert series_good(client) == good_before


@pytest.mark.parametrize("kind", ["application/json", "application/json; charset=utf-8", "Application/JSON"])
def test_json_is_accepted_under_any_spelling_of_its_media_type(client, kind):
    response = client.post("/predict", data=NORMAL_TEXT, content_type=kind)
    assert response.status_code == 200 and response.json["prediction"]["label"] == "Normal"


def series_good(client) -> tuple[float, ...]:
    return tuple(
        sample(client, "hvs_api_prediction_outcomes_total", predicted_label_text=k) for k in ("Normal", "Hazardous")
    ) + (sample(client, "hvs_model_inference_duration_seconds_count"),)


def test_batch_limit_is_configurable(champion, make_app, payloads):
    client = make_app({"TESTING": True, "MODEL": champion, "MAX_BATCH_RECORDS": 2}).test_client()
    assert client.post("/predict", json={"records": [payloads["Normal"]] * 2}).status_code == 200
    response = client.post("/predict", json={"records": [payloads["Normal"]] * 3})
    assert response.status_code == 422 and response.json["error"] == "batch_too_large"


def test_without_a_model_the_api_stays_up_and_says_how_to_train(payloads, tmp_path, use_store, make_app, caplog):
    use_store(tmp_path / "empty").mkdir()
    client = make_app({"TESTING": True}).test_client()
    assert "make train" in caplog.text
    response = client.post("/predict", json=payloads["Normal"])
    assert response.status_code == 503
    assert response.json["error"] == "model_not_loaded" and "make train" in response.json["message"]
    ready = client.get("/ready")
    assert ready.status_code == 503 and ready.json["ready"] is False and "make train" in ready.json["reason"]
    assert client.get("/health").status_code == 200
    assert sample(client, "hvs_model_loaded") == 0


def test_health_and_ready_show_the_model(client, champion):
    health = client.get("/health").json
    assert health["status"] == "ok" and health["ready"] is True
    assert health["model"]["run_id"] == champion.run_id and health["model"]["version"] == champion.version
    assert client.get("/ready").json["model"]["name"] == champion.name


def test_unknown_paths_add_no_series(client):
    methods = ["GET", "POST", "DELETE"]
    for method in methods:  # The first miss per method creates its "unmatched" series.
        client.open("/no-such-page", method=method)
    before = series_count(client)
    rng = random.Random(1)
    for _ in range(1000):
        path = "/" + "".join(rng.choices(string.ascii_letters + string.digits + "/", k=12))
        response = client.open(path, method=rng.choice(methods))
        assert response.status_code == 404 and response.is_json
    assert series_count(client) == before


def test_wrong_method_is_a_json_405(client):
    response = client.get("/predict")
    assert response.status_code == 405 and response.json["error"] == "method_not_allowed"


def test_openapi_describes_the_features_and_limits(client):
    document = client.get("/openapi.json").json
    record = document["components"]["schemas"]["Record"]
    assert record["required"] == list(FEATURE_NAMES)
    assert record["properties"]["temperature_c"]["maximum"] == 150.0
    assert "1000 records" in document["info"]["description"]
    assert set(document["paths"]) == {"/predict", "/feedback", "/health", "/ready"}
    assert (
        document["components"]["schemas"]["FeedbackRequest"]["oneOf"][1]["properties"]["feedback"]["maxItems"] == 1000
    )


def exploding_client(champion, make_app, message: str):
    """A test client of an app whose model raises ``RuntimeError(message)`` on every prediction."""

    class Exploding:
        def predict_proba(self, x):
            raise RuntimeError(message)

    exploding = Exploding()
    broken = dataclasses.replace(champion, estimator=exploding, runtime=runtime.sklearn_runtime(exploding))
    return make_app({"TESTING": False, "MODEL": broken}).test_client()


def test_errors_never_leak_a_stack_trace(champion, make_app, payloads):
    client = exploding_client(champion, make_app, "secret internals")
    response = client.post("/predict", json=payloads["Normal"])
    assert response.status_code == 500
    assert response.json == {"error": "internal_error", "message": "the server failed to handle the request"}
    assert "secret" not in response.get_data(as_text=True)


def test_health_sends_nosniff_deny_and_a_no_source_csp(client):
    response = client.get("/health")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


def test_every_response_carries_each_security_header_once(client, payloads):
    responses = [
        client.post("/predict", json=payloads["Normal"]),
        client.post("/predict", data="{", content_type="application/json"),
        client.get("/predict"),
        client.get("/no-such-page"),
        client.get("/metrics"),
        client.get("/openapi.json"),
    ]
    for response in responses:
        for name in ("X-Content-Type-Options", "Cache-Control", "Content-Security-Policy", "X-Frame-Options"):
            assert len(response.headers.getlist(name)) == 1, (response.request.path, name)
        assert response.headers["Cache-Control"] == "no-store"


def test_fault_injection_is_off_unless_switched_on(champion, make_app, payloads):
    off = make_app({"TESTING": True, "MODEL": champion}).test_client()
    assert off.post("/predict", json=payloads["Normal"], headers={"X-Inject-Fault": "1"}).status_code == 200

    on = make_app({"TESTING": True, "MODEL": champion, "FAULT_INJECTION_ENABLED": True}).test_client()
    response = on.post("/predict", json=payloads["Normal"], headers={"X-Inject-Fault": "1"})
    assert response.status_code == 500 and response.json["error"] == "injected_fault"
    assert on.post("/predict", json=payloads["Normal"]).status_code == 200
    assert sample(on, "hvs_api_injected_faults_total") == 1
    assert sample(on, "flask_http_request_total", endpoint="/predict", method="POST", status="500") == 1


def probe_request() -> tuple[dict[str, str], bytes]:
    """The headers and body of the blackbox exporter's /predict probe, read from its module."""
    module = yaml.safe_load((ROOT / "blackbox" / "blackbox.yml").read_text())["modules"]["hvs_api_predict"]["http"]
    return module["headers"], module["body"].encode()


def test_the_predict_probe_is_answered_and_counted_apart_from_every_other_metric(client):
    headers, body = probe_request()

    # Every series but the probe's own counter stays as it was.
    def others() -> list:
        return [s for s in samples(metrics_text(client)) if not s[0].startswith("hvs_api_synthetic_requests")]

    before = others()
    for _ in range(3):
        response = client.post("/predict", data=body, headers=headers)
        assert response.status_code == 200 and response.json["prediction"]["label"] == "Normal"
        assert re.search(regexp_of_probe(), response.get_data(as_text=True))
    assert others() == before
    assert sample(client, "hvs_api_synthetic_requests_total", status="200") == 3


def regexp_of_probe() -> str:
    """The probe's test of the answer's body (Go's RE2 and Python agree on this simple one)."""
    module = yaml.safe_load((ROOT / "blackbox" / "blackbox.yml").read_text())["modules"]["hvs_api_predict"]["http"]
    [pattern] = module["fail_if_body_not_matches_regexp"]
    return pattern


def test_a_synthetic_request_that_is_refused_counts_only_as_synthetic(client):
    headers, _ = probe_request()
    response = client.post("/predict", data=b"{", headers=headers)
    assert response.status_code == 400 and response.json["error"] == "malformed_json"
    assert sample(client, "hvs_api_synthetic_requests_total", status="400") == 1
    assert sample(client, "hvs_api_invalid_requests_total", reason="malformed_json") == 0
    assert sample(client, "flask_http_request_total", endpoint="/predict", method="POST", status="400") is None


def test_a_synthetic_request_that_raises_is_counted_as_a_500(champion, make_app):
    client = exploding_client(champion, make_app, "broken")
    headers, body = probe_request()
    assert client.post("/predict", data=body, headers=headers).status_code == 500
    assert sample(client, "hvs_api_synthetic_requests_total", status="500") == 1
    assert sample(client, "flask_http_request_total", endpoint="/predict", method="POST", status="500") is None


def test_the_app_asks_once_whether_a_function_is_a_coroutine_and_still_refuses_async_views(app, monkeypatch):
    import flask.app

    asked = []
    real = flask.app.iscoroutinefunction
    monkeypatch.setattr(flask.app, "iscoroutinefunction", lambda func: asked.append(func) or real(func))

    def plain():
        return "plain"

    async def coroutine():
        return "never"

    assert app.ensure_sync(plain) is plain and app.ensure_sync(plain) is plain
    assert asked == [plain]
    # Flask's own answer for a coroutine function, every time (here: it needs Flask's async extra).
    for _ in range(2):
        with pytest.raises(RuntimeError, match="async"):
            app.ensure_sync(coroutine)
    assert asked == [plain, coroutine, coroutine]
