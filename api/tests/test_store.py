"""The model store's package: the hvs-store:/ artifact locations MLflow resolves through it."""

from tests.support.environment import modules_of_the_api_loaded_by


def test_mlflow_loads_the_stores_plugin_without_the_api():
    """MLflow imports every artifact-repository plugin it has an entry point for when it is
    imported: the MLflow UI process would load Flask's app and the API with it if the plugin
    lived in the API's package."""
    resolve = (
        "import mlflow; from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository; "
        "repository = get_artifact_repository('hvs-store:/1/abc/artifacts'); "
        "assert type(repository).__module__ == 'hvs_store.artifact_repository'"
    )
    assert modules_of_the_api_loaded_by(resolve) == []
    assert "hvs_api" in modules_of_the_api_loaded_by("import hvs_api")
