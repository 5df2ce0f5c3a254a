"""Waiting for something to become true, and the steps of a scenario that run in file order."""

import time

import pytest


class Steps:
    """The steps of one scenario that run in file order on shared state, each its own test.

    A step that later ones build on says ``done(name)`` as its last line; a later step starts
    with ``after(name)`` and fails at once, naming that step, when it failed.
    """

    def __init__(self) -> None:
        self._done: set[str] = set()

    def done(self, step: str) -> None:
        self._done.add(step)

    def after(self, *steps: str) -> None:
        missing = [step for step in steps if step not in self._done]
        if missing:
            pytest.fail(f"needs the earlier step(s) {missing}, which failed")


class NotYet(Exception):
    """Raised by a ``wait_for`` predicate when the thing it asks cannot answer yet (a server busy
    or restarting): the wait goes on, and the last reason is in the timeout's message."""


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except NotYet as reason:
            result, last = None, f" (last: {reason})"
        if result:
            return result
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}{last}")
