"""Finding and loading the hazard classifier from MLflow.

Which model: ``ApiSettings.model_uri_to_serve`` (``MODEL_URI``, then ``BEST_MLFLOW_RUN_ID``,
then the registered champion ``models:/hvs-hazard-classifier@champion``).

Serving calls the model directly with a numpy array: MLflow's pyfunc wrapper would build a
DataFrame per request and cost about three times the model call. A tree ensemble is served
through treelite when it answers exactly as the estimator does (``hvs_api.runtime``);
``INFERENCE_RUNTIME=sklearn`` keeps scikit-learn for every model.
"""

import logging
from dataclasses import dataclass

import hvs_store as store
import numpy as np
from hvs_model import baseline as feature_baseline
from hvs_model.features import FEATURE_NAMES
from hvs_settings import ApiSettings
from hvs_store import BASELINE_METRIC, MODEL_NAME

from hvs_api import runtime as runtimes

log = logging.getLogger(__name__)

TRAIN_HINT = "Train one with `make train` (or `docker compose run --rm trainer`), then restart or reload the API."


class ModelUnavailable(Exception):
    """No usable model could be loaded; the message says why and how to fix it."""


@dataclass(frozen=True)
class LoadedModel:
    """A loaded classifier and where it came from."""

    estimator: object
    uri: str
    name: str
    version: str
    run_id: str
    # Hazardous share of the training data, the baseline for the drift alert (None if unknown).
    training_hazardous_share: float | None
    # What computes the probabilities: treelite or the estimator itself (hvs_api.runtime).
    runtime: runtimes.Runtime
    # Each feature's training distribution, the baseline of the input drift rules (None for a
    # model trained before it was logged: its inputs are then not binned).
    inputs: feature_baseline.Baseline | None = None

    def hazard_probability(self, x: np.ndarray) -> np.ndarray:
        """Probability of the Hazardous class for each row of ``x`` (columns in ``FEATURE_NAMES`` order)."""
        return self.runtime.predict(x)

    def describe(self) -> dict:
        """JSON-ready identity of the model, as ``/health`` and ``/ready`` show it."""
        return {
            "name": self.name,
            "version": self.version,
            "run_id": self.run_id,
            "uri": self.uri,
            "training_hazardous_share": self.training_hazardous_share,
            "runtime": self.runtime.name,
            "runtime_fallback_reason": self.runtime.fallback_reason,
            "feature_baseline": self.inputs is not None,
        }


def _registry_identity(client, uri: str, run_id: str) -> tuple[str, str]:
    """Return ``(name, version)`` from the registry, or a placeholder version when unregistered."""
    if uri.startswith("models:/") and not uri.startswith("models:/m-"):
        name, _, ref = uri.removeprefix("models:/").partition("@")
        if ref:
            return name, client.get_model_version_by_alias(name, ref).version
        name, _, version = uri.removeprefix("models:/").partition("/")
        return name, version
    if run_id:
        versions = client.search_model_versions(f"run_id = '{run_id}'")
        if versions:
            newest = max(versions, key=lambda v: int(v.version))
            return newest.name, newest.version
    return MODEL_NAME, "unregistered"


def _input_baseline(run_id: str) -> feature_baseline.Baseline | None:
    """The run's feature baseline, or None (logged) when it has none or an unreadable one."""
    import mlflow

    if not run_id:
        return None
    try:
        return feature_baseline.Baseline.from_dict(
            mlflow.artifacts.load_dict(f"runs:/{run_id}/{feature_baseline.ARTIFACT}")
        )
    # A model from before the baseline was logged still serves; its inputs are not binned.
    except Exception as exc:
        log.warning("run %s has no usable %s (%s): input drift is not measured", run_id, feature_baseline.ARTIFACT, exc)
        return None


def load(uri: str, setting: str | None = None) -> LoadedModel:
    """Load the model at ``uri`` and its registry metadata, or raise ``ModelUnavailable``.

    ``setting`` is INFERENCE_RUNTIME's value (read from the API's settings when None).
    """
    import mlflow
    import mlflow.sklearn

    client = store.client()
    try:
        info = mlflow.models.get_model_info(uri)
        estimator = mlflow.sklearn.load_model(uri)
        run_id = info.run_id or ""
        name, version = _registry_identity(client, uri, run_id)
        baseline = client.get_run(run_id).data.metrics.get(BASELINE_METRIC) if run_id else None
    # Loading runs code from MLflow, skops and the store: whatever fails, the API must stay up
    # and say why, so every error becomes ModelUnavailable.
    except Exception as exc:
        raise ModelUnavailable(
            f"could not load model {uri!r} from {store.tracking_uri()}: {exc}. {TRAIN_HINT}"
        ) from exc

    n_features = getattr(estimator, "n_features_in_", None)
    if not hasattr(estimator, "predict_proba") or n_features != len(FEATURE_NAMES):
        raise ModelUnavailable(
            f"model {uri!r} is not a classifier over the {len(FEATURE_NAMES)} features {', '.join(FEATURE_NAMES)} "
            f"(it takes {n_features} inputs). {TRAIN_HINT}"
        )
    # Every worker and every reload pays for the choice (treelite's build and its check): logged.
    chosen = runtimes.choose(estimator, setting or ApiSettings.from_env().inference_runtime)
    log.info("model %s version %s: %s", name, version, runtimes.describe(chosen))
    return LoadedModel(estimator, uri, name, str(version), run_id, baseline, chosen, _input_baseline(run_id))
