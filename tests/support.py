"""Helpers for tests that start real processes: free ports, the API under gunicorn, HTTP calls."""

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.client import HTTPConnection, HTTPResponse
from pathlib import Path

import psutil
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from loadtest import prometheus_duration

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "api" / "Dockerfile"
VENV_BIN = Path(sys.executable).parent
# The user's two example payloads.
NORMAL = json.loads((ROOT / "test_payload.json").read_text())
HAZARDOUS = json.loads((ROOT / "test_payload_hazardous.json").read_text())


# A Prometheus duration (``500ms``, ``5m``, ``1h30m``, ``30d``, ``2w``) in seconds: the parser the
# benchmarks use too.
seconds = prometheus_duration.seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs of a Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage(path: Path = DOCKERFILE, target: str | None = None) -> list[tuple[str, str]]:
    """The instructions that make a stage (by default the last), with those of the stages it builds on."""
    stages: dict[str, tuple[str, list]] = {}
    current: list = []
    for keyword, rest in dockerfile_instructions(path):
        if keyword == "FROM":
            base, _, name = rest.partition(" AS ")
            current = []
            stages[name.strip() or f"stage{len(stages)}"] = (base.strip(), current)
        current.append((keyword, rest))
    chain, name = [], target or list(stages)[-1]
    while name in stages:
        base, instructions = stages[name]
        chain = instructions + chain
        name = base
    return chain


def image_env(path: Path = DOCKERFILE, target: str | None = None) -> dict[str, str]:
    """The ``ENV`` variables a stage of the image (by default the last) sets."""
    env = {}
    for keyword, rest in final_stage(path, target):
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def image_cmd(path: Path = DOCKERFILE) -> list[str]:
    """The image's ``CMD``, in exec form."""
    [cmd] = [rest for keyword, rest in final_stage(path) if keyword == "CMD"]
    return json.loads(cmd)


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
    """True when a GET of ``url`` answers 200; False while nothing listens there yet."""
    try:
        return http("GET", url, timeout=2)[0] == 200
    except OSError:
        return False


@dataclass
class HeldRequest:
    """A request held open on one worker; ``status`` and ``body`` are set once it completes."""

    status: int = 0
    body: bytes = b""
    worker: int = 0
    error: OSError | None = None


@contextlib.contextmanager
def connections_to_each_worker(server: "ApiServer", attempts: int = 200, fresh_for: float = 2.5):
    """One open connection to each worker of ``server``, as ``{worker pid: socket}``.

    A gevent worker accepts connections for as long as they come, so which worker serves a
    request is the kernel's choice: connections are opened (and kept open, which makes the
    other workers likelier to win the next accept) until every worker holds one. A worker sends
    nothing on a connection that has not sent its headers within ``keepalive`` (5 s) and closes
    it, so each connection handed out was opened less than ``fresh_for`` seconds before; a
    worker still starting can take longer than that to accept its first.
    """
    opened: list[socket.socket] = []
    held: dict[int, tuple[float, socket.socket]] = {}
    try:
        while True:
            now = time.monotonic()
            fresh = {pid: sock for pid, (since, sock) in held.items() if now - since < fresh_for}
            if len(fresh) == server.workers:
                break
            assert len(opened) < attempts, f"{attempts} connections reached only workers {sorted(fresh)}"
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


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a /metrics page as ``(name, labels, value)``: the one parser the tests use.

    prometheus_client's own parser, so escaping, exponents and ``NaN`` read as Prometheus reads them.
    """
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the series ``name{labels}`` (labels must match exactly), or None when it is absent."""
    for found_name, found_labels, value in samples(text):
        if found_name == name and found_labels == labels:
            return value
    return None


