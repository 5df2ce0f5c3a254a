"""Slow and clumsy clients, for the tests that prove they cannot starve the API.

``SlowClients`` keeps a number of connections open against a server, each in one of three
ways a client can hold a connection without finishing a request:

- *slow headers*: a ``POST /predict`` whose header lines arrive one byte per second;
- *slow body*: whole headers announcing 100 bytes of body, which then arrive one per second;
- *idle keep-alive*: a ``GET /health`` answered in full, then nothing.

A connection the server closes (it may drop clients that are too slow) is opened again at
once, so the count holds for the whole test. ``ordinary_requests`` meanwhile measures what
everyone else gets, and ``while_held`` alternates it with readings of the API's connection gauge.
"""

import contextlib
import json
import select
import socket
import statistics
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from tests.support.metrics_text import metric_value
from tests.support.web import http

KINDS = ("slow headers", "slow body", "idle keep-alive")
# The API's gauge of the client connections its workers hold.
CONNECTIONS = "hvs_api_connections_in_progress"


@dataclass
class _Connection:
    kind: str
    sock: socket.socket
    pending: bytes  # What is still to be trickled, one byte per tick.


@dataclass
class SlowClients:
    host: str
    port: int
    count: int = 210
    tick: float = 1.0
    opened: int = 0  # Connections opened in all, reopened ones included.
    closed_by_server: int = 0
    _connections: list[_Connection] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _open(self, kind: str) -> _Connection:
        sock = socket.create_connection((self.host, self.port), timeout=10)
        self.opened += 1
        host = f"Host: {self.host}:{self.port}\r\n"
        if kind == "slow headers":
            sock.sendall(f"POST /predict HTTP/1.1\r\n{host}".encode())
            return _Connection(kind, sock, b"X-Slow: " + b"a" * 4000)
        if kind == "slow body":
            head = f"POST /predict HTTP/1.1\r\n{host}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            sock.sendall(head.encode())
            return _Connection(kind, sock, b"{" + b" " * 99)
        sock.sendall(f"GET /health HTTP/1.1\r\n{host}\r\n".encode())
        return _Connection(kind, sock, b"")

    def _closed(self, connection: _Connection) -> bool:
        """True when the server has closed the connection (what it sent before is read and dropped)."""
        readable, _, _ = select.select([connection.sock], [], [], 0)
        if not readable:
            return False
        try:
            data = connection.sock.recv(65536)
        except OSError:
            return True
        # An idle keep-alive connection first reads its /health answer; EOF means closed.
        return data == b""

    def _run(self) -> None:
        while not self._stop.wait(self.tick):
            for i, connection in enumerate(self._connections):
                if self._stop.is_set():
                    return
                if self._closed(connection) or not self._trickle(connection):
                    self.closed_by_server += 1
                    connection.sock.close()
                    with contextlib.suppress(OSError):
                        self._connections[i] = self._open(connection.kind)

    @staticmethod
    def _trickle(connection: _Connection) -> bool:
        if not connection.pending:
            return True
        try:
            connection.sock.sendall(connection.pending[:1])
        except OSError:
            return False
        connection.pending = connection.pending[1:]
        return True

    def __enter__(self) -> "SlowClients":
        self._connections = [self._open(KINDS[i % len(KINDS)]) for i in range(self.count)]
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for connection in self._connections:
            connection.sock.close()


@dataclass
class Answers:
    """What ordinary clients got: seconds per request, and the requests that failed or erred."""

    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    @property
    def p95_ms(self) -> float:
        return statistics.quantiles(self.latencies, n=20)[-1] * 1000

    @property
    def max_ms(self) -> float:
        return max(self.latencies) * 1000


def ordinary_requests(base_url: str, payload: object, seconds: float, timeout: float = 10.0) -> Answers:
    """``POST /predict`` and ``GET /ready`` in turn for ``seconds``, one at a time, each on a new connection."""
    answers = Answers()
    body = json.dumps(payload).encode()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for path in ("/predict", "/ready"):
            data = body if path == "/predict" else None
            request = urllib.request.Request(base_url + path, data=data, headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    response.read()
                    if response.status != 200:
                        answers.failures.append(f"{path}: {response.status}")
            except (OSError, urllib.error.HTTPError) as error:
                answers.failures.append(f"{path}: {error!r}")
            answers.latencies.append(time.perf_counter() - start)
        time.sleep(0.05)
    return answers


def connections_held(url: str, failures: list[str], span: float = 1.5) -> tuple[float | None, float | None]:
    """``(highest, lowest)`` of ``hvs_api_connections_in_progress`` over scrapes ``span`` seconds long.

    The server drops the slow-header and idle connections (two in three) together at its 5 s
    header deadline, and SlowClients opens them again at its next one-second tick: for about a
    second every 5 s the gauge reads a third lower. A reading is the highest value over a span
    longer than that gap; a scrape that fails is a failure, and ends the reading.
    """
    values: list[float] = []
    deadline = time.monotonic() + span
    while time.monotonic() < deadline:
        try:
            value = metric_value(http("GET", url + "/metrics")[1].decode(), CONNECTIONS)
        except OSError as error:
            failures.append(f"/metrics: {error!r}")
            break
        if value is None:
            break
        values.append(value)
        time.sleep(0.25)
    return (max(values), min(values)) if values else (None, None)


def while_held(url: str, payload: object, rounds: int = 3, seconds: float = 2.5) -> tuple[Answers, list[tuple]]:
    """Ordinary requests for ``seconds``, then a reading of the connection gauge, ``rounds`` times.

    Returns what the ordinary requests got (a failed scrape counts among their failures) and
    the ``(highest, lowest)`` readings of ``connections_held``.
    """
    answers, readings = Answers(), []
    for _ in range(rounds):
        more = ordinary_requests(url, payload, seconds=seconds)
        answers.latencies += more.latencies
        answers.failures += more.failures
        readings.append(connections_held(url, answers.failures))
    return answers, readings


def oversized(size: int) -> bytes:
    """A JSON batch of about ``size`` bytes (padded with whitespace: only the size matters)."""
    return b'{"records": [' + b" " * (size - 15) + b"]}"


def with_urllib(url: str, body) -> tuple[int, dict]:
    """``(status, JSON answer)`` of a POST sent with urllib, which writes the whole body before reading."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
