"""What one app instance holds at run time: the served model, its metrics and its feedback."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from flask import current_app

from hvs_api.feedback import Feedback
from hvs_api.metrics import ApiMetrics
from hvs_api.model import LoadedModel

if TYPE_CHECKING:
    from hvs_api.model_watcher import ModelWatcher


@dataclass
class ModelState:
    """The model being served, or why there is none."""

    model: LoadedModel | None = None
    error: str = ""
    # The model scored beside the champion (the registry's challenger alias), never answering.
    challenger: LoadedModel | None = None
    # The process that last published the model's metrics (see ApiMetrics.model_changed).
    published_pid: int | None = None
    # The process whose start (process_start.start_in_this_process) is done: every later
    # request of that process skips it.
    started_pid: int | None = None


def model_state() -> ModelState:
    """The current app's model state."""
    return current_app.extensions["hvs_model"]


def watcher() -> "ModelWatcher":
    """The current app's model watcher."""
    return current_app.extensions["hvs_watcher"]


def challenger_watcher() -> "ModelWatcher | None":
    """The current app's challenger watcher, None when no challenger is scored."""
    return current_app.extensions["hvs_challenger_watcher"]


def api_metrics() -> ApiMetrics:
    """The current app's metrics."""
    return current_app.extensions["hvs_metrics"]


def feedback() -> Feedback:
    """The current app's feedback ledger and prediction ids."""
    return current_app.extensions["hvs_feedback"]
