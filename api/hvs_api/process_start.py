"""What each process of the API does once: load the model the master preloads, and, in each
worker, publish that model's metrics and start the watcher of the champion alias."""

import logging
import os

from hvs_api import model as model_loading
from hvs_api.extensions import ModelState, api_metrics, challenger_watcher, model_state, watcher

log = logging.getLogger(__name__)


def load_model_state(uri: str, setting: str) -> ModelState:
    try:
        loaded = model_loading.load(uri, setting)
    except model_loading.ModelUnavailable as exc:
        log.error("no model loaded, /predict answers 503 and /ready is not ready: %s", exc)
        return ModelState(None, str(exc))
    log.info("serving model %s version %s (run %s) from %s", loaded.name, loaded.version, loaded.run_id, uri)
    return ModelState(loaded)


def load_challenger(uri: str, setting: str):
    """The challenger at ``uri``, or None (logged) when there is none: it is optional."""
    try:
        loaded = model_loading.load(uri, setting)
    except model_loading.ModelUnavailable as exc:
        log.info("no challenger scored beside the champion: %s", exc)
        return None
    log.info(
        "scoring challenger %s version %s (run %s) beside the champion", loaded.name, loaded.version, loaded.run_id
    )
    return loaded


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
    state = model_state()
    pid = os.getpid()
    if state.started_pid == pid:  # every request after the first: a before_request hook
        return
    model_watcher, other = watcher(), challenger_watcher()
    if state.published_pid != pid:
        state.published_pid = pid
        if not (model_watcher.watching and model_watcher.check_once()):
            api_metrics().model_changed(state.model)
        if other is not None and not (other.watching and other.check_once()):
            api_metrics().challenger_changed(state.challenger)
    model_watcher.ensure_started()
    if other is not None:
        other.ensure_started()
    state.started_pid = pid
