"""Fixtures for the tests that start real processes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.api_server import ApiServer
from tests.support.paths import ROOT

# Fixtures that start real processes or train a store: a test using one is an integration test.
SLOW_FIXTURES = {"trained_mlruns", "start_api"}


def pytest_collection_modifyitems(items):
    """Refuse a test that starts real processes without the `integration` marker, so that
    `pytest -m "not integration"` stays the fast subset."""
    unmarked = [
        item.nodeid
        for item in items
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("integration")
    ]
    if unmarked:
        raise pytest.UsageError(f"mark these tests `integration` (they start real processes): {unmarked}")


@pytest.fixture(scope="session")
def trained_mlruns(tmp_path_factory) -> Path:
    """A store trained by the training command itself, as `make train` runs it."""
    folder = tmp_path_factory.mktemp("lab") / "mlruns"
    subprocess.run(
        [sys.executable, "-m", "hvs_model.train", "--samples", "4000"],
        cwd=ROOT,
        env={**os.environ, "MLRUNS_DIR": str(folder)},
        check=True,
        capture_output=True,
    )
    return folder


@pytest.fixture
def start_api(tmp_path):
    """Start APIs under gunicorn; every one started is stopped by PID afterwards."""
    servers: list[ApiServer] = []

    def start(mlruns: Path, wait_ready: bool = True, **kwargs) -> ApiServer:
        server = ApiServer(
            mlruns=mlruns,
            metrics_dir=tmp_path / f"metrics-{len(servers)}",
            log_path=tmp_path / f"gunicorn-{len(servers)}.log",
            **kwargs,
        )
        servers.append(server)
        return server.start(wait_ready=wait_ready)

    yield start
    for server in servers:
        server.stop()


FIGURES = ROOT / "results" / "reliability.json"


@pytest.fixture(scope="session")
def figures():
    """Figures the reliability tests measured in this run, written to results/reliability.json
    at its end in place of any earlier run's, with the commit and time of the run."""
    collected: dict = {}
    yield collected
    if collected:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
        run = {
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "commit": commit.stdout.strip() + ("+uncommitted" if dirty.strip() else ""),
            "tests": sorted(collected),
        }
        FIGURES.parent.mkdir(exist_ok=True)
        FIGURES.write_text(json.dumps({"run": run, **collected}, indent=2) + "\n")
