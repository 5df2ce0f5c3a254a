"""The API's HTTP endpoints: predictions, liveness, readiness and the OpenAPI description."""

import random
import time

from flask import Blueprint, current_app, jsonify, make_response, request
from prometheus_flask_exporter import PrometheusMetrics
from werkzeug.exceptions import ClientDisconnected, RequestEntityTooLarge

from hvs_api import feedback as feedback_requests
from hvs_api import openapi, prediction_body, validation
from hvs_api.extensions import api_metrics, feedback, model_state
from hvs_api.feedback_ledger import AlreadyLabelled

bp = Blueprint("api", __name__)

# The request header that asks for an injected failure, honoured only when the switch is on.
FAULT_HEADER = "X-Inject-Fault"
# The request header that marks a prediction as synthetic: the lab's black-box probe of
# /predict (blackbox/blackbox.yml, module hvs_api_predict) sends it. Such a request is answered
# like any other, but it is not a user's: it stays out of the HTTP request metrics (and so out
# of the request SLOs and the traffic alerts, which would otherwise never see traffic stop)
# and out of the model's metrics (the prediction mix and the drift share would lean towards
# the probe's one fixed record), and is counted apart, in hvs_api_synthetic_requests_total.
# Any non-empty value marks it; the probe names itself ("blackbox").
SYNTHETIC_HEADER = "X-HVS-Synthetic"


# The header as the WSGI server hands it over: looked up in the environ, a dict, rather than
# through werkzeug's header view, which builds this key from the name on every call.
_SYNTHETIC_KEY = "HTTP_" + SYNTHETIC_HEADER.upper().replace("-", "_")


def _synthetic() -> bool:
    return bool(request.environ.get(_SYNTHETIC_KEY, "").strip())


def _refused(error: validation.RequestError, counted: bool = True):
    if counted:
        api_metrics().request_refused(error.reason, error.problems)
    return jsonify(error.as_dict()), error.status


def _json_body():
    """The decoded JSON body, or a RequestError (wrong media type, too large, incomplete, not JSON)."""
    environ = request.environ
    # The usual header is compared as it is; any other goes through Werkzeug's parsing (case, parameters).
    if environ.get("CONTENT_TYPE") != "application/json" and request.mimetype != "application/json":
        raise validation.refuse(
            415,
            "unsupported_media_type",
            f"Content-Type must be application/json, got {request.mimetype or 'none'!r}",
        )
    return validation.parse_json(_body(environ))


def _body(environ: dict) -> bytes:
    """The request body, or a RequestError when it is too large or never arrives whole."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]

    def too_large():
        return validation.refuse(413, "body_too_large", f"the body is larger than {limit} bytes")

    def incomplete():
        return validation.refuse(400, "body_incomplete", "the body ended before it was complete")

    def read(size: int) -> bytes:
        """At most ``size`` bytes of the server's own stream. OSError covers the client closing or
        going quiet (CLIENT_IDLE_SECONDS, hvs_api.gunicorn_worker) and a broken chunk framing."""
        try:
            return environ["wsgi.input"].read(size)
        except (OSError, ValueError) as exc:
            raise incomplete() from exc

    length = environ.get("CONTENT_LENGTH", "")
    if length.isdigit() and length.isascii() and environ.get("HTTP_TRANSFER_ENCODING") != "chunked":
        # The usual request, read in one call: Werkzeug's wrappers around the stream (a limit,
        # then reads until the end) cost about as much as parsing a record. The length is the
        # client's word; a body that ends before it is incomplete.
        size = int(length)
        if size > limit:
            raise too_large()
        raw = read(size)
        if len(raw) < size:
            raise incomplete()
        return raw
    if request.content_length is None:
        # A chunked body has no length to check up front, and werkzeug's limit would cut it
        # at the limit without a word (a 400 for broken JSON): read one byte past the limit
        # to know.
        raw = read(limit + 1)
        if len(raw) > limit:
            raise too_large()
        return raw
    try:
        return request.get_data(cache=False)
    except RequestEntityTooLarge as exc:
        raise too_large() from exc
    except ClientDisconnected as exc:
        # The client closed the connection, or stopped sending for CLIENT_IDLE_SECONDS.
        raise incomplete() from exc


@bp.post("/predict")
def predict():
    """Predict one record (``{"prediction": ...}``) or a batch (``{"predictions": [...]}``)."""
    if _synthetic():
        return _synthetic_predict()
    return _predict(counted=True)


# The exporter's own switch leaves the request out of its default HTTP metrics.
@PrometheusMetrics.do_not_track()
def _synthetic_predict():
    """A marked request: the same answer, counted only in the synthetic counter, by status."""
    status = 500  # What the client gets if the view raises.
    try:
        response = make_response(_predict(counted=False))
        status = response.status_code
        return response
    finally:
        api_metrics().synthetic_request(status)


def _predict(counted: bool):
    # Each reach into Flask's context proxies costs about a microsecond: the app's objects once.
    config, state, metrics = current_app.config, model_state(), api_metrics()
    model = state.model
    if model is None:
        return jsonify({"error": "model_not_loaded", "message": state.error}), 503
    if config["FAULT_INJECTION_ENABLED"] and request.headers.get(FAULT_HEADER, "").lower() in ("1", "true"):
        if counted:
            metrics.fault_injected()
        return jsonify({"error": "injected_fault", "message": f"failed on purpose ({FAULT_HEADER} is set)"}), 500
    try:
        features = validation.validate(_json_body(), config["MAX_BATCH_RECORDS"])
    except validation.RequestError as error:
        return _refused(error, counted)

    start = time.perf_counter()
    probability = model.hazard_probability(features.matrix)
    elapsed = time.perf_counter() - start
    # Hazardous exactly where predict() would say so: the larger of the two class probabilities.
    # Plain Python from here: numpy's per-call cost is larger than the work on a few records.
    probabilities = probability.tolist()
    label_ids = [int(p > 0.5) for p in probabilities]
    monitoring = config["MODEL_MONITORING_ENABLED"]
    if counted:
        metrics.predictions_made(
            probabilities, label_ids, elapsed, features.matrix, model.inputs if monitoring else None
        )

    ids = None
    if monitoring:
        challenger, challenger_ids = _challenger_labels(
            state.challenger, config["CHALLENGER_SHARE"], features.matrix, label_ids, metrics if counted else None
        )
        # The id to send the true label back with (POST /feedback), with both models' answers in it.
        ids = feedback().ids().issue(model.version, label_ids, challenger, challenger_ids)
    # {"prediction": {...}} or {"predictions": [...]}, beside {"model": {name, version, run_id}};
    # each prediction has label, label_id, hazard_probability, model_version and id.
    answer = prediction_body.for_model(model.name, model.version, model.run_id)
    text = answer.render(probabilities, label_ids, ids, features.is_batch)
    return current_app.response_class(text, mimetype="application/json")


def _challenger_labels(
    challenger, share: float, matrix, label_ids: list[int], metrics
) -> tuple[str | None, list[int | None] | None]:
    """The challenger's labels for a share of the records (None for the others), or (None, None)
    without a challenger, its agreement counted in ``metrics`` (None: not counted). Whatever it
    does, the answer is the champion's: a challenger that fails is logged and skipped."""
    if challenger is None or share <= 0:
        return None, None
    records = len(label_ids)
    # One draw per record, in plain Python: at the default share most requests score nothing,
    # and numpy's draw and index would cost more than the rest of this function.
    chosen = list(range(records)) if share >= 1 else [i for i in range(records) if random.random() < share]
    labels: list[int | None] = [None] * records
    if chosen:
        try:
            theirs = challenger.hazard_probability(matrix[chosen]).tolist()
        except Exception:  # Scoring a challenger must never cost the client its answer.
            current_app.logger.exception(
                "challenger %s failed to score; answering with the champion", challenger.version
            )
            return None, None
        agreed = 0
        for index, probability in zip(chosen, theirs, strict=True):
            labels[index] = label = int(probability > 0.5)
            agreed += label == label_ids[index]
        if metrics is not None:
            metrics.challenger_scored_records(len(chosen), agreed)
    return challenger.version, labels


