"""Where the embedded MLflow store lives, and how its artifact locations stay portable.

The store is one folder (``mlruns/`` by default): ``mlflow.db`` (SQLite tracking and
registry) and ``artifacts/``. MLflow writes every artifact location into the database,
and turns local paths into absolute ones, so a store written on the host would point at
host paths inside the container and the other way round. Instead, the experiment's
artifact root is ``hvs-store:/artifacts``, a URI that this module's artifact repository
(``hvs_store.artifact_repository``, registered with MLflow through an entry point in
pyproject.toml) resolves against the folder that holds the database in use. Reads and
writes then land in the same folder wherever it is mounted.
"""

from pathlib import Path

from hvs_settings import StoreSettings

SCHEME = "hvs-store"
ARTIFACT_ROOT = f"{SCHEME}:/artifacts"
DB_FILE = "mlflow.db"

# Names the training step writes and the API reads.
EXPERIMENT = "hvs-hazard-classifier"
MODEL_NAME = "hvs-hazard-classifier"
CHAMPION_ALIAS = "champion"
# The runner-up of the last training, which the API scores beside the champion.
CHALLENGER_ALIAS = "challenger"
# The run metric holding the Hazardous share of the training data (the drift baseline).
BASELINE_METRIC = "train_hazardous_share"


def mlruns_dir() -> Path:
    """Return the store folder: ``MLRUNS_DIR`` or ``./mlruns``, made absolute (read at each call:
    training and the tests point it elsewhere within one process)."""
    return StoreSettings.from_env().mlruns_path


def tracking_uri() -> str:
    """Return the store folder's SQLite database as an MLflow tracking and registry URI.

    ``MLFLOW_TRACKING_URI`` is deliberately not consulted: MLflow itself rewrites that variable
    whenever a tracking URI is set, so it would not reliably name the store in use.
    """
    return f"sqlite:///{mlruns_dir() / DB_FILE}"


def store_root(uri: str | None) -> Path:
    """Return the folder that artifact locations are relative to, for a tracking URI."""
    if uri and uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent
    return mlruns_dir()


def client():
    """Point MLflow at the store (tracking and registry) and return a client for it."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
