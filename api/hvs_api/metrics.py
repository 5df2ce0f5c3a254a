"""Every metric the API exposes on ``/metrics``; the only module that creates metric objects.

Under gunicorn the ``PROMETHEUS_MULTIPROC_DIR`` variable is set (by gunicorn.conf.py, before
``prometheus_client`` is first imported), each worker writes its values to files there and
``/metrics`` adds them up, so counts are exact across workers and survive a worker's death.
Without it (the Flask test client, a single process) an ordinary registry is used.

The default HTTP metrics keep prometheus-flask-exporter's names; ``hvs_api.http_metrics`` records
them (the exporter's own recording cost a tenth of a prediction). The user's queries select
``flask_http_request_total{endpoint="/predict"}``: ``endpoint`` is the route template
(``/predict``, never the raw path) on every default metric, and the duration histogram's
``handler`` is the Flask view name. Both are bounded by the app's routes; anything that
matches no route is ``endpoint="unmatched"``. The exporter serves ``/metrics`` (across the
workers' files under gunicorn) and ``app_info``.
"""

import math
import os

from flask import Flask
from hvs_model.baseline import BIN_LABELS, Baseline
from hvs_model.features import FEATURE_NAMES, LABELS
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from hvs_api import metrics_files
from hvs_api.feedback import FEEDBACK_REASONS
from hvs_api.histograms import observe_all, observe_one
from hvs_api.http_metrics import HttpRequestMetrics
from hvs_api.model import LoadedModel
from hvs_api.runtime import FALLBACK_REASONS, RUNTIMES
from hvs_api.validation import FIELD_REASONS, INVALID_REASONS, UNKNOWN_FIELD, Problem

# Model calls take from about 20 microseconds (one record through treelite) to about a second
# (a 1,000-record batch on a large model through scikit-learn).
INFERENCE_BUCKETS = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
# Whole requests add parsing and the HTTP stack on top of inference.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)
PROBABILITY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


# Read by the gunicorn master when a worker dies (hvs_api.metrics_files.requests_in_progress).
REQUESTS_IN_PROGRESS = "hvs_api_requests_in_progress"


class _FoldAwareGunicornMetrics(GunicornInternalPrometheusMetrics):
    """Reads the workers' files under the shared lock, so a fold in the master never shows half
    done, and adds the collectors that read state of their own (the feedback ledger): the
    exporter builds a fresh registry of the files at each scrape, which would leave them out."""

    extra_collectors: tuple = ()

    def generate_metrics(self, accept_header=None, names=None):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        for collector in self.extra_collectors:
            registry.register(collector)
        if names:
            registry = registry.restricted_registry(names)
        encode, content_type = choose_encoder(accept_header)
        with metrics_files.locked(os.environ["PROMETHEUS_MULTIPROC_DIR"], exclusive=False):
            return encode(registry).decode("utf-8"), content_type


def multiprocess_mode() -> bool:
    """True when metrics are shared through files across gunicorn workers."""
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def _identify(info: Gauge, model: LoadedModel | None, previous: LoadedModel | None) -> None:
    """A model-identity gauge: the previous model's series to 0 (multiprocess files cannot remove
    a series), the new one's to 1."""
    for loaded, value in ((previous, 0), (model, 1)):
        if loaded is not None:
            info.labels(model_name=loaded.name, model_version=loaded.version, run_id=loaded.run_id).set(value)


