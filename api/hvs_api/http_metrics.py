"""The default HTTP request metrics, by the names, labels and buckets prometheus-flask-exporter gives them.

The exporter's own recording costs about a tenth of a one-record prediction (``make profile``):
on every request it checks two markers through Flask's request proxy, rebuilds its label
functions, resolves every label value twice and looks its two series up by keyword. Here the
series of one (method, status, route) are looked up once and kept, and the whole request is
recorded by one hook pair that reads the request once. What a scrape shows does not change:

- ``flask_http_request_duration_seconds{method, handler, status, endpoint}``: seconds from the
  first before-request hook to the response, ``handler`` the Flask view name;
- ``flask_http_request_total{method, status, endpoint}``: every answered request;
- ``flask_http_request_exceptions_total{method, status, endpoint}``: requests that raised past
  the app's error handlers (answered 500 by Flask), also counted in the two above.

``endpoint`` is the route template (``/predict``, never the raw path) and ``handler`` the view,
both ``unmatched`` for a path no route matches, so both are bounded by the app's routes. A view
the exporter's ``do_not_track`` or ``exclude_all_metrics`` decorators mark is left out, as the
exporter leaves it out.
"""

import time

from flask import Flask, request
from prometheus_client import CollectorRegistry, Counter, Histogram

from hvs_api.histograms import observe_one

UNMATCHED = "unmatched"

# Beyond this many (method, status, route) combinations the series are looked up on every
# request rather than kept: the method is the client's to choose.
MAX_KEPT = 512


class HttpRequestMetrics:
    """Records each request of ``app``: ``in_progress`` (a gauge) up while it is served, and,
    when ``enabled``, the default HTTP metrics in ``registry``. One hook of each kind does it all:
    Flask's dispatch of a hook costs about as much as a metric write."""

    def __init__(self, app: Flask, registry: CollectorRegistry, buckets: tuple[float, ...], in_progress, enabled: bool):
        self.in_progress = in_progress
        self.enabled = enabled
        if enabled:
            self.duration = Histogram(
                "flask_http_request_duration_seconds",
                "Flask HTTP request duration in seconds",
                ("method", "handler", "status", "endpoint"),
                registry=registry,
                buckets=buckets,
            )
            self.total = Counter(
                "flask_http_request_total",
                "Total number of HTTP requests",
                ("method", "status", "endpoint"),
                registry=registry,
            )
            self.exceptions = Counter(
                "flask_http_request_exceptions_total",
                "Total number of HTTP requests which resulted in an exception",
                ("method", "status", "endpoint"),
                registry=registry,
            )
        self._series: dict[tuple, tuple] = {}
        app.before_request(self.started)
        if enabled:
            app.after_request(self.answered)
        app.teardown_request(self.ended)

    def _series_of(self, method: str, status: int, rule) -> tuple:
        """The (duration, total) children for one combination, kept after the first lookup."""
        endpoint, handler = _route(rule)
        key = (method, status, endpoint, handler)
        series = self._series.get(key)
        if series is None:
            series = (
                self.duration.labels(method, handler, status, endpoint),
                self.total.labels(method, status, endpoint),
            )
            if len(self._series) < MAX_KEPT:
                self._series[key] = series
        return series

    def started(self) -> None:
        self.in_progress.inc()
        # Also the mark that this request was counted in progress: an earlier hook that raised
        # would skip this one, and the teardown, which always runs, must not count it out.
        request.environ["hvs.started"] = time.perf_counter()

    def answered(self, response):
        self._record(request._get_current_object(), response.status_code)
        return response

    def ended(self, error: BaseException | None) -> None:
        """The request is over; one that raised past the error handlers is counted as an exception
        (and recorded with Flask's 500 if ``answered`` never saw it)."""
        req = request._get_current_object()
        if "hvs.started" in req.environ:
            self.in_progress.dec()
        if error is None or not self.enabled:
            return
        if _marked_out(req):
            return
        self.exceptions.labels(req.method, 500, _route(req.url_rule)[0]).inc()
        # Flask's own 500 usually went through ``answered``; if it did not, it is recorded here.
        self._record(req, 500)

    def _record(self, req, status: int) -> bool:
        """Record ``req`` once (False when it is marked out or was recorded already)."""
        if _marked_out(req) or "hvs_recorded" in req.__dict__:
            return False
        req.__dict__["hvs_recorded"] = True
        duration, total = self._series_of(req.method, status, req.url_rule)
        started = req.environ.get("hvs.started")
        if started is not None:
            observe_one(duration, max(time.perf_counter() - started, 0.0))
        total.inc()
        return True


def _route(rule) -> tuple[str, str]:
    """The ``endpoint`` and ``handler`` labels of a request's URL rule (None: no route matched)."""
    return (rule.rule, rule.endpoint) if rule is not None else (UNMATCHED, UNMATCHED)


def _marked_out(req) -> bool:
    """True for a request whose view the exporter's decorators keep out of the default metrics."""
    return "prom_do_not_track" in req.__dict__ or "prom_exclude_all" in req.__dict__
