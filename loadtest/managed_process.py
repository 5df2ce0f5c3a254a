"""A program that the tests, the native lab and the benchmarks start, wait for and stop.

One helper for all of them: the program runs in a process group of its own (gunicorn's
workers, mlflow's uvicorn and Locust's workers die with it), writes to a log file, is ready
when a URL answers, and is stopped by a signal to the whole group, then killed if it lingers.
When it exits early or never gets ready, the error carries the end of its log, so a failure
says why without a second run.
"""

import contextlib
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

LOG_TAIL_LINES = 30


class ProcessFailed(RuntimeError):
    """The program exited before it was ready, or was not ready in time; the message ends with its log."""


def answers(url: str, any_status: bool = False) -> bool:
    """True when ``url`` answers 200 (or any HTTP status, with ``any_status``)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except urllib.error.HTTPError:
        return any_status
    except OSError:  # Not listening yet, or too busy to answer in time.
        return False


@dataclass
class ManagedProcess:
    name: str
    command: list[str]
    log_path: Path
    # The whole environment of the program (None: this process's own).
    env: Mapping[str, str] | None = None
    cwd: Path | None = None
    # Ready when this URL answers 200 (any HTTP status with ready_on_any_status); None: at once.
    ready_url: str | None = None
    ready_on_any_status: bool = False
    popen: subprocess.Popen | None = field(default=None, repr=False)

    def start(self, wait: bool = True, timeout: float = 60) -> "ManagedProcess":
        self._log = open(self.log_path, "ab")  # The child writes to it; closed in stop().
        self.popen = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=None if self.env is None else dict(self.env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready(timeout)
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"

    def _failure(self, what: str) -> ProcessFailed:
        return ProcessFailed(f"{self.name} {what}; the end of {self.log_path}:\n{self.log_tail()}")

    def wait_ready(self, timeout: float = 60, interval: float = 0.2) -> None:
        if self.ready_url is None:
            return
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                raise self._failure(f"exited with code {self.popen.returncode} before it was ready")
            if answers(self.ready_url, self.ready_on_any_status):
                return
            if time.monotonic() > deadline:
                raise self._failure(f"was not ready at {self.ready_url} after {timeout:g} s")
            time.sleep(interval)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        """Signal the whole group, wait, kill it if it lingers; return the exit code."""
        if self.running():
            os.killpg(self.popen.pid, sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait()
        if getattr(self, "_log", None):
            self._log.close()
        return None if self.popen is None else self.popen.returncode

    def __enter__(self) -> "ManagedProcess":
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()
