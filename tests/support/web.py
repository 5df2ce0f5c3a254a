"""HTTP from the tests: free ports, one request with its status, readiness, and what is wrong with
a scrape.
"""

import json
import socket
import urllib.error
import urllib.request

from loadtest.managed_process import answers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body: object = None, timeout: float = 10.0) -> tuple[int, bytes]:
    """One request; returns ``(status, body)`` for any status."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# The media types of Prometheus's exposition formats: the classic text format, OpenMetrics,
# and the protobuf one. Prometheus 3 fails a scrape whose Content-Type is none of them, unless
# the job sets fallback_scrape_protocol (the lab's jobs set none, so that such a target is
# noticed rather than parsed by a guess).
EXPOSITION_MEDIA_TYPES = ("text/plain", "application/openmetrics-text", "application/vnd.google.protobuf")


def scrape_problems(targets: list[dict], fetch=urllib.request.urlopen) -> list[str]:
    """What is wrong with the scrapes of Prometheus's active targets (/api/v1/targets) that are
    up: an error Prometheus recorded, or a Content-Type that no exposition format has when the
    target is asked as Prometheus asks it ("" when all is well)."""
    problems = []
    for target in targets:
        name = f"{target['labels']['job']} {target['scrapeUrl']}"
        if target["health"] != "up" or target["lastError"]:
            problems.append(f"{name}: {target['health']}, {target['lastError']!r}")
            continue
        request = urllib.request.Request(target["scrapeUrl"], headers={"Accept": "text/plain;version=0.0.4"})
        with fetch(request, timeout=10) as response:
            media_type = response.headers.get("Content-Type", "").split(";")[0].strip()
        if media_type not in EXPOSITION_MEDIA_TYPES:
            problems.append(f"{name}: Content-Type {media_type or 'missing'}")
    return problems


def answers_200(url: str) -> bool:
    """True when a GET of ``url`` answers 200; False while nothing listens there yet (the
    readiness check of the process helper)."""
    return answers(url)
