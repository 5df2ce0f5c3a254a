"""Fixtures shared by the API's unit tests."""

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import thread as futures_thread
from pathlib import Path

import hvs_store as store
import pytest
from flask import Flask
from hvs_model import train

from hvs_api import create_app, model
from tests.support.environment import MLFLOW_URI_VARIABLES, environment_restored
from tests.support.paths import HAZARDOUS, NORMAL

# Small enough to train in seconds, large enough for every candidate to learn the rule.
TEST_SAMPLES = 4000
# pytest names the running test and its phase here, so it differs between setup and teardown.
PYTEST_VARIABLE = "PYTEST_CURRENT_TEST"


@contextlib.contextmanager
def store_at(folder: Path) -> Iterator[Path]:
    """MLRUNS_DIR names ``folder`` inside the block only; MLflow's URI variables are put back too."""
    with environment_restored("MLRUNS_DIR", *MLFLOW_URI_VARIABLES):
        os.environ["MLRUNS_DIR"] = str(folder)
        yield folder


def is_pool_worker(thread: threading.Thread) -> bool:
    """A worker of a process-wide ThreadPoolExecutor (MLflow keeps one for artifact downloads and
    grows it on demand): shared by design and idle between tasks, not something a test left."""
    return getattr(thread, "_target", None) is futures_thread._worker


@pytest.fixture(autouse=True)
def leaves_no_thread_or_variable_behind() -> Iterator[None]:
    """Fails a test that leaves a thread it started running, or the environment changed."""
    threads_before = set(threading.enumerate())
    environment_before = dict(os.environ)
    yield
    running = sorted(
        thread.name for thread in threading.enumerate() if thread not in threads_before and not is_pool_worker(thread)
    )
    changed = sorted(
        name
        for name in environment_before.keys() | os.environ.keys()
        if name != PYTEST_VARIABLE and environment_before.get(name) != os.environ.get(name)
    )
    assert not running, f"the test left these threads running: {running}"
    assert not changed, f"the test left these environment variables changed: {changed}"


@pytest.fixture(scope="session")
def mlruns(tmp_path_factory) -> Path:
    """A store folder with the candidates trained and a champion registered, once per session."""
    folder = tmp_path_factory.mktemp("store") / "mlruns"
    with store_at(folder):
        train.train(samples=TEST_SAMPLES, seed=7)
    return folder


@pytest.fixture(scope="session")
def champion(mlruns) -> model.LoadedModel:
    """The registered champion, loaded from the session's store by its alias, as the API loads it."""
    with store_at(mlruns):
        return model.load(f"models:/{store.MODEL_NAME}@{store.CHAMPION_ALIAS}")


@pytest.fixture(scope="session")
def challenger(mlruns) -> model.LoadedModel:
    """The registered challenger (training's runner-up), loaded from the session's store."""
    with store_at(mlruns):
        return model.load(f"models:/{store.MODEL_NAME}@{store.CHALLENGER_ALIAS}")


@pytest.fixture
def use_store(monkeypatch) -> Iterator[Callable[[Path], Path]]:
    """``use_store(folder)`` points MLRUNS_DIR at ``folder`` until the test ends."""

    def point_at(folder: Path) -> Path:
        monkeypatch.setenv("MLRUNS_DIR", str(folder))
        return folder

    with environment_restored(*MLFLOW_URI_VARIABLES):
        yield point_at


@pytest.fixture
def session_store(mlruns, use_store) -> Path:
    """The session's store, named by MLRUNS_DIR for this test only."""
    return use_store(mlruns)


@pytest.fixture
def make_app(tmp_path_factory) -> Iterator[Callable[[dict], Flask]]:
    """``make_app(config)`` is ``create_app(config)``, with a feedback ledger of its own unless the
    config names one; each app's model watcher is stopped when the test ends."""
    apps: list[Flask] = []

    def make(config: dict) -> Flask:
        ledger = tmp_path_factory.mktemp("feedback") / "feedback.sqlite"
        apps.append(create_app({"FEEDBACK_DB": str(ledger), **config}))
        return apps[-1]

    yield make
    for app in apps:
        app.extensions["hvs_watcher"].stop()
        if app.extensions["hvs_challenger_watcher"] is not None:
            app.extensions["hvs_challenger_watcher"].stop()


@pytest.fixture
def app(champion, make_app) -> Flask:
    """An app serving the champion."""
    return make_app({"TESTING": True, "MODEL": champion})


@pytest.fixture
def client(app):
    """A test client for ``app``."""
    return app.test_client()


@pytest.fixture
def payloads() -> dict[str, dict]:
    """The shipped example payloads, by expected label."""
    return {"Normal": dict(NORMAL), "Hazardous": dict(HAZARDOUS)}
