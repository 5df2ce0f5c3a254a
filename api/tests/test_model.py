import shutil

import hvs_store as store
import pytest
from hvs_settings import ApiSettings

from hvs_api import model


def served(env: dict) -> str:
    return ApiSettings.from_env(env).model_uri_to_serve


def test_lookup_order():
    assert served({"MODEL_URI": "/models/x", "BEST_MLFLOW_RUN_ID": "abc"}) == "/models/x"
    assert served({"BEST_MLFLOW_RUN_ID": "abc"}) == "runs:/abc/model"
    assert served({}) == f"models:/{store.MODEL_NAME}@{store.CHAMPION_ALIAS}"
    assert served({"MODEL_URI": "", "BEST_MLFLOW_RUN_ID": ""}).endswith("@champion")


def test_champion_carries_its_identity_and_baseline(champion):
    assert champion.name == store.MODEL_NAME
    assert champion.version == "1"
    assert len(champion.run_id) == 32
    assert 0.1 < champion.training_hazardous_share < 0.25


def test_run_id_finds_the_registered_version(champion, session_store):
    by_run = model.load(f"runs:/{champion.run_id}/model")
    assert (by_run.version, by_run.run_id) == (champion.version, champion.run_id)


def test_registry_version_uri(champion, session_store):
    assert model.load(f"models:/{store.MODEL_NAME}/1").run_id == champion.run_id


def test_unknown_run_is_unavailable_with_a_hint(session_store):
    with pytest.raises(model.ModelUnavailable, match="make train"):
        model.load("runs:/0123456789abcdef0123456789abcdef/model")


def test_empty_store_is_unavailable_with_a_hint(tmp_path, use_store):
    use_store(tmp_path / "empty").mkdir()
    with pytest.raises(model.ModelUnavailable, match="make train"):
        model.load(served({}))


def test_corrupt_model_file_is_unavailable(session_store, tmp_path):
    source = next(session_store.glob("artifacts/models/*/artifacts/MLmodel")).parent
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    next(broken.glob("model.*")).write_bytes(b"not a model")
    with pytest.raises(model.ModelUnavailable):
        model.load(str(broken))


def test_a_local_model_folder_loads(session_store):
    folder = next(p.parent for p in session_store.glob("artifacts/models/*/artifacts/MLmodel"))
    loaded = model.load(str(folder))
    assert loaded.hazard_probability([[50.0, 3.0, 200.0, 40.0, 100.0]]).shape == (1,)
