"""The default HTTP metrics that hvs_api.http_metrics records match what prometheus-flask-exporter's
own recording gives for the same requests, series for series and count for count."""

import pytest
from flask import Flask, abort, request
from prometheus_client import CollectorRegistry, Gauge
from prometheus_flask_exporter import PrometheusMetrics

from hvs_api import http_metrics
from hvs_api.http_metrics import UNMATCHED, HttpRequestMetrics

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _routes(app: Flask) -> None:
    @app.get("/ok")
    def ok():
        return {"ok": True}

    @app.post("/items/<int:number>")
    def item(number):
        return {"number": number}, 201

    @app.get("/refused")
    def refused():
        abort(422)

    @app.get("/raises")
    def raises():
        raise RuntimeError("on purpose")

    @app.get("/untracked")
    @PrometheusMetrics.do_not_track()
    def untracked():
        return {"tracked": False}


def handler(req) -> str:
    """The Flask view, the duration histogram's ``handler`` (the exporter names the label after this function)."""
    return req.endpoint or UNMATCHED


def _exporter_app() -> tuple[Flask, CollectorRegistry]:
    """The exporter recording the defaults itself, labelled as the API labels them."""
    app, registry = Flask("exporter"), CollectorRegistry()
    _routes(app)
    PrometheusMetrics(
        app,
        registry=registry,
        group_by=handler,
        default_labels={"endpoint": lambda: request.url_rule.rule if request.url_rule else UNMATCHED},
        buckets=BUCKETS,
    )
    return app, registry


def _our_app() -> tuple[Flask, CollectorRegistry, Gauge]:
    app, registry = Flask("ours"), CollectorRegistry()
    _routes(app)
    in_progress = Gauge("in_progress", "requests being served", registry=registry)
    HttpRequestMetrics(app, registry, BUCKETS, in_progress, enabled=True)
    return app, registry, in_progress


REQUESTS = [
    ("GET", "/ok"),
    ("GET", "/ok"),
    ("POST", "/items/3"),
    ("POST", "/items/4"),
    ("GET", "/refused"),
    ("GET", "/raises"),
    ("GET", "/untracked"),
    ("GET", "/no/such/path"),
    ("DELETE", "/ok"),
    ("BREW", "/ok"),
]


def _send(app: Flask) -> list[int]:
    client = app.test_client()
    return [client.open(path, method=method).status_code for method, path in REQUESTS]


def _default_samples(registry: CollectorRegistry) -> dict:
    """Every sample of the default HTTP metrics but the durations' sums, which are timings."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for metric in registry.collect()
        if metric.name.startswith("flask_http_request")
        for sample in metric.samples
        if not sample.name.endswith(("_sum", "_created"))
        and not (sample.name.endswith("_bucket") and sample.labels["le"] != "+Inf")
    }


def test_the_same_requests_give_the_same_series_and_counts_as_the_exporter():
    exporter_app, exporter_registry = _exporter_app()
    our_app, our_registry, in_progress = _our_app()

    assert _send(our_app) == _send(exporter_app) == [200, 200, 201, 201, 422, 500, 200, 404, 405, 405]
    ours = _default_samples(our_registry)
    assert ours == _default_samples(exporter_registry)
    assert in_progress._value.get() == 0
    # What the comparison covers: the exception, the view left out, an unmatched path.
    assert ours[
        ("flask_http_request_exceptions_total", (("endpoint", "/raises"), ("method", "GET"), ("status", "500")))
    ]
    assert not any(dict(labels).get("endpoint") == "/untracked" for _, labels in ours)
    assert ours[("flask_http_request_total", (("endpoint", UNMATCHED), ("method", "GET"), ("status", "404")))] == 1


def test_the_durations_are_the_time_the_view_took():
    app, registry, _ = _our_app()

    @app.get("/slow")
    def slow():
        import time

        time.sleep(0.02)
        return {}

    app.test_client().get("/slow")
    labels = {"method": "GET", "handler": "slow", "status": "200", "endpoint": "/slow"}
    assert 0.02 <= registry.get_sample_value("flask_http_request_duration_seconds_sum", labels) < 1.0
    assert registry.get_sample_value("flask_http_request_duration_seconds_bucket", {**labels, "le": "0.01"}) == 0


def test_the_series_kept_are_bounded_and_the_rest_still_counted(monkeypatch):
    monkeypatch.setattr(http_metrics, "MAX_KEPT", 2)
    app, registry, _ = _our_app()
    client = app.test_client()
    methods = ["GET", "HEAD", "BREW", "PUT", "BREW"]
    for method in methods:
        client.open("/ok", method=method)

    recorder = app.after_request_funcs[None][0].__self__
    assert len(recorder._series) == 2
    total = sum(
        sample.value
        for metric in registry.collect()
        if metric.name == "flask_http_request"
        for sample in metric.samples
        if sample.name == "flask_http_request_total"
    )
    assert total == len(methods)


@pytest.mark.parametrize("enabled", [True, False])
def test_the_in_progress_gauge_counts_a_request_while_it_is_served(enabled):
    app, registry = Flask("gauge"), CollectorRegistry()
    in_progress = Gauge("in_progress", "requests being served", registry=registry)
    HttpRequestMetrics(app, registry, BUCKETS, in_progress, enabled=enabled)
    seen = []

    @app.get("/look")
    def look():
        seen.append(in_progress._value.get())
        return {}

    app.test_client().get("/look")
    assert seen == [1]
    assert in_progress._value.get() == 0
    assert (
        registry.get_sample_value("flask_http_request_total", {"method": "GET", "status": "200", "endpoint": "/look"})
        == 1
    ) is enabled


def test_a_request_an_earlier_hook_failed_is_not_counted_out_of_progress():
    app, registry = Flask("early"), CollectorRegistry()

    @app.before_request
    def fails_first():
        raise RuntimeError("before the metrics' hook")

    in_progress = Gauge("in_progress", "requests being served", registry=registry)
    HttpRequestMetrics(app, registry, BUCKETS, in_progress, enabled=True)

    @app.get("/any")
    def any_view():
        return {}

    assert app.test_client().get("/any").status_code == 500
    assert in_progress._value.get() == 0
