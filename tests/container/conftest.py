"""Fixtures of the container stage: the engine, the base images and the Compose lab."""

import contextlib
import os
import time
from pathlib import Path

import pytest

from tests.container import browser as browsers
from tests.container.compose import ComposeLab
from tests.container.engine import Engine, EngineUnavailable, ImageOrigin, base_images, ensure_image
from tests.slow_clients import SlowClients, oversized, while_held, with_urllib
from tests.support.paths import NORMAL, ROOT

RESULTS = ROOT / "results"
CACHE = ROOT / ".cache" / "container"
_IMAGES: list[ImageOrigin] = []
# When the stage began (its engine set-up), for the report's wall-time line.
_STARTED: list[float] = []


def pytest_collection_modifyitems(items):
    """Mark the stage's tests (they start real processes too, so `-m "not integration"` leaves
    them out), and run them last: the fast feedback of the rest comes first."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.container)
            item.add_marker(pytest.mark.integration)
    items.sort(key=lambda item: here in item.path.parents)


def pytest_terminal_summary(terminalreporter):
    if _IMAGES:
        terminalreporter.write_sep("-", "container stage: base images")
        for image in _IMAGES:
            terminalreporter.write_line(str(image))
    if _STARTED:
        minutes, seconds = divmod(round(time.monotonic() - _STARTED[0]), 60)
        terminalreporter.write_line(f"container stage: {minutes} min {seconds} s from its engine set-up to the end")


def unavailable(reason: str):
    """Skip the stage with one line saying why and how to enable it; in CI, where it must run, fail."""
    if os.environ.get("CI"):
        pytest.fail(f"container stage: {reason}")
    pytest.skip(f"container stage skipped: {reason}")


@pytest.fixture(scope="session")
def engine():
    """A Docker engine for the session; without one the stage skips itself (in CI it fails)."""
    _STARTED.append(time.monotonic())
    with contextlib.ExitStack() as stack:
        try:
            yield stack.enter_context(Engine(RESULTS / "dockerd.log"))
        except EngineUnavailable as reason:
            unavailable(str(reason))


@pytest.fixture(scope="session")
def images(engine) -> list[ImageOrigin]:
    """Every base image the lab's files name: present, pulled, or built here as a stand-in."""
    CACHE.mkdir(parents=True, exist_ok=True)
    if not _IMAGES:
        _IMAGES.extend(ensure_image(tag, CACHE) for tag in base_images())
    return _IMAGES


@pytest.fixture(scope="session")
def lab(images):
    """The Compose lab under a project, ports and image tag of the test's own; removed afterwards."""
    lab = ComposeLab()
    yield lab
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "container-lab.log").write_text(lab.compose("logs", "--no-color", "--timestamps").stdout)
    lab.down()


@pytest.fixture(scope="session")
def browser(engine):
    """One headless Chromium for the page checks."""
    if reason := browsers.missing():
        unavailable(reason)
    with browsers.chromium() as driver:
        yield driver


@pytest.fixture
def slow_clients_check():
    """Checks an API published on a host port against slow clients, as the native test does.

    240 connections trickle headers or bodies, or sit idle, through Docker's published port
    (docker-proxy), while ordinary requests for 10 s in all must each be answered within 2 s
    and the API's workers must hold the slow connections (``hvs_api_connections_in_progress``,
    read three times, see connections_held). A 22 MB body sent whole by urllib meanwhile gets
    the JSON 413. Returns the figures, also printed (``-rA`` shows them).
    """

    def check(port: int, count: int = 240, seconds: float = 10.0) -> dict:
        url = f"http://127.0.0.1:{port}"
        with SlowClients("127.0.0.1", port, count=count) as slow:
            answers, readings = while_held(url, NORMAL, rounds=3, seconds=seconds / 3)
            try:
                status, refused = with_urllib(url + "/predict", oversized(22_000_000))
            except OSError as error:
                status, refused = None, {"error": repr(error)}
        held = [highest for highest, _ in readings]
        figures = {
            "connections_in_progress": held,
            "lowest_scraped": [lowest for _, lowest in readings],
            "slow_connections_opened": slow.opened,
            "closed_by_the_server": slow.closed_by_server,
            "ordinary_requests": len(answers.latencies),
            "ordinary_p95_ms": round(answers.p95_ms, 1),
            "ordinary_max_ms": round(answers.max_ms, 1),
            "oversized_22mb": (status, refused.get("error")),
        }
        print(f"slow clients against {url}: {figures}")
        assert answers.failures == [], (answers.failures[:5], figures)
        # Every ordinary request was answered within a couple of seconds, slow clients or not.
        assert answers.max_ms < 2000, figures
        # The workers held the slow connections (the gauge counts the scrape's own too).
        assert None not in held and min(held) >= 200, figures
        assert (status, refused.get("error")) == (413, "body_too_large"), (status, refused)
        return figures

    return check
