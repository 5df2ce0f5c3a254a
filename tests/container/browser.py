"""Headless Chromium, driven through chromedriver with Selenium, for the lab's web pages."""

import contextlib
import shutil
import tempfile

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.paths import ROOT

SCREENSHOTS = ROOT / "results" / "screenshots"
# Debian's chromium and chromium-driver (`make system-deps` installs them).
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = [
    "--headless",
    "--disable-gpu",
    "--window-size=1400,1000",
    # As root, and inside a container-less sandbox, Chromium's own sandbox cannot start.
    "--no-sandbox",
    # This machine's network is closed: without these, Chromium keeps trying Google's services.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def missing() -> str | None:
    """Why no browser can run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            return f"{path} is missing: `make system-deps` installs Debian's chromium and chromium-driver"
    return None


@contextlib.contextmanager
def chromium():
    """A fresh headless Chromium with an empty profile, closed afterwards."""
    with tempfile.TemporaryDirectory() as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in [*FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def page_shows(driver, predicate, timeout: float, what: str, screenshot: str):
    """Wait until ``predicate(driver)`` holds; keep a screenshot of the page either way."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: predicate(d))
    except TimeoutException:
        raise AssertionError(f"{driver.current_url} never showed {what}; it showed:\n{text(driver)[:2000]}") from None
    finally:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SCREENSHOTS / f"{screenshot}.png"))


def text(driver) -> str:
    """What the page shows: the visible text of its body."""
    return driver.find_element("tag name", "body").text
