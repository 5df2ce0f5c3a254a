"""`make bench`: the API against its peers, on this machine, measured side by side in one run.

Servers, each with the API's gunicorn settings where it has them (2 workers, one inference
thread per worker, the gevent worker class), all on 127.0.0.1 and all started before the
first measurement:

1. ``hello``: a bare Flask POST endpoint (loadtest/hello_app.py), the HTTP stack's floor;
2. ``predict``: the API's ``/predict``, one record and a 100-record batch, metrics on;
3. ``predict-nometrics``: the same with ``METRICS_ENABLED=false``;
   ``predict-nochallenger``: the same with the challenger off (``CHALLENGER_SHARE=0``), and
   ``predict-nomonitoring``: also without the model monitoring (``MODEL_MONITORING_ENABLED=false``:
   no per-feature bins, no prediction ids), one record and a 100-record batch each: what the
   input-drift counts and the ids cost, and what scoring the challenger costs;
4. ``predict-sync``: the API's ``/predict``, one record, with ``WORKER_CLASS=sync`` (gunicorn's
   sync workers, as the API served before the gevent worker): beside ``predict``, what the gevent worker
   costs. wrk keeps its connections alive, but a sync worker closes each connection after its
   answer, so against it wrk connects anew for every request: that is how sync serves;
5. ``mlflow-serve``: ``mlflow models serve`` on the same registered model and record, in the
   request format mlflow documents for its scoring server (``{"dataframe_records": [...]}``),
   at two thread settings: OpenMP's default (a thread per core in each of its workers) and
   ``OMP_NUM_THREADS=1``, as the API runs. The peer's figure is the better of the two in this
   run, named in the table of goals: the fair comparison, not the one that flatters us;
6. ``predict-sklearn``: the API's ``/predict``, one record and a 100-record batch, with
   ``INFERENCE_RUNTIME=sklearn``: beside ``predict`` (treelite, for a tree champion), what the
   runtime buys;

plus the in-process model call (the model's own limit), through each runtime. wrk (one thread, fixed connections)
loads one target at a time, the targets interleaved round by round (A B C A B C ...), and the
table gives the median of the rounds with their min and max. Server CPU per request comes from
/proc (master and workers); RSS is per worker. Then the ``/metrics`` scrape is timed, the
workers are replaced 500 times, and it is timed again. Last, what one worker replacement costs
until the new worker has answered its first request, with the registry check a new worker now
makes before that answer (so that it never serves a champion older than the registry's) and
without it (``MODEL_RELOAD_SECONDS=0``): two one-worker servers, trials interleaved in blocks.

Usage: python -m loadtest.bench [--rounds N] [--duration S] [--connections C] [--timeout S] [--restarts R]
Writes results/bench.json and results/bench.md.
"""

import argparse
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from loadtest.managed_process import ManagedProcess

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WORKERS = 2
# The API's default worker class (gunicorn.conf.py's WORKER_CLASS), and the row that measures it
# against gunicorn's sync workers.
GEVENT = "gevent"
GEVENT_TARGET = "predict single"
SYNC_TARGET = "predict single, sync worker"
# The rows of the API without the challenger, and without the challenger and the model monitoring.
NOCHALLENGER_SINGLE = "predict single, no challenger"
NOCHALLENGER_BATCH = "predict batch 100, no challenger"
NOMONITORING_SINGLE = "predict single, no model monitoring"
NOMONITORING_BATCH = "predict batch 100, no model monitoring"
# mlflow's scoring server at OpenMP's default thread count and at one thread per worker.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
# Target name: (server name, the thread variables it runs with; none is OpenMP's default).
MLFLOW_PEERS = {
    "mlflow models serve single, OpenMP default threads": ("mlflow-serve", {}),
    "mlflow models serve single, OMP_NUM_THREADS=1": ("mlflow-serve-1thread", dict.fromkeys(THREAD_VARIABLES, "1")),
}
# The rows of the API with scikit-learn computing the probabilities (INFERENCE_RUNTIME=sklearn).
SKLEARN_SINGLE = "predict single, sklearn runtime"
SKLEARN_BATCH = "predict batch 100, sklearn runtime"


