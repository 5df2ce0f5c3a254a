"""Fixtures for the tests that start real processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, ApiServer


@pytest.fixture(scope="session")
def trained_mlruns(tmp_path_factory) -> Path:
    """A store trained by the training command itself, as `make train` runs it."""
    folder = tmp_path_factory.mktemp("lab") / "mlruns"
    subprocess.run(
        [sys.executable, "-m", "hvs_api.train", "--samples", "4000"],
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
    """Figures the reliability tests measured; written to results/reliability.json at the end."""
    collected: dict = {}
    yield collected
    if collected:
        FIGURES.parent.mkdir(exist_ok=True)
        previous = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
        FIGURES.write_text(json.dumps({**previous, **collected}, indent=2) + "\n")
