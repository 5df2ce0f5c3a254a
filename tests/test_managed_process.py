"""The one process helper of the tests, the native lab and the benchmarks: ready when its URL
answers, an early exit or a timeout reported with the end of the log, and the whole process
group stopped (and killed when it ignores the signal)."""

import sys
import time

import psutil
import pytest

from loadtest.managed_process import ManagedProcess, ProcessFailed
from tests.support.web import free_port

PYTHON = sys.executable


def test_it_is_ready_when_its_url_answers_and_stops_with_its_children(tmp_path):
    port = free_port()
    # A parent that starts a child (as gunicorn starts workers) and then serves.
    code = (
        "import subprocess, sys, http.server;"
        f"subprocess.Popen([{PYTHON!r}, '-c', 'import time; time.sleep(60)']);"
        f"http.server.HTTPServer(('127.0.0.1', {port}), http.server.SimpleHTTPRequestHandler).serve_forever()"
    )
    server = ManagedProcess("server", [PYTHON, "-c", code], tmp_path / "server.log", cwd=tmp_path,
                            ready_url=f"http://127.0.0.1:{port}/")  # fmt: skip
    with server:
        server.start(timeout=30)
        children = psutil.Process(server.pid).children()
        assert server.running() and len(children) == 1
    assert not server.running()
    assert not children[0].is_running() or children[0].status() == psutil.STATUS_ZOMBIE


def test_an_early_exit_is_reported_with_the_end_of_the_log(tmp_path):
    code = "import sys; print('bad setting: WORKERS'); sys.exit(3)"
    crashing = ManagedProcess("api", [PYTHON, "-c", code], tmp_path / "api.log", ready_url="http://127.0.0.1:9/")
    with pytest.raises(ProcessFailed, match=r"(?s)api exited with code 3 before it was ready.*bad setting: WORKERS"):
        crashing.start(timeout=30)
    crashing.stop()


def test_a_program_never_ready_times_out_naming_its_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/-/ready"
    with ManagedProcess(
        "silent", [PYTHON, "-c", "import time; time.sleep(60)"], tmp_path / "s.log", ready_url=url
    ) as p:
        with pytest.raises(ProcessFailed, match=rf"silent was not ready at {url} after 0.5 s"):
            p.start(timeout=0.5)


def test_a_program_that_ignores_sigterm_is_killed_after_the_timeout(tmp_path):
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"
    stubborn = ManagedProcess("stubborn", [PYTHON, "-c", code], tmp_path / "stubborn.log").start()
    while "up" not in (tmp_path / "stubborn.log").read_text():
        time.sleep(0.05)
    started = time.monotonic()
    assert stubborn.stop(timeout=0.5) == -9
    assert time.monotonic() - started < 10
