"""Picking up a newly promoted champion without restarting the server.

When the API serves a registry alias (``models:/<name>@champion``, the default), a thread
in each worker asks the registry every ``MODEL_RELOAD_SECONDS`` which version the alias
points to, and loads it when it has changed. The same check loads the first model once a
trainer has registered one, so an API started before training becomes ready by itself.
A failed check or load is logged and the current model keeps serving.

gunicorn's SIGHUP would not do this: the app is preloaded in the master, so restarted
workers would inherit the old model. For the same reason a worker that replaces another runs
one check before its first answer (see ``hvs_api.start_in_this_process``).

A second watcher follows the ``challenger`` alias into ``ModelState.challenger``: there, an alias
that is gone or a model that cannot load means no challenger (it is optional), not an error.
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

    def __init__(
        self,
        state: ModelState,
        metrics: ApiMetrics,
        uri: str,
        interval: float,
        setting: str = "auto",
        slot: str = "model",
    ):
        self.state = state
        self.metrics = metrics
        self.uri = uri
        # Which of the state's models this watcher keeps: "model" (the champion) or "challenger".
        self.slot = slot
        self.interval = interval
        # INFERENCE_RUNTIME: a reloaded model gets its runtime chosen as the first one did.
        self.setting = setting
        self._pid: int | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def watching(self) -> bool:
        """True when there is something to watch: an alias, or no model yet."""
        return self.interval > 0 and (alias_of(self.uri) is not None or getattr(self.state, self.slot) is None)

    def ensure_started(self) -> None:
        """Start the polling thread in this process, once (threads do not survive gunicorn's fork)."""
        if self._pid == os.getpid() or not self.watching:
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name=f"model-watcher-{self.slot}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the polling thread, if this process started one, and wait for it (for tests and embedders)."""
        self._stopping.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join()

    def publish(self, model, previous) -> None:
        """Publish this slot's model (or none) in the metrics."""
        if self.slot == "model":
            self.metrics.model_changed(model, previous=previous)
        else:
            self.metrics.challenger_changed(model, previous=previous)

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            self.check_once()

    def check_once(self) -> bool:
        """Load the model again if the alias moved (or none is loaded); True when the model changed."""
        current = getattr(self.state, self.slot)
        alias = alias_of(self.uri)
        try:
            if alias is not None and current is not None:
                version = store.client().get_model_version_by_alias(*alias).version
                if str(version) == current.version:
                    return False
            loaded = model_loading.load(self.uri, self.setting)
        except Exception as exc:
            if self.slot == "challenger":  # Optional: without one, only the champion is scored.
                if current is not None:
                    log.info("no challenger any more (%s): scoring the champion alone", exc)
                    self.state.challenger = None
                    self.publish(None, previous=current)
                    return True
                return False
            # The current model keeps serving; the next check tries again.
            log.warning("model check failed, still serving %s: %s", current and current.version, exc)
            return False
        if current is not None and loaded.version == current.version and loaded.run_id == current.run_id:
            return False
        setattr(self.state, self.slot, loaded)
        if self.slot == "model":
            self.state.error = ""
        self.publish(loaded, previous=current)
        log.info(
            "now %s %s version %s (run %s)",
            "serving" if self.slot == "model" else "scoring challenger",
            loaded.name,
            loaded.version,
            loaded.run_id,
        )
        return True
