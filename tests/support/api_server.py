"""The API under gunicorn, started as the image starts it, and the sockets that pin a request to
one worker (psutil maps a connection to the worker holding it).
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPResponse
from pathlib import Path

import psutil

from loadtest.managed_process import ManagedProcess
from tests.support.dockerfile import image_cmd, image_env
from tests.support.paths import ROOT, VENV_BIN
from tests.support.waiting import wait_for
from tests.support.web import free_port, http


@dataclass
class HeldRequest:
    """A request held open on one worker; ``status`` and ``body`` are set once it completes."""

    status: int = 0
    body: bytes = b""
    worker: int = 0
    error: OSError | None = None


@contextlib.contextmanager
def connections_to_each_worker(server: "ApiServer", attempts: int = 200, fresh_for: float = 2.5, timeout: float = 60):
    """One open connection to each worker of ``server``, as ``{worker pid: socket}``.

    A gevent worker accepts connections for as long as they come, so which worker serves a
    request is the kernel's choice: connections are opened (and kept open, which makes the
    other workers likelier to win the next accept) until every worker holds one. A worker sends
    nothing on a connection that has not sent its headers within ``keepalive`` (5 s) and closes
    it, so each connection handed out was opened less than ``fresh_for`` seconds before; a
    worker still starting can take longer than that to accept its first: a replacement worker
    loads its model before it accepts, so after ``attempts`` connections without every worker,
    they are closed and tried again a second later, until ``timeout``.
    """
    opened: list[socket.socket] = []
    held: dict[int, tuple[float, socket.socket]] = {}
    deadline = time.monotonic() + timeout
    try:
        while True:
            now = time.monotonic()
            fresh = {pid: sock for pid, (since, sock) in held.items() if now - since < fresh_for}
            if len(fresh) == server.workers:
                break
            if len(opened) >= attempts:
                assert now < deadline, f"in {timeout:g} s, connections reached only workers {sorted(fresh)}"
                for sock in opened:
                    sock.close()
                opened, held = [], {}
                time.sleep(1)
                continue
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            opened.append(sock)
            worker = wait_for(lambda sock=sock: server.worker_holding(sock), 10, "a worker to accept")
            if worker not in fresh:
                held[worker] = (time.monotonic(), sock)
        yield fresh
    finally:
        for sock in opened:
            sock.close()


def request_on(sock: socket.socket, method: str, path: str, payload: object = None) -> tuple[int, bytes]:
    """``(status, body)`` of one request sent on an open (keep-alive) connection."""
    host, port = sock.getpeername()[:2]
    connection = HTTPConnection(host, port, timeout=10)
    connection.sock = sock
    body = None if payload is None else json.dumps(payload).encode()
    connection.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
    response = connection.getresponse()
    return response.status, response.read()


@contextlib.contextmanager
def one_worker_held(port: int, payload: object, server: "ApiServer | None" = None, sock: socket.socket | None = None):
    """Sends half of a ``POST /predict`` body, so that one worker holds the request, reading it.

    The worker (a gevent one) goes on serving other connections meanwhile. Given the
    ``server`` (one started here, whose processes this machine sees), the block starts only
    once one of its workers has accepted the connection, and ``held.worker`` is that worker's
    pid. Given ``sock`` (from ``connections_to_each_worker``), the request goes on it. The rest
    of the body is sent on leaving the block; a connection the server dropped meanwhile leaves
    ``held.error`` set.
    """
    body = json.dumps(payload).encode()
    head = (
        f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    held = HeldRequest()
    opened = contextlib.nullcontext(sock) if sock else socket.create_connection(("127.0.0.1", port), timeout=10)
    with opened as sock:
        sock.sendall(head + body[: len(body) // 2])
        if server is not None:
            held.worker = wait_for(lambda: server.worker_holding(sock), 10, "a worker to accept the held request")
        yield held
        try:
            sock.sendall(body[len(body) // 2 :])
            response = HTTPResponse(sock)
            try:
                response.begin()
                held.status, held.body = response.status, response.read()
            finally:
                response.close()
        except OSError as error:
            held.error = error


def answers_of_both_workers(server: "ApiServer", payload: object) -> list[tuple[int, bytes]]:
    """``(status, body)`` of one ``POST /predict`` answered by each worker of ``server``, by pid."""
    with connections_to_each_worker(server) as connections:
        return [request_on(sock, "POST", "/predict", payload) for _, sock in sorted(connections.items())]


def _tcp_connections(pid: int) -> list:
    """The TCP connections process ``pid`` holds (psutil's: local and remote address, status)."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return psutil.Process(pid).net_connections(kind="tcp")
    return []


@dataclass
class ApiServer:
    """The API started the way the image starts it: its CMD, its ENV, from the image's working folder."""

    mlruns: Path
    metrics_dir: Path
    log_path: Path
    workers: int = 2
    extra_env: dict = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    program: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True) -> "ApiServer":
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "OMP_", "OPENBLAS_NUM", "MKL_"))}
        env.update(image_env())
        env.update(
            {
                # Only the paths and the address differ from the image's settings.
                "MLRUNS_DIR": str(self.mlruns),
                "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir),
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "WORKERS": str(self.workers),
                # A ledger of this server's own: the trained store is shared by the session.
                "FEEDBACK_DB": str(self.metrics_dir.parent / f"feedback-{self.port}.sqlite"),
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            }
        )
        env.update(self.extra_env)
        path = "/ready" if wait_ready else "/health"
        self.program = ManagedProcess(
            "gunicorn", image_cmd(), self.log_path, env=env, cwd=ROOT / "api", ready_url=self.url + path
        )
        self.program.start(timeout=90)
        wait_for(lambda: len(self.worker_pids()) == self.workers, 30, f"{self.workers} workers")
        return self

    @property
    def process(self) -> subprocess.Popen:
        """gunicorn's master."""
        return self.program.popen

    def worker_pids(self) -> list[int]:
        return sorted(child.pid for child in psutil.Process(self.process.pid).children())

    def worker_holding(self, client: socket.socket) -> int | None:
        """The pid of the worker that has accepted ``client``'s connection, or None (yet)."""
        client_port = client.getsockname()[1]
        # A connection still in the listen queue is held by no process yet.
        for pid in self.worker_pids():
            if any(self._from_client(c, client_port) for c in _tcp_connections(pid)):
                return pid
        return None

    def connections_held_by(self, pid: int) -> int:
        """How many client connections to the server's port the process ``pid`` holds open."""
        return sum(self._from_client(c) and c.status == psutil.CONN_ESTABLISHED for c in _tcp_connections(pid))

    def _from_client(self, connection, client_port: int | None = None) -> bool:
        """Whether a connection is the server's end of one from a client (that client's, if given)."""
        if not connection.raddr or connection.laddr.port != self.port:
            return False
        return client_port is None or connection.raddr.port == client_port

    def kill_worker(self, victim: int | None = None) -> int:
        """SIGKILL one worker (by default the oldest) and wait until the master has replaced it;
        return its pid."""
        victim = victim or self.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: victim not in self.worker_pids() and len(self.worker_pids()) == self.workers, 30, "a new worker"
        )
        return victim

    def predictions_by_worker(self) -> dict[int, float]:
        """Predictions each live worker has counted so far, read from its own metrics file."""
        from prometheus_client.mmap_dict import MmapedDict

        counted = {}
        for pid in self.worker_pids():
            path = self.metrics_dir / f"counter_{pid}.db"
            values = MmapedDict.read_all_values_from_file(str(path)) if path.exists() else []
            counted[pid] = sum(
                value for key, value, *_ in values if json.loads(key)[1] == "hvs_api_prediction_outcomes_total"
            )
        return counted

    def metric_files_of_dead_processes(self) -> list[str]:
        """Files in the metrics directory that belong to neither a live process nor the archive."""
        live = {"archive", str(self.process.pid), *map(str, self.worker_pids())}
        names = sorted(p.name for p in self.metrics_dir.glob("*.db"))
        return [name for name in names if name.split("_")[-1].removesuffix(".db") not in live]

    def metrics(self) -> str:
        status, body = http("GET", self.url + "/metrics")
        assert status == 200
        return body.decode()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.program:
            self.program.stop()