def log(message: str) -> None:
    print(message, flush=True)


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("wrk is missing: installing Debian's wrk package with apt-get")
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "wrk"], check=True)
        return shutil.which("wrk")
    sys.exit("wrk is missing: install it (Debian/Ubuntu: sudo apt-get install wrk) and run make bench again")


def trained_store(workdir: Path) -> Path:
    """A model store in ``workdir``, trained by the training command as `make train` runs it."""
    mlruns = workdir / "mlruns"
    log(f"training the model into {mlruns}")
    subprocess.run(
        [sys.executable, "-m", "hvs_model.train"],
        env={**os.environ, "MLRUNS_DIR": str(mlruns)},
        check=True,
        capture_output=True,
    )
    return mlruns


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a process that exits meanwhile is left out)."""
    try:
        return [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:  # It exited while being read.
        return []


def cpu_seconds(pids: list[int], reaped_children: bool = False) -> float:
    """CPU time of the processes (utime, stime), with that of the children they have reaped
    (cutime, cstime) when asked; a process that has exited meanwhile counts nothing."""
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
        if reaped_children:
            total += times.children_user + times.children_system
    return total


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


@dataclass
class Server:
    name: str
    command: list[str]
    cwd: Path
    env: dict
    port: int = field(default_factory=free_port)
    ready_path: str = "/health"
    # Variables of the benchmark's own environment this server must not inherit.
    unset: tuple[str, ...] = ()
    program: ManagedProcess | None = None

    def start(self) -> None:
        # The virtual environment's bin first: mlflow starts uvicorn by name.
        path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        inherited = {k: v for k, v in os.environ.items() if k not in self.unset}
        env = {**inherited, **self.env, "PORT": str(self.port), "HOST": "127.0.0.1", "PATH": path}
        self.program = ManagedProcess(
            self.name,
            [part.format(port=self.port) for part in self.command],
            Path(tempfile.gettempdir()) / f"hvs-bench-{self.name}.log",
            env=env,
            cwd=self.cwd,
            # Any HTTP answer means it listens (mlflow's /health answers differently by version).
            ready_url=f"http://127.0.0.1:{self.port}{self.ready_path}",
            ready_on_any_status=True,
        )
        self.program.start(wait=False)

    def wait_ready(self, timeout: float = 120) -> None:
        self.program.wait_ready(timeout)

    @property
    def process(self) -> subprocess.Popen:
        return self.program.popen

    def metrics(self) -> bytes:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=10) as response:
            return response.read()

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def workers(self) -> list[int]:
        return [p for p in self.pids() if p != self.process.pid]

    def stop(self) -> None:
        if self.program:
            self.program.stop()


@dataclass
class Target:
    name: str
    server: Server
    path: str
    body: str
    rows: int = 1


def wrk_script(path: Path, body: str) -> Path:
    """A wrk script at ``path`` that POSTs ``body`` as JSON."""
    path.write_text(
        f'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\nwrk.body = [==[{body}]==]\n'
    )
    return path


def run_wrk(wrk: str, target: Target, duration: int, connections: int, timeout: int, workdir: Path) -> dict:
    script = wrk_script(workdir / f"{target.name}.lua", target.body)
    url = f"http://127.0.0.1:{target.server.port}{target.path}"
    before = cpu_seconds(target.server.pids())
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            f"{timeout}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    used = cpu_seconds(target.server.pids()) - before
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad or "Socket errors" in out:
        sys.exit(f"{target.name}: errors during the run\n{out}")

    def latency_ms(percent: str) -> float:
        value, unit = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": latency_ms("50"),
        "p99_ms": latency_ms("99"),
        "cpu_us_per_request": used / max(requests, 1) * 1e6,
    }


def in_process_call(model, row, batch, calls: int = 3000) -> dict:
    """CPU and wall time per call of the bare model, as the API makes it (numpy in, through the
    model's runtime)."""
    results = {}
    for name, x, n in (("single", row, calls), ("batch100", batch, calls // 10)):
        model.hazard_probability(x)
        start_cpu, start = time.process_time(), time.perf_counter()
        for _ in range(n):
            model.hazard_probability(x)
        wall = time.perf_counter() - start
        results[name] = {
            "cpu_us_per_call": (time.process_time() - start_cpu) / n * 1e6,
            "wall_us_per_call": wall / n * 1e6,
            "calls_per_s": n / wall,
        }
    return results


def scrape_ms(server: Server, times: int = 40, warm_up: int = 10) -> float:
    timings = []
    # Freshly forked workers pay for their first scrapes (pages copied on first write,
    # files opened): those are left out, before and after the restarts alike.
    for i in range(warm_up + times):
        start = time.perf_counter()
        server.metrics()
        if i >= warm_up:
            timings.append((time.perf_counter() - start) * 1000)
    return statistics.median(timings)


def inference_totals(server: Server) -> tuple[float, float]:
    """``(sum, count)`` of the API's own model-call histogram, from its /metrics."""
    text = server.metrics().decode()
    found = dict(re.findall(r"^hvs_model_inference_duration_seconds_(sum|count) (\S+)$", text, re.MULTILINE))
    return float(found["sum"]), float(found["count"])


def replace_workers(server: Server, restarts: int) -> None:
    """Kill a worker and wait for its replacement, ``restarts`` times.

    SIGKILL, as a crash would: a worker asked to stop gracefully first waits out its
    one-second accept loop, which would make 500 restarts take ten minutes.
    """
    for _ in range(restarts):
        kill_and_await_replacement(server, server.workers()[0], WORKERS)


def kill_and_await_replacement(server: Server, victim: int, workers: int, poll: float = 0.005) -> None:
    """SIGKILL one worker and wait (at most 30 s) until the master runs ``workers`` again without it."""
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        live = server.workers()
        if victim not in live and len(live) == workers:
            return
        time.sleep(poll)


def tree_cpu_seconds(server: Server) -> float:
    """CPU of a server's master, its live workers and every worker it has reaped."""
    return cpu_seconds([server.process.pid], reaped_children=True) + cpu_seconds(server.workers())


def post(port: int, body: bytes) -> int:
    import urllib.request

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/predict", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        return response.status


def replace_and_answer(server: Server, body: bytes, trials: int) -> tuple[list[float], float]:
    """Kill a one-worker server's worker and time until its replacement has answered a
    /predict, ``trials`` times: the wall time of each, and the CPU of all of them."""
    walls = []
    cpu_before = tree_cpu_seconds(server)
    for _ in range(trials):
        [victim] = server.workers()
        started = time.perf_counter()
        # A finer poll: these wall times are tens of milliseconds.
        kill_and_await_replacement(server, victim, 1, poll=0.001)
        assert post(server.port, body) == 200
        walls.append(time.perf_counter() - started)
    return walls, tree_cpu_seconds(server) - cpu_before


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=16)
    # wrk gives up on an answer after 2 s by default and counts it as a socket error, which
    # stops the run. A late answer is a latency to report, up to the API's own limit
    # (gunicorn's TIMEOUT).
    parser.add_argument("--timeout", type=int, default=30, help="seconds wrk waits for an answer")
    parser.add_argument("--restarts", type=int, default=500)
    parser.add_argument("--replacements", type=int, default=200, help="per server, for the replacement cost")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    wrk = ensure_wrk()

    os.environ.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    workdir = Path(tempfile.mkdtemp(prefix="hvs-bench-"))
    mlruns = trained_store(workdir)
    os.environ["MLRUNS_DIR"] = str(mlruns)
    import hvs_store as store
    from hvs_model import readings
    from hvs_settings import ApiSettings

    from hvs_api import model

    uri = ApiSettings.from_env().model_uri_to_serve
    champion = model.load(uri, "auto")
    champion_sklearn = model.load(uri, "sklearn")
    record = json.loads((ROOT / "test_payload.json").read_text())
    batch = readings.records(100, seed=11)

    api_config = ROOT / "api" / "gunicorn.conf.py"
    gunicorn = [str(BIN / "gunicorn"), "--config", str(api_config)]
    # The worker class is named, not inherited: a WORKER_CLASS in the caller's environment would
    # otherwise turn the gevent-vs-sync comparison into sync against sync.
    api_env = {
        "WORKERS": str(WORKERS),
        "MODEL_RELOAD_SECONDS": "0",
        "MLRUNS_DIR": str(mlruns),
        "WORKER_CLASS": GEVENT,
    }
    servers = {
        "hello": Server(
            "hello",
            [*gunicorn, "loadtest.hello_app:app"],
            ROOT,
            {**api_env, "PROMETHEUS_MULTIPROC_DIR": str(workdir / "m-hello")},
            ready_path="/hello",
        ),
        "predict": Server(
            "predict", gunicorn, ROOT / "api", {**api_env, "PROMETHEUS_MULTIPROC_DIR": str(workdir / "m1")}
        ),
        "predict-nometrics": Server(
            "predict-nometrics",
            gunicorn,
            ROOT / "api",
            {**api_env, "PROMETHEUS_MULTIPROC_DIR": str(workdir / "m2"), "METRICS_ENABLED": "false"},
        ),
        "predict-nochallenger": Server(
            "predict-nochallenger",
            gunicorn,
            ROOT / "api",
            {**api_env, "PROMETHEUS_MULTIPROC_DIR": str(workdir / "m7"), "CHALLENGER_SHARE": "0"},
        ),
        "predict-nomonitoring": Server(
            "predict-nomonitoring",
            gunicorn,
            ROOT / "api",
            {
                **api_env,
                "PROMETHEUS_MULTIPROC_DIR": str(workdir / "m8"),
                "CHALLENGER_SHARE": "0",
                "MODEL_MONITORING_ENABLED": "false",
            },
        ),
        "predict-sklearn": Server(
            "predict-sklearn",
            gunicorn,
            ROOT / "api",
            {**api_env, "PROMETHEUS_MULTIPROC_DIR": str(workdir / "m6"), "INFERENCE_RUNTIME": "sklearn"},
        ),
        "predict-sync": Server(
            "predict-sync",
            gunicorn,
            ROOT / "api",
            {**api_env, "PROMETHEUS_MULTIPROC_DIR": str(workdir / "m5"), "WORKER_CLASS": "sync"},
        ),
        **{
            name: Server(
                name,
                [
                    str(BIN / "mlflow"),
                    "models",
                    "serve",
                    "-m",
                    f"models:/{store.MODEL_NAME}@{store.CHAMPION_ALIAS}",
                    "--env-manager",
                    "local",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "{port}",
                    "--workers",
                    str(WORKERS),
                ],
                ROOT,
                {
                    "MLFLOW_TRACKING_URI": store.tracking_uri(),
                    "MLFLOW_REGISTRY_URI": store.tracking_uri(),
                    **threads,
                },
                ready_path="/ping",
                unset=THREAD_VARIABLES,
            )
            for name, threads in MLFLOW_PEERS.values()
        },
        # One worker each, so the first request after a replacement is the new worker's.
        "replace-check": Server(
            "replace-check",
            gunicorn,
            ROOT / "api",
            {**api_env, "WORKERS": "1", "MODEL_RELOAD_SECONDS": "30", "PROMETHEUS_MULTIPROC_DIR": str(workdir / "m3")},
        ),
        "replace-nocheck": Server(
            "replace-nocheck",
            gunicorn,
            ROOT / "api",
            {**api_env, "WORKERS": "1", "PROMETHEUS_MULTIPROC_DIR": str(workdir / "m4")},
        ),
    }
    targets = [
        Target("hello", servers["hello"], "/hello", json.dumps({"ping": 1})),
        Target("predict single", servers["predict"], "/predict", json.dumps(record)),
        Target("predict single, metrics off", servers["predict-nometrics"], "/predict", json.dumps(record)),
        Target(SYNC_TARGET, servers["predict-sync"], "/predict", json.dumps(record)),
        *(
            Target(name, servers[server], "/invocations", json.dumps({"dataframe_records": [record]}))
            for name, (server, _) in MLFLOW_PEERS.items()
        ),
        Target("predict batch 100", servers["predict"], "/predict", json.dumps({"records": batch}), rows=100),
        Target(NOCHALLENGER_SINGLE, servers["predict-nochallenger"], "/predict", json.dumps(record)),
        Target(
            NOCHALLENGER_BATCH, servers["predict-nochallenger"], "/predict", json.dumps({"records": batch}), rows=100
        ),
        Target(NOMONITORING_SINGLE, servers["predict-nomonitoring"], "/predict", json.dumps(record)),
        Target(
            NOMONITORING_BATCH, servers["predict-nomonitoring"], "/predict", json.dumps({"records": batch}), rows=100
        ),
        Target(SKLEARN_SINGLE, servers["predict-sklearn"], "/predict", json.dumps(record)),
        Target(SKLEARN_BATCH, servers["predict-sklearn"], "/predict", json.dumps({"records": batch}), rows=100),
    ]
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():
            server.wait_ready()
        log("servers ready; warming up")
        for target in targets:
            run_wrk(wrk, target, 1, args.connections, args.timeout, workdir)
        runs: dict[str, list[dict]] = {t.name: [] for t in targets}
        model_in_server: dict[str, list[float]] = {"predict single": [], SKLEARN_SINGLE: []}
        for round_number in range(1, args.rounds + 1):
            for target in targets:
                # The model call as the server makes it, timed by the API itself (outside
                # run_wrk, so these two scrapes do not count in the server's CPU).
                before = inference_totals(target.server) if target.name in model_in_server else None
                result = run_wrk(wrk, target, args.duration, args.connections, args.timeout, workdir)
                if before is not None:
                    after = inference_totals(target.server)
                    model_in_server[target.name].append((after[0] - before[0]) / (after[1] - before[1]) * 1e6)
                runs[target.name].append(result)
                log(f"round {round_number}: {target.name:30s} {result['rps']:9.1f} req/s")
        import numpy as np

        x_one = np.array([[record[name] for name in readings.FEATURE_NAMES]])
        x_batch = np.array([[r[name] for name in readings.FEATURE_NAMES] for r in batch])
        model_call = in_process_call(champion, x_one, x_batch)
        model_call_sklearn = in_process_call(champion_sklearn, x_one, x_batch)
        rss = {name: [round(rss_mib(pid), 1) for pid in server.workers()] for name, server in servers.items()}

        predict = servers["predict"]
        # Samples of one scrape after the load (each series once per bucket or sample line).
        scrape_samples = sum(1 for line in predict.metrics().decode().splitlines() if line and not line.startswith("#"))
        files_before = len(list((workdir / "m1").glob("*.db")))
        scrape_before = scrape_ms(predict)
        log(f"replacing the predict server's workers {args.restarts} times")
        started = time.monotonic()
        replace_workers(predict, args.restarts)
        restart_seconds = time.monotonic() - started
        files_after = len(list((workdir / "m1").glob("*.db")))
        scrape_after = scrape_ms(predict)

        log(f"replacing a one-worker server's worker {args.replacements} times, with and without the check")
        replacement = {"check": {"walls": [], "cpu": 0.0}, "nocheck": {"walls": [], "cpu": 0.0}}
        body = json.dumps(record).encode()
        block = 10
        for _ in range(max(1, args.replacements // block)):
            for kind in ("check", "nocheck"):
                walls, cpu = replace_and_answer(servers[f"replace-{kind}"], body, block)
                replacement[kind]["walls"] += walls
                replacement[kind]["cpu"] += cpu
    finally:
        for server in servers.values():
            server.stop()

    table = {name: {k: summary([r[k] for r in results]) for k in results[0]} for name, results in runs.items()}
    rps = {name: row["rps"]["median"] for name, row in table.items()}
    cpu = {name: row["cpu_us_per_request"]["median"] for name, row in table.items()}
    overhead = cpu["predict single"] - model_call["single"]["cpu_us_per_call"]
    in_server = {name: statistics.median(values) for name, values in model_in_server.items()}
    peer = max(MLFLOW_PEERS, key=rps.__getitem__)
    checks = [
        (
            f"/predict single vs mlflow models serve at its best here ({peer.split(', ', 1)[1]}; throughput)",
            rps["predict single"] / rps[peer],
            ">=",
            12.0,
        ),
        (
            "model call in the server vs in-process, 1 row (wall time both)",
            in_server["predict single"] / model_call["single"]["wall_us_per_call"],
            "<=",
            1.5,
        ),
        ("batch 100 rows/s, this runtime vs sklearn", rps["predict batch 100"] / rps[SKLEARN_BATCH], ">=", 0.95),
        ("own CPU overhead per request vs bare hello", overhead / cpu["hello"], "<=", 1.5),
        (
            "metrics on vs off (throughput lost)",
            1 - rps["predict single"] / rps["predict single, metrics off"],
            "<=",
            0.05,
        ),
        ("batch 100 rows/s vs single rows/s", rps["predict batch 100"] * 100 / rps["predict single"], ">=", 20.0),
        (
            "model monitoring on vs off, single (throughput kept)",
            rps[NOCHALLENGER_SINGLE] / rps[NOMONITORING_SINGLE],
            ">=",
            0.95,
        ),
        (
            "model monitoring on vs off, batch 100 (throughput kept)",
            rps[NOCHALLENGER_BATCH] / rps[NOMONITORING_BATCH],
            ">=",
            0.9,
        ),
        ("samples in one /metrics scrape, against the budget", scrape_samples / 1000, "<=", 1.0),
        ("/metrics scrape, ms", scrape_before, "<=", 20.0),
        (f"/metrics scrape after {args.restarts} restarts vs before", scrape_after / scrape_before, "<=", 1.5),
    ]
    results = {
        "machine": {
            "cpus": os.cpu_count(),
            "cpu": next(
                (
                    line.split(":", 1)[1].strip()
                    for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")
                ),
                platform.processor(),
            ),
            "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d"),
        },
        "settings": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "connections": args.connections,
            "wrk_timeout_s": args.timeout,
            "workers": WORKERS,
            "worker_class": GEVENT,
            "model": champion.estimator.__class__.__name__,
            "runtime": champion.runtime.name,
        },
        "targets": table,
        "model_call": model_call,
        "model_call_sklearn": model_call_sklearn,
        # Wall time of the model call inside the predict servers under the single-record load,
        # as their own histogram recorded it.
        "model_call_in_server": {
            "us_per_call": summary(model_in_server["predict single"]),
            "sklearn_us_per_call": summary(model_in_server[SKLEARN_SINGLE]),
            "own_overhead_vs_hello": (cpu["predict single"] - in_server["predict single"]) / cpu["hello"],
        },
        "runtime": runtime_cost(table, model_call, model_call_sklearn),
        "worker_rss_mib": rss,
        # The better of mlflow's two thread settings, the one the goal compares against.
        "mlflow_peer": {"target": peer, "rps": {name: rps[name] for name in MLFLOW_PEERS}},
        # What scoring the challenger costs: throughput kept with it against without it.
        "challenger": {
            "single_throughput_kept": rps["predict single"] / rps[NOCHALLENGER_SINGLE],
            "batch_throughput_kept": rps["predict batch 100"] / rps[NOCHALLENGER_BATCH],
        },
        "scrape": {
            "samples": scrape_samples,
            "before_ms": scrape_before,
            "after_ms": scrape_after,
            "restarts": args.restarts,
            "restart_seconds": restart_seconds,
            "files_before": files_before,
            "files_after": files_after,
        },
        "replacement": {
            kind: {
                "trials": len(figures["walls"]),
                "wall_ms_to_first_answer": summary([w * 1000 for w in figures["walls"]]),
                "cpu_ms_per_replacement": figures["cpu"] * 1000 / len(figures["walls"]),
            }
            for kind, figures in replacement.items()
        },
        "worker_class": worker_class_cost(table),
        "checks": [
            {"check": c, "value": v, "target": f"{op} {t}", "met": v >= t if op == ">=" else v <= t}
            for c, v, op, t in checks
        ],
    }
    markdown = render(results)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "bench.md").write_text(markdown)
    print(markdown)
    return 0


def runtime_cost(table: dict, call: dict, call_sklearn: dict) -> dict:
    """The served runtime against scikit-learn on the same loads (above 1: the served one's
    figure is higher)."""
    this, sklearn = table[GEVENT_TARGET], table[SKLEARN_SINGLE]
    return {
        "single_rps_ratio": this["rps"]["median"] / sklearn["rps"]["median"],
        "single_cpu_per_request_ratio": this["cpu_us_per_request"]["median"] / sklearn["cpu_us_per_request"]["median"],
        "batch_rps_ratio": table["predict batch 100"]["rps"]["median"] / table[SKLEARN_BATCH]["rps"]["median"],
        "call_single_cpu_ratio": call["single"]["cpu_us_per_call"] / call_sklearn["single"]["cpu_us_per_call"],
        "call_batch_cpu_ratio": call["batch100"]["cpu_us_per_call"] / call_sklearn["batch100"]["cpu_us_per_call"],
    }


def runtime_line(runtime: str, cost: dict) -> str:
    return (
        f"{runtime} vs sklearn runtime (`predict single` and `predict batch 100` against the same server with "
        f"`INFERENCE_RUNTIME=sklearn`): single-record throughput {cost['single_rps_ratio']:.2f}x, server CPU per "
        f"request {cost['single_cpu_per_request_ratio']:.2f}x, batch-100 throughput {cost['batch_rps_ratio']:.2f}x; "
        f"the in-process model call's CPU {cost['call_single_cpu_ratio']:.2f}x for 1 row and "
        f"{cost['call_batch_cpu_ratio']:.2f}x for 100 rows."
    )


def worker_class_cost(table: dict) -> dict:
    """The gevent worker against the sync one on the same single-record load: the ratios of
    their median throughput and median server CPU per request (above 1: gevent's is higher)."""
    gevent, sync = table[GEVENT_TARGET], table[SYNC_TARGET]
    return {
        "gevent_target": GEVENT_TARGET,
        "sync_target": SYNC_TARGET,
        "rps_ratio": gevent["rps"]["median"] / sync["rps"]["median"],
        "cpu_per_request_ratio": gevent["cpu_us_per_request"]["median"] / sync["cpu_us_per_request"]["median"],
    }


def worker_class_line(cost: dict) -> str:
    return (
        f"gevent vs sync worker (`{cost['gevent_target']}` against `{cost['sync_target']}`, the API's "
        f"/predict with `WORKER_CLASS=sync`): throughput {cost['rps_ratio']:.2f}x, server CPU per request "
        f"{cost['cpu_per_request_ratio']:.2f}x. wrk keeps its connections alive; a sync worker closes each "
        "connection after its answer, so against it wrk connects anew for every request (that is how sync "
        "serves: the connect and accept are in its figures)."
    )


def replacement_line(replacement: dict) -> str:
    check, nocheck = replacement["check"], replacement["nocheck"]
    wall = check["wall_ms_to_first_answer"]["median"], nocheck["wall_ms_to_first_answer"]["median"]
    cpu = check["cpu_ms_per_replacement"], nocheck["cpu_ms_per_replacement"]
    return (
        f"A worker replacement, from SIGKILL to the new worker's first answer ({check['trials']} trials each, "
        f"interleaved): {wall[0]:.1f} ms median and {cpu[0]:.1f} ms of CPU with the registry check before that "
        f"answer, {wall[1]:.1f} ms and {cpu[1]:.1f} ms without it (MODEL_RELOAD_SECONDS=0): the check costs "
        f"{wall[0] - wall[1]:+.1f} ms of wall time ({wall[0] / wall[1]:.2f}x) and {cpu[0] - cpu[1]:+.1f} ms of CPU "
        f"({cpu[0] / cpu[1]:.2f}x) per replacement."
    )


def render(results: dict) -> str:
    m, s = results["machine"], results["settings"]
    lines = [
        f"Machine: {m['cpus']} CPUs, {m['cpu']}, Python {m['python']}, {m['date']}. "
        f"wrk -t1 -c{s['connections']} --timeout {s['wrk_timeout_s']}s, "
        f"{s['rounds']} interleaved rounds of {s['duration_s']} s, "
        f"{s['workers']} workers per server ({s['worker_class']} worker class, but for the sync worker row), "
        f"model {s['model']}.",
        "",
        "| target | req/s median (min–max) | rows/s | p50 ms | p99 ms | server CPU µs/request |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results["targets"].items():
        rows = 100 if "batch" in name else 1
        r, cpu = row["rps"], row["cpu_us_per_request"]["median"]
        lines.append(
            f"| {name} | {r['median']:,.0f} ({r['min']:,.0f}–{r['max']:,.0f}) | {r['median'] * rows:,.0f} | "
            f"{row['p50_ms']['median']:.2f} | {row['p99_ms']['median']:.2f} | {cpu:,.0f} |"
        )
    call, in_server = results["model_call"], results["model_call_in_server"]
    for label, figures in ((s["runtime"], call), ("sklearn", results["model_call_sklearn"])):
        lines += [
            f"| in-process model call, 1 row, {label} | {figures['single']['calls_per_s']:,.0f} calls/s | | | | "
            f"{figures['single']['cpu_us_per_call']:,.1f} |",
            f"| in-process model call, 100 rows, {label} | {figures['batch100']['calls_per_s']:,.0f} calls/s | "
            f"{figures['batch100']['calls_per_s'] * 100:,.0f} | | | {figures['batch100']['cpu_us_per_call']:,.0f} |",
        ]
    lines += [
        "",
        runtime_line(s["runtime"], results["runtime"]),
        "",
        worker_class_line(results["worker_class"]),
        "",
        "The model call inside the predict servers, as their own `hvs_model_inference_duration_seconds` "
        f"histogram timed it under the single-record load: {in_server['us_per_call']['median']:,.1f} µs "
        f"({s['runtime']}) and {in_server['sklearn_us_per_call']['median']:,.1f} µs (sklearn), wall time, against "
        f"{call['single']['wall_us_per_call']:,.1f} µs of wall time and {call['single']['cpu_us_per_call']:,.1f} µs "
        "of CPU in a tight loop in the benchmark's process. Counting the in-server figure instead, own overhead "
        f"per request is {in_server['own_overhead_vs_hello']:.2f} times the bare endpoint's CPU (a diagnostic, "
        "not the goal's definition).",
        "",
        "Worker RSS (MiB): "
        + "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in results["worker_rss_mib"].items()),
        "",
        f"/metrics scrape: {results['scrape']['before_ms']:.1f} ms with {results['scrape']['files_before']} files, "
        f"{results['scrape']['after_ms']:.1f} ms with {results['scrape']['files_after']} files after "
        f"{results['scrape']['restarts']} worker restarts ({results['scrape']['restart_seconds']:.0f} s); "
        f"{results['scrape']['samples']} samples a scrape.",
        "",
        f"Scoring the challenger beside the champion keeps {results['challenger']['single_throughput_kept']:.2f} of "
        f"the single-record throughput and {results['challenger']['batch_throughput_kept']:.2f} of the "
        "100-record batch's (a second model call per request).",
        "",
        replacement_line(results["replacement"]),
        "",
        "| target | measured | goal | met |",
        "| --- | --- | --- | --- |",
    ]
    for check in results["checks"]:
        lines.append(
            f"| {check['check']} | {check['value']:.3g} | {check['target']} | {'yes' if check['met'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
