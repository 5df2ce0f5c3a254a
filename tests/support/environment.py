"""The process environment: restoring variables MLflow rewrites, a run's id in a store, and which
modules a fresh interpreter loads.
"""

import contextlib
import os
import subprocess
import sys
from pathlib import Path

# MLflow copies every URI it is pointed at into these (for subprocesses), so store.client() sets them.
MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def environment_restored(*names: str):
    """On leaving the block, put the named environment variables back as they were, set or not."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_id_of(mlruns: Path, candidate: str) -> str:
    """The id of the training run of one candidate in a store."""
    import hvs_store as store

    with environment_restored("MLRUNS_DIR", *MLFLOW_URI_VARIABLES):
        os.environ["MLRUNS_DIR"] = str(mlruns)
        client = store.client()
        experiment = client.get_experiment_by_name(store.EXPERIMENT).experiment_id
        [run] = client.search_runs([experiment], f"attributes.run_name = '{candidate}'")
        return run.info.run_id


# The API's own packages and its heavy dependencies: what the other deployables (the alert
# receiver, the MLflow UI with the store's plugin) must not load.
THE_APIS_MODULES = ("flask", "sklearn", "prometheus_flask_exporter", "hvs_api")


def modules_of_the_api_loaded_by(statement: str, watched: tuple[str, ...] = THE_APIS_MODULES) -> list[str]:
    """Which of ``watched`` (top-level modules) a fresh interpreter has loaded after ``statement``."""
    probe = f"import sys; {statement}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    result = subprocess.run([sys.executable, "-W", "error", "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(result.stdout.split())
    return [m for m in watched if m in loaded]
