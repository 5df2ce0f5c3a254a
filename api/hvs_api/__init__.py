"""HVS Prediction API: a Flask app factory serving the hazard classifier with Prometheus metrics."""

import logging
import os
from importlib.metadata import PackageNotFoundError, version

from flask import Flask, jsonify
from hvs_settings import ApiSettings
from werkzeug.exceptions import HTTPException

from hvs_api import model as model_loading
from hvs_api.metrics import ApiMetrics
from hvs_api.reloader import ModelWatcher
from hvs_api.state import ModelState, api_metrics, model_state, watcher

log = logging.getLogger(__name__)

try:
    APP_VERSION = version("hvs-api")
except PackageNotFoundError:  # Run from a source tree that was never installed.
    APP_VERSION = "0+unknown"


def config_from(settings: ApiSettings) -> dict:
    """The app's configuration (Flask's names where Flask has one) from the API's settings."""
    return {
        # Bodies above this are refused with 413 (Flask's own limit, which the routes read too).
        "MAX_CONTENT_LENGTH": settings.max_body_bytes,
        "MAX_BATCH_RECORDS": settings.max_batch_records,
        "METRICS_ENABLED": settings.metrics_enabled,
        # How often each worker asks the registry whether the champion alias moved (0: never).
        "MODEL_RELOAD_SECONDS": settings.model_reload_seconds,
        # The lab's demo switch: when on, /predict requests carrying "X-Inject-Fault: 1" fail with a 500.
        "FAULT_INJECTION_ENABLED": settings.fault_injection_enabled,
        "MODEL_URI": settings.model_uri_to_serve,
        "INFERENCE_RUNTIME": settings.inference_runtime,
        "APP_VERSION": APP_VERSION,
    }


def _load_model(uri: str, setting: str) -> ModelState:
    try:
        loaded = model_loading.load(uri, setting)
    except model_loading.ModelUnavailable as exc:
        log.error("no model loaded, /predict answers 503 and /ready is not ready: %s", exc)
        return ModelState(None, str(exc))
    log.info("serving model %s version %s (run %s) from %s", loaded.name, loaded.version, loaded.run_id, uri)
    return ModelState(loaded)


def _json_error(error: HTTPException):
    name = (error.name or "error").lower().replace(" ", "_")
    response = jsonify({"error": name, "message": error.description})
    response.status_code = error.code
    # A 405 says which methods would do (RFC 9110), as Werkzeug's own answer does.
    if getattr(error, "valid_methods", None):
        response.headers["Allow"] = ", ".join(error.valid_methods)
    return response


def _internal_error(error: Exception):
    # The client gets no stack trace; the log has it.
    log.exception("unhandled error", exc_info=error)
    return jsonify({"error": "internal_error", "message": "the server failed to handle the request"}), 500


def start_in_this_process():
    """Publish this process's model and start its watcher, once per process (call in an app context).

    gunicorn's post_worker_init hook calls it as each worker starts; the first request of any
    other process (the Flask test client, a WSGI server without the hook) does too.
    """
    # gunicorn forks workers from the master that built the app: each worker publishes its
    # model's metrics and starts its own watcher thread. A worker forked
    # after a promotion (a crash, MAX_REQUESTS) starts with the master's older model, so it
    # first asks the registry which version the alias names: one query per new worker, and
    # check_once publishes the model it loads (the old version's series at 0).
    state, model_watcher = model_state(), watcher()
    if state.published_pid != os.getpid():
        state.published_pid = os.getpid()
        if not (model_watcher.watching and model_watcher.check_once()):
            api_metrics().model_changed(state.model)
    model_watcher.ensure_started()


# A JSON API: nothing to sniff, cache, frame or load into a page.
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
    ("X-Frame-Options", "DENY"),
)


def _security_headers(response):
    # No view sets any of these, so they are appended in one call rather than looked up
    # one by one (a quarter of the cost, on every response).
    response.headers.extend(SECURITY_HEADERS)
    return response


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: its settings from the environment (a malformed value raises SettingError,
    naming the variable), then ``test_config``.

    ``test_config`` may hold ``MODEL`` (a ``LoadedModel`` or None) to skip loading from MLflow.
    """
    app = Flask(__name__)
    app.config.from_mapping(config_from(ApiSettings.from_env()))
    if test_config:
        app.config.from_mapping(test_config)

    from hvs_api.routes import bp

    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, _json_error)
    app.register_error_handler(Exception, _internal_error)
    app.before_request(start_in_this_process)
    app.after_request(_security_headers)

    metrics = ApiMetrics(app, app.config["APP_VERSION"], enabled=app.config["METRICS_ENABLED"])
    if "MODEL" in app.config:
        state = ModelState(app.config["MODEL"], "" if app.config["MODEL"] else "no model given")
    else:
        state = _load_model(app.config["MODEL_URI"], app.config["INFERENCE_RUNTIME"])
    app.extensions["hvs_model"] = state
    app.extensions["hvs_metrics"] = metrics
    app.extensions["hvs_watcher"] = ModelWatcher(
        state,
        metrics,
        app.config["MODEL_URI"],
        0.0 if "MODEL" in app.config else app.config["MODEL_RELOAD_SECONDS"],
        app.config["INFERENCE_RUNTIME"],
    )
    return app
