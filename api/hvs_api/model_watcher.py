"""Picking up a newly promoted champion without restarting the server.

When the API serves a registry alias (``models:/<name>@champion``, the default), a thread
in each worker asks the registry every ``MODEL_RELOAD_SECONDS`` which version the alias
points to, and loads it when it has changed. The same check loads the first model once a
trainer has registered one, so an API started before training becomes ready by itself.
A failed check or load is logged and the current model keeps serving.

gunicorn's SIGHUP would not do this: the app is preloaded in the master, so restarted
workers would inherit the old model. For the same reason a worker that replaces another runs
one check before its first answer (see ``hvs_api.start_in_this_process``).
"""

import logging
import os
import threading

import hvs_store as store

from hvs_api import model as model_loading
from hvs_api.extensions import ModelState
from hvs_api.metrics import ApiMetrics

log = logging.getLogger(__name__)


def alias_of(uri: str) -> tuple[str, str] | None:
    """``(model name, alias)`` when ``uri`` names a registry alias, else None."""
    if not uri.startswith("models:/") or "@" not in uri:
        return None
    name, _, alias = uri.removeprefix("models:/").partition("@")
    return name, alias


class ModelWatcher:
    """Keeps one process's served model in step with the registry."""

    def __init__(self, state: ModelState, metrics: ApiMetrics, uri: str, interval: float, setting: str = "auto"):
        self.state = state
        self.metrics = metrics
        self.uri = uri
        self.interval = interval
        # INFERENCE_RUNTIME: a reloaded model gets its runtime chosen as the first one did.
        self.setting = setting
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def watching(self) -> bool:
        """True when there is something to watch: an alias, or no model yet."""
        return self.interval > 0 and (alias_of(self.uri) is not None or self.state.model is None)

    def ensure_started(self) -> None:
        """Start the polling thread in this process, once (threads do not survive gunicorn's fork)."""
        if self._pid == os.getpid() or not self.watching:
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the polling thread, if this process started one, and wait for it (for tests and embedders)."""
        self._stopping.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.check_once()

    def check_once(self) -> bool:
        """Load the model again if the alias moved (or none is loaded); True when the model changed."""
        current = self.state.model
        alias = alias_of(self.uri)
        try:
            if alias is not None and current is not None:
                version = store.client().get_model_version_by_alias(*alias).version
                if str(version) == current.version:
                    return False
            loaded = model_loading.load(self.uri, self.setting)
        except Exception as exc:  # The current model keeps serving; the next check tries again.
            log.warning("model check failed, still serving %s: %s", current and current.version, exc)
            return False
        if current is not None and loaded.version == current.version and loaded.run_id == current.run_id:
            return False
        self.state.model, self.state.error = loaded, ""
        self.metrics.model_changed(loaded, previous=current)
        log.info("now serving %s version %s (run %s)", loaded.name, loaded.version, loaded.run_id)
        return True