@bp.post("/feedback")
def post_feedback():
    """Record the true labels of earlier predictions: one (``{"id", "label"}``) or a batch (``{"feedback": [...]}``)."""
    store = feedback()
    try:
        labels, oldest = feedback_requests.parse(
            _json_body(), current_app.config["MAX_BATCH_RECORDS"], store.ids(), store.max_age_seconds
        )
        try:
            store.ledger().record(labels, oldest=oldest)
        except AlreadyLabelled as exc:
            problems = [
                validation.Problem(
                    "already_labelled",
                    f"{labels[i].field} has a label already; nothing of this request was recorded",
                    labels[i].field,
                )
                for i in exc.positions
            ]
            raise validation.RequestError(409, problems) from exc
    except validation.RequestError as error:
        api_metrics().feedback_refused(error.reason)
        return jsonify(error.as_dict()), error.status
    except feedback_requests.LedgerUnavailable as exc:
        # Not the client's fault: nothing is refused, the server cannot record.
        return jsonify({"error": "feedback_unavailable", "message": str(exc)}), 503
    return jsonify({"recorded": len(labels)})


@bp.get("/health")
def health():
    """Liveness: always 200 while the process serves, with the model's identity when one is loaded."""
    state = model_state()
    return jsonify(
        {
            "status": "ok",
            "ready": state.model is not None,
            "version": current_app.config["APP_VERSION"],
            "model": state.model.describe() if state.model else None,
        }
    )


@bp.get("/ready")
def ready():
    """Readiness: 200 once a model is loaded, 503 with the reason before."""
    state = model_state()
    if state.model is None:
        return jsonify({"status": "not ready", "ready": False, "model": None, "reason": state.error}), 503
    return jsonify({"status": "ready", "ready": True, "model": state.model.describe()})


@bp.get("/openapi.json")
def openapi_document():
    """The OpenAPI description of this API."""
    config = current_app.config
    return jsonify(openapi.build(config["APP_VERSION"], config["MAX_BATCH_RECORDS"], config["MAX_CONTENT_LENGTH"]))


@bp.get("/")
def index():
    """A map of the API for someone who opens it in a browser."""
    return jsonify(
        {
            "service": "HVS Prediction API",
            "endpoints": {
                "POST /predict": 'one record or {"records": [...]}',
                "POST /feedback": '{"id": ..., "label": ...} or {"feedback": [...]}: true labels of predictions',
                "GET /health": "liveness and model identity",
                "GET /ready": "readiness (a model is loaded)",
                "GET /metrics": "Prometheus metrics",
                "GET /openapi.json": "OpenAPI description",
            },
        }
    )
