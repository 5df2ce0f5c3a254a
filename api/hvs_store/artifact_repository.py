"""MLflow artifact repository for ``hvs-store:/`` locations (see ``hvs_store``).

MLflow imports this module through the ``mlflow.artifact_repository`` entry point while
it builds its registry, so it must not be imported by a module MLflow itself imports.
"""

from urllib.parse import urlparse

import mlflow
from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

from hvs_store import store_root


class StoreRelativeArtifactRepository(LocalArtifactRepository):
    """A local artifact repository whose ``hvs-store:/`` paths are relative to the store folder."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None, registry_uri: str | None = None):
        relative = urlparse(artifact_uri).path.lstrip("/")
        root = store_root(tracking_uri or mlflow.get_tracking_uri())
        super().__init__(str(root / relative), tracking_uri, registry_uri)
