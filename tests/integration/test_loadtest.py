"""The locustfile's SLO hook: a headless run that misses the SLO must exit non-zero."""

import pytest

from tests.lab import locust

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(("max_p95_ms", "exit_code"), [("10000", 0), ("0.001", 1)])
def test_a_missed_slo_fails_the_run(trained_mlruns, start_api, tmp_path, max_p95_ms, exit_code):
    server = start_api(trained_mlruns, workers=1)
    run = locust(server.url, "SteadyUser", "4s", tmp_path / "locust.log", users=2, HVS_MAX_P95_MS=max_p95_ms)
    code = run.popen.wait(timeout=60)
    run.stop()
    log = (tmp_path / "locust.log").read_text()
    assert code == exit_code, log[-2000:]
    assert ("SLO missed: p95" in log) == bool(exit_code)