class ApiMetrics:
    """The exporter and the custom metrics of one app."""

    def __init__(self, app: Flask, app_version: str, enabled: bool = True):
        # A registry per app keeps apps built by tests apart; in multiprocess mode the
        # exporter reads the workers' files at scrape time instead.
        self.registry = CollectorRegistry()
        exporter_class = _FoldAwareGunicornMetrics if multiprocess_mode() else PrometheusMetrics
        self.exporter = exporter_class(app=None, registry=self.registry, export_defaults=False)
        self.exporter.init_app(app)
        self.exporter.info("app_info", "HVS Prediction API Information", version=app_version)
        if enabled:
            self.exporter.info(
                "flask_exporter_info", "Information about the Prometheus Flask exporter", version=self.exporter.version
            )

        registry = self.registry
        self.prediction_outcomes = Counter(
            "hvs_api_prediction_outcomes_total",
            "Total number of hazard predictions made by the API, one per record",
            ["predicted_label_text"],
            registry=registry,
        )
        self.invalid_requests = Counter(
            "hvs_api_invalid_requests_total",
            "Prediction requests refused with a 4xx, by the first problem found",
            ["reason"],
            registry=registry,
        )
        self.batch_records = Histogram(
            "hvs_api_prediction_batch_records",
            "Records per accepted prediction request",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.hazard_probability = Histogram(
            "hvs_api_hazard_probability",
            "Predicted probability of the Hazardous class, one observation per record",
            buckets=PROBABILITY_BUCKETS,
            registry=registry,
        )
        self.inference_duration = Histogram(
            "hvs_model_inference_duration_seconds",
            "Time spent in the model call of one prediction request",
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        # Gauges about the model hold the same value in every live worker; "livemax"
        # shows it once and drops the values of workers that have exited (except
        # hvs_model_loaded, below).
        self.model_info = Gauge(
            "hvs_model_info",
            "The model being served (value 1), by registered name, version and training run",
            ["model_name", "model_version", "run_id"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        # The lowest of the live workers' values: one worker without a model (whose share of
        # the requests gets 503) reads 0, where "livemax" would read 1. The gunicorn master,
        # which builds the app but never sets this, drops its own file (gunicorn.conf.py).
        self.model_loaded = Gauge(
            "hvs_model_loaded",
            "1 when every live worker has a model loaded and serves predictions, 0 otherwise",
            registry=registry,
            multiprocess_mode="livemin",
        )
        # Which code computes the probabilities, and why scikit-learn does when treelite could
        # have: both from the fixed sets of hvs_api.runtime, the one in use at 1.
        self.runtime_info = Gauge(
            "hvs_model_runtime_info",
            "The inference runtime serving the model (value 1): treelite or sklearn",
            ["runtime"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.runtime_fallback_info = Gauge(
            "hvs_model_runtime_fallback_info",
            "Why scikit-learn serves the model rather than treelite (value 1), all 0 when treelite serves",
            ["reason"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.injected_faults = Counter(
            "hvs_api_injected_faults_total",
            "Prediction requests failed on purpose by the lab's fault-injection switch",
            registry=registry,
        )
        # By status code, which the app's own answers bound (200, 4xx refusals, 500, 503).
        self.synthetic_requests = Counter(
            "hvs_api_synthetic_requests_total",
            "Prediction requests marked synthetic (the lab's black-box probe), counted in no other metric, by status",
            ["status"],
            registry=registry,
        )
        self.training_hazardous_share = Gauge(
            "hvs_model_training_hazardous_ratio",
            "Share of Hazardous labels in the served model's training data, the drift baseline",
            registry=registry,
            multiprocess_mode="livemax",
        )
        # The served model's inputs against its training data (hvs_model.baseline): each
        # feature's records per decile bin of the training values, the share of training
        # records each bin held, and records outside the training range. Bins are "0" to "9"
        # for every model, so a new model moves the cut points and never leaves series behind.
        self.feature_bin_records = Counter(
            "hvs_model_feature_bin_records_total",
            "Predicted records by feature and by the training decile of the served model their value falls in",
            ["feature", "bin"],
            registry=registry,
        )
        self.feature_bin_training_share = Gauge(
            "hvs_model_feature_bin_training_ratio",
            "Share of the served model's training records in each bin of each feature, the input drift baseline",
            ["feature", "bin"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.feature_out_of_training_range = Counter(
            "hvs_model_feature_out_of_training_range_records_total",
            "Predicted records whose value of the feature lies outside the range of the served model's training data",
            ["feature"],
            registry=registry,
        )
        # Every problem of a refused request that names a sensor field (hvs_api_invalid_requests
        # counts the request once, by its first problem): which field a client gets wrong.
        self.invalid_fields = Counter(
            "hvs_api_invalid_fields_total",
            "Problems with sensor fields in refused prediction requests, by field and reason",
            ["field", "reason"],
            registry=registry,
        )

        # The challenger (the registry's challenger alias), scored beside the champion on a share
        # of the records, never answering: which model it is, and how often it agrees.
        self.challenger_info = Gauge(
            "hvs_model_challenger_info",
            "The model scored beside the champion (value 1), by registered name, version and training run",
            ["model_name", "model_version", "run_id"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.challenger_scored = Counter(
            "hvs_model_challenger_scored_records_total",
            "Records the challenger scored beside the champion",
            registry=registry,
        )
        self.challenger_agreed = Counter(
            "hvs_model_challenger_agreed_records_total",
            "Records the challenger scored and labelled as the champion did",
            registry=registry,
        )
        self.invalid_feedback = Counter(
            "hvs_api_invalid_feedback_total",
            "Feedback requests refused with a 4xx, by the first problem found",
            ["reason"],
            registry=registry,
        )

        # Requests a worker is serving right now, summed over the live workers. When a worker
        # dies, the gunicorn master reads its last value before dropping its file: requests it
        # took with it, which never reached the request counters (gunicorn.conf.py, child_exit).
        self.requests_in_progress = Gauge(
            REQUESTS_IN_PROGRESS,
            "HTTP requests the API's workers are serving right now",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.http = HttpRequestMetrics(app, registry, REQUEST_BUCKETS, self.requests_in_progress, enabled)

        # Every bounded label value exists from the start, so rates and alerts see a 0
        # rather than no series before the first event.
        # The series every accepted prediction adds to are looked up once here, not on every
        # request, and kept as their values: Counter.inc only checks that the amount is not
        # negative (these are counts of records) around the value's inc, a third of its cost.
        self._normal = self.prediction_outcomes.labels(predicted_label_text=LABELS[0])._value
        self._hazardous = self.prediction_outcomes.labels(predicted_label_text=LABELS[1])._value
        for reason in INVALID_REASONS:
            self.invalid_requests.labels(reason=reason)
        for reason in FEEDBACK_REASONS:
            self.invalid_feedback.labels(reason=reason)
        # [feature][bin], in FEATURE_NAMES and bin order, as Baseline.count returns them.
        self._bins = [
            [self.feature_bin_records.labels(feature=f, bin=b)._value for b in BIN_LABELS] for f in FEATURE_NAMES
        ]
        self._outside = [self.feature_out_of_training_range.labels(feature=f)._value for f in FEATURE_NAMES]
        self._fields = {
            (f, r): self.invalid_fields.labels(field=f, reason=r)
            for f in (*FEATURE_NAMES, UNKNOWN_FIELD)
            for r in FIELD_REASONS
            if (f == UNKNOWN_FIELD) == (r == "unknown_field")
        }

    def model_changed(self, model: LoadedModel | None, previous: LoadedModel | None = None) -> None:
        """Publish which model this process serves (or that it serves none).

        Called in each worker, not in the gunicorn master: the master's values would outlive
        a reload, and "livemax" would keep showing the old version. A replaced version's
        series drops to 0 (multiprocess files cannot remove a series) and disappears when
        the worker is next replaced.
        """
        self.model_loaded.set(1 if model is not None else 0)
        _identify(self.model_info, None, previous)
        for name in RUNTIMES:
            self.runtime_info.labels(runtime=name).set(int(model is not None and model.runtime.name == name))
        for reason in FALLBACK_REASONS:
            self.runtime_fallback_info.labels(reason=reason).set(
                int(model is not None and model.runtime.fallback_reason == reason)
            )
        # No baseline is NaN, not 0: an unset gauge exports 0.0, which the drift alert would
        # read as a model trained on no Hazardous record at all. NaN compares false, so no
        # drift verdict is made, and the dashboard shows "no baseline".
        share = model.training_hazardous_share if model is not None else None
        self.training_hazardous_share.set(math.nan if share is None else share)
        inputs = model.inputs if model is not None else None
        for index, feature in enumerate(FEATURE_NAMES):
            for bin_index, bin_label in enumerate(BIN_LABELS):
                expected = inputs.features[index].expected[bin_index] if inputs is not None else math.nan
                self.feature_bin_training_share.labels(feature=feature, bin=bin_label).set(expected)
        if model is None:
            return
        _identify(self.model_info, model, None)

    def predictions_made(
        self,
        hazard_probabilities: list[float],
        label_ids: list[int],
        seconds: float,
        matrix=None,
        inputs: Baseline | None = None,
    ) -> None:
        """Count one accepted request's predictions: one ``inc(n)`` per label, not one per record,
        and, given the model's input baseline, its records per feature bin."""
        records = len(label_ids)
        hazardous = sum(label_ids)
        if hazardous:
            self._hazardous.inc(hazardous)
        if records - hazardous:
            self._normal.inc(records - hazardous)
        observe_one(self.batch_records, records)
        observe_one(self.inference_duration, seconds)
        observe_all(self.hazard_probability, hazard_probabilities)
        if inputs is None or matrix is None:
            return
        per_bin, outside = inputs.count_nonzero(matrix)
        for feature, bin_index, records in per_bin:
            self._bins[feature][bin_index].inc(records)
        for feature, records in outside:
            self._outside[feature].inc(records)

    def challenger_changed(self, model: LoadedModel | None, previous: LoadedModel | None = None) -> None:
        """Publish which challenger this process scores (or none), as model_changed does for the champion."""
        _identify(self.challenger_info, model, previous)

    def challenger_scored_records(self, scored: int, agreed: int) -> None:
        self.challenger_scored.inc(scored)
        if agreed:
            self.challenger_agreed.inc(agreed)

    def add_collector(self, collector) -> None:
        """Export a collector's metrics too, read at each scrape."""
        if isinstance(self.exporter, _FoldAwareGunicornMetrics):
            self.exporter.extra_collectors += (collector,)
        else:
            self.registry.register(collector)

    def feedback_refused(self, reason: str) -> None:
        """Count a refused feedback request by its bounded reason."""
        self.invalid_feedback.labels(reason=reason).inc()

    def fault_injected(self) -> None:
        """Count a request failed on purpose."""
        self.injected_faults.inc()

    def synthetic_request(self, status: int) -> None:
        """Count a marked request, which no other metric counts."""
        self.synthetic_requests.labels(status=str(status)).inc()

    def request_refused(self, reason: str, problems: list[Problem] = ()) -> None:
        """Count a refused prediction request by its bounded reason, and its field problems."""
        self.invalid_requests.labels(reason=reason).inc()
        found: dict[tuple[str, str], int] = {}
        for problem in problems:
            key = problem.field_label()
            if key in self._fields:
                found[key] = found.get(key, 0) + 1
        for key, n in found.items():
            self._fields[key].inc(n)
