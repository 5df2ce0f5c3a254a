"""HVS Prediction API: a Flask app factory serving the hazard classifier with Prometheus metrics.

The request path is ``routes`` (the endpoints) → ``validation`` (the body) → ``model`` (the
estimator, through ``runtime``) → ``metrics``; ``extensions`` reaches the per-app objects,
``model_watcher`` follows the champion alias, ``process_start`` is what each process does once,
``responses`` what every answer shares. Settings come from ``hvs_settings``, the model's
features and training from ``hvs_model``.
"""

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import hvs_store
from flask import Flask
from hvs_settings import ApiSettings
from werkzeug.exceptions import HTTPException

from hvs_api.extensions import ModelState
from hvs_api.feedback import Feedback
from hvs_api.metrics import ApiMetrics
from hvs_api.model_watcher import ModelWatcher
from hvs_api.process_start import load_challenger, load_model_state, start_in_this_process
from hvs_api.responses import CompactJSONProvider, SecurityHeaders, internal_error, json_error

# gunicorn.conf.py's post_worker_init calls start_in_this_process from here.
__all__ = ["create_app", "start_in_this_process"]

try:
    APP_VERSION = version("hvs-api")
except PackageNotFoundError:  # Run from a source tree that was never installed.
    APP_VERSION = "0+unknown"


def _read_secret(path: str) -> str:
    """The secret in ``path``, or "" when no such file exists (an optional Secret not created)."""
    if not path or not Path(path).is_file():
        return ""
    return Path(path).read_text().strip()


def config_from(settings: ApiSettings) -> dict:
    """The app's configuration (Flask's names where Flask has one) from the API's settings."""
    return {
        # Bodies above this are refused with 413 (Flask's own limit, which the routes read too).
        "MAX_CONTENT_LENGTH": settings.max_body_bytes,
        "MAX_BATCH_RECORDS": settings.max_batch_records,
        "METRICS_ENABLED": settings.metrics_enabled,
        "MODEL_MONITORING_ENABLED": settings.model_monitoring_enabled,
        # How often each worker asks the registry whether the champion alias moved (0: never).
        "MODEL_RELOAD_SECONDS": settings.model_reload_seconds,
        # The lab's demo switch: when on, /predict requests carrying "X-Inject-Fault: 1" fail with a 500.
        "FAULT_INJECTION_ENABLED": settings.fault_injection_enabled,
        "MODEL_URI": settings.model_uri_to_serve,
        "CHALLENGER_URI": settings.challenger_uri,
        "CHALLENGER_SHARE": settings.challenger_share,
        "INFERENCE_RUNTIME": settings.inference_runtime,
        # Where true labels are kept (None: beside the model store, read when the app is built).
        "FEEDBACK_DB": settings.feedback_db or None,
        "FEEDBACK_SECRET": settings.feedback_secret or _read_secret(settings.feedback_secret_file),
        "FEEDBACK_MAX_AGE_SECONDS": settings.feedback_max_age_seconds,
        "APP_VERSION": APP_VERSION,
    }


class ApiFlask(Flask):
    """Flask, remembering which of its hooks and views are plain functions.

    Flask asks ``inspect`` whether a function is a coroutine function every time it calls a hook
    or a view (its ``ensure_sync``, which it documents as the method to override): about half a
    microsecond each, six times a request here. The answer for a given function never changes.
    """

    # Enough for every hook and view of the app; anything past it is asked again, as Flask does.
    MAX_REMEMBERED = 256

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._plain_functions: set = set()

    def ensure_sync(self, func):
        if func in self._plain_functions:
            return func
        synced = super().ensure_sync(func)
        if synced is func and len(self._plain_functions) < self.MAX_REMEMBERED:
            self._plain_functions.add(func)
        return synced


def create_app(test_config: dict | None = None) -> Flask:
    """Build the app: its settings from the environment (a malformed value raises SettingError,
    naming the variable), then ``test_config``.

    ``test_config`` may hold ``MODEL`` (a ``LoadedModel`` or None) to skip loading from MLflow,
    with ``CHALLENGER`` beside it, and ``FEEDBACK_DB`` to keep its labels elsewhere.
    """
    app = ApiFlask(__name__)
    app.json = CompactJSONProvider(app)
    app.config.from_mapping(config_from(ApiSettings.from_env()))
    if test_config:
        app.config.from_mapping(test_config)

    from hvs_api.routes import bp

    app.register_blueprint(bp)
    app.register_error_handler(HTTPException, json_error)
    app.register_error_handler(Exception, internal_error)
    app.before_request(start_in_this_process)
    app.wsgi_app = SecurityHeaders(app.wsgi_app)

    metrics = ApiMetrics(app, app.config["APP_VERSION"], enabled=app.config["METRICS_ENABLED"])
    challenger_uri = app.config["CHALLENGER_URI"]
    if "MODEL" in app.config:
        state = ModelState(app.config["MODEL"], "" if app.config["MODEL"] else "no model given")
        state.challenger = app.config.get("CHALLENGER")
    else:
        state = load_model_state(app.config["MODEL_URI"], app.config["INFERENCE_RUNTIME"])
        if challenger_uri:
            state.challenger = load_challenger(challenger_uri, app.config["INFERENCE_RUNTIME"])
    app.extensions["hvs_model"] = state
    app.extensions["hvs_metrics"] = metrics
    ledger_path = Path(app.config["FEEDBACK_DB"] or hvs_store.mlruns_dir() / "feedback.sqlite")
    app.extensions["hvs_feedback"] = Feedback(
        ledger_path, app.config["FEEDBACK_SECRET"], app.config["FEEDBACK_MAX_AGE_SECONDS"]
    )
    metrics.add_collector(app.extensions["hvs_feedback"].collector)
    app.extensions["hvs_watcher"] = ModelWatcher(
        state,
        metrics,
        app.config["MODEL_URI"],
        0.0 if "MODEL" in app.config else app.config["MODEL_RELOAD_SECONDS"],
        app.config["INFERENCE_RUNTIME"],
    )
    app.extensions["hvs_challenger_watcher"] = (
        ModelWatcher(
            state,
            metrics,
            challenger_uri or "",
            0.0 if "MODEL" in app.config else app.config["MODEL_RELOAD_SECONDS"],
            app.config["INFERENCE_RUNTIME"],
            slot="challenger",
        )
        if challenger_uri or state.challenger is not None
        else None
    )
    return app
