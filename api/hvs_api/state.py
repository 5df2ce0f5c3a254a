"""What one app instance holds at run time: the served model and its metrics."""

from dataclasses import dataclass

from flask import current_app

from hvs_api.metrics import ApiMetrics
from hvs_api.model import LoadedModel


@dataclass
class ModelState:
    """The model being served, or why there is none."""

    model: LoadedModel | None = None
    error: str = ""


def model_state() -> ModelState:
    """The current app's model state."""
    return current_app.extensions["hvs_model"]


def api_metrics() -> ApiMetrics:
    """The current app's metrics."""
    return current_app.extensions["hvs_metrics"]
