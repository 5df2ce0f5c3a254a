"""Fixtures shared by the API's unit tests."""

import json
import os
from pathlib import Path

import pytest

from hvs_api import create_app, model, train

ROOT = Path(__file__).resolve().parents[2]
# Small enough to train in seconds, large enough for every candidate to learn the rule.
TEST_SAMPLES = 4000


@pytest.fixture(scope="session")
def mlruns(tmp_path_factory) -> Path:
    """A store folder with the candidates trained and a champion registered, once per session."""
    folder = tmp_path_factory.mktemp("store") / "mlruns"
    previous = os.environ.get("MLRUNS_DIR")
    os.environ["MLRUNS_DIR"] = str(folder)
    try:
        train.train(samples=TEST_SAMPLES, seed=7)
        yield folder
    finally:
        if previous is None:
            del os.environ["MLRUNS_DIR"]
        else:
            os.environ["MLRUNS_DIR"] = previous


@pytest.fixture(scope="session")
def champion(mlruns) -> model.LoadedModel:
    """The registered champion, loaded the way the API loads it."""
    return model.load(model.model_uri_from_env({}))


@pytest.fixture
def app(champion):
    """An app serving the champion."""
    return create_app({"TESTING": True, "MODEL": champion})


@pytest.fixture
def client(app):
    """A test client for ``app``."""
    return app.test_client()


@pytest.fixture
def payloads() -> dict[str, dict]:
    """The shipped example payloads, by expected label."""
    return {
        "Normal": json.loads((ROOT / "test_payload.json").read_text()),
        "Hazardous": json.loads((ROOT / "test_payload_hazardous.json").read_text()),
    }