def values_by_label(text: str, name: str, label: str) -> dict[str, float]:
    """``{value of label: sample value}`` of every series of ``name``, e.g. hvs_model_info by model_version."""
    return {found[label]: value for found_name, found, value in samples(text) if found_name == name}


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    """Signal a process started with start_new_session=True and its children; kill them if they linger."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def predict_ok(text: str) -> float:
    """/predict requests answered 200, from a /metrics page (0 before the first one)."""
    return metric_value(text, "flask_http_request_total", endpoint="/predict", method="POST", status="200") or 0.0


def rule_groups(folder: Path = ROOT / "prometheus" / "rules") -> list[dict]:
    """The rule groups of every rule file in a folder, in file order."""
    groups = []
    for path in sorted(folder.glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups


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
    process: subprocess.Popen | None = None

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
                "PATH": f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            }
        )
        env.update(self.extra_env)
        self._log = open(self.log_path, "wb")  # Closed in stop().
        self.process = subprocess.Popen(
            image_cmd(), cwd=ROOT / "api", env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        path = "/ready" if wait_ready else "/health"
        wait_for(lambda: self._answers(path), 90, f"the API to answer {path} (log: {self.log_path})")
        wait_for(lambda: len(self.worker_pids()) == self.workers, 30, f"{self.workers} workers")
        return self

    def _answers(self, path: str) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with {self.process.returncode}: {self.log_path.read_text()[-2000:]}")
        return answers_200(self.url + path)

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
        if self.process:
            stop_process_group(self.process)
        if getattr(self, "_log", None):
            self._log.close()


DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))
# A panel whose description starts with this may show no data (but never an error).
EXPECTED_EMPTY = "Expected empty:"


@dataclass(frozen=True)
class PanelQuery:
    """One query of one dashboard panel, with the dashboard's variables at their defaults."""

    dashboard: str
    panel: str
    expr: str
    instant: bool
    may_be_empty: bool


def variable_value(variable: dict) -> str:
    """A template variable's default as Grafana writes it into a Prometheus query: "All" as its
    ``allValue``, several values as a regex alternation."""
    value = variable["current"]["value"]
    values = value if isinstance(value, list) else [value]
    if values == ["$__all"]:
        return variable["allValue"]
    return values[0] if len(values) == 1 else "(" + "|".join(map(re.escape, values)) + ")"


def substitute_variables(expr: str, variables: dict[str, str]) -> str:
    """``$name`` and ``${name}`` of the given variables replaced; Grafana's own (``$__…``) left alone."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def panel_queries(rate_interval: str = "1m") -> list[PanelQuery]:
    """Every Prometheus query of every dashboard panel, ready to send to Prometheus."""
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        variables = {v["name"]: variable_value(v) for v in dashboard.get("templating", {}).get("list", [])}
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = substitute_variables(target["expr"].replace("$__rate_interval", rate_interval), variables)
                queries.append(
                    PanelQuery(
                        path.stem,
                        panel["title"],
                        expr,
                        bool(target.get("instant")),
                        panel.get("description", "").startswith(EXPECTED_EMPTY),
                    )
                )
    return queries


# MLflow copies every URI it is pointed at into these (for subprocesses), so store.client() sets them.
MLFLOW_URI_VARIABLES = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def environment_restored(*names: str):
    """On leaving the block, put the named environment variables back as they were, set or not."""
    saved = {name: os.environ.get(name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def run_id_of(mlruns: Path, candidate: str) -> str:
    """The id of the training run of one candidate in a store."""
    import hvs_store as store

    with environment_restored("MLRUNS_DIR", *MLFLOW_URI_VARIABLES):
        os.environ["MLRUNS_DIR"] = str(mlruns)
        client = store.client()
        experiment = client.get_experiment_by_name(store.EXPERIMENT).experiment_id
        [run] = client.search_runs([experiment], f"attributes.run_name = '{candidate}'")
        return run.info.run_id


# The API's own packages and its heavy dependencies: what the other deployables (the alert
# receiver, the MLflow UI with the store's plugin) must not load.
THE_APIS_MODULES = ("flask", "sklearn", "prometheus_flask_exporter", "hvs_api")


def modules_of_the_api_loaded_by(statement: str) -> list[str]:
    """Which of THE_APIS_MODULES a fresh interpreter has loaded after running ``statement``."""
    probe = f"import sys; {statement}; print(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    result = subprocess.run([sys.executable, "-W", "error", "-c", probe], capture_output=True, text=True, check=True)
    loaded = set(result.stdout.split())
    return [m for m in THE_APIS_MODULES if m in loaded]
