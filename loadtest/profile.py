"""`make profile`: where one gunicorn worker of the API spends its time under wrk, by py-spy.

A one-worker server (the API's gunicorn settings, the gevent worker class, metrics and model
monitoring on, as served) takes wrk's single-record /predict load while py-spy samples the
worker from outside (it changes nothing in the process it samples). The samples are grouped
by layer (the HTTP stack, Flask, the exporter, prometheus_client, our code, the model call), and
the functions with the largest inclusive share are listed: the report that docs/benchmarks.md
quotes. Shares, not times: they hold on a loaded machine, where times would not.

Usage: python -m loadtest.profile [--seconds S] [--rate HZ] [--connections C] [--path /predict]
Writes results/profile.md and results/profile.raw.txt (py-spy's collapsed stacks).
"""

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from loadtest.bench import BIN, ROOT, Server, ensure_wrk, trained_store, wrk_script

# Each sample goes to the first layer of this list that one of its frames belongs to: a sample
# inside the model call counts as the model's, not as the view's that called it, and a gevent
# lock taken by prometheus_client as the metrics'.
LAYERS = (
    ("model call (treelite or scikit-learn)", ("hvs_api/runtime.py", "treelite", "sklearn/")),
    ("metrics: prometheus_client values", ("prometheus_client/",)),
    ("metrics: prometheus-flask-exporter", ("prometheus_flask_exporter/",)),
    ("metrics: default HTTP metrics (hvs_api/http_metrics.py)", ("hvs_api/http_metrics.py",)),
    ("metrics: our counts (hvs_api/metrics.py)", ("hvs_api/metrics.py", "hvs_model/baseline.py")),
    ("prediction ids (hvs_api/prediction_ids.py)", ("hvs_api/prediction_ids.py",)),
    ("validation (hvs_api/validation.py)", ("hvs_api/validation.py",)),
    ("JSON in and out", ("json/", "flask/json/")),
    (
        "our view and hooks (hvs_api)",
        (
            "hvs_api/routes.py",
            "hvs_api/responses.py",
            "hvs_api/extensions.py",
            "hvs_api/process_start.py",
            "hvs_api/model.py",
            "hvs_api/feedback",
        ),
    ),
    ("Flask and Werkzeug", ("flask/", "werkzeug/")),
    # Our worker class (hvs_api/gunicorn_worker.py) is gunicorn's HTTP handling, shared with the bare endpoint.
    ("gunicorn and gevent (HTTP, sockets)", ("gunicorn/", "gevent/", "hvs_api/gunicorn_worker.py")),
)
OTHER = "other (no Python frame: native code or idle; or in no layer above)"


def frames_of(stack: str) -> list[tuple[str, str]]:
    """``(function, file)`` of each frame of one collapsed py-spy stack, outermost first."""
    found = []
    for frame in stack.split(";"):
        match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
        function, path = (match.group(1), match.group(2)) if match else (frame, "")
        found.append((function, re.sub(r".*(site-packages|lib/python3\.\d+)/", "", path)))
    return found


def layer_of(frames: list[tuple[str, str]]) -> str:
    for layer, markers in LAYERS:
        if any(marker in path for _, path in frames for marker in markers):
            return layer
    return OTHER


def summarise(raw: str, top: int = 40) -> dict:
    """Samples by layer and by function (inclusive), from py-spy's raw (collapsed) output."""
    layers: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    for line in raw.splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        samples = int(count)
        frames = frames_of(stack)
        total += samples
        layers[layer_of(frames)] += samples
        for function, path in set(frames):
            inclusive[f"{function} ({path})"] += samples
    if not total:
        sys.exit("py-spy took no samples: is the worker serving?")
    return {
        "samples": total,
        "layers": [(name, count / total) for name, count in layers.most_common()],
        "functions": [(name, count / total) for name, count in inclusive.most_common(top)],
    }


def render(summary: dict, settings: dict) -> str:
    lines = [
        f"py-spy, {settings['rate']} Hz for {settings['seconds']} s on one gevent worker of the API "
        f"under `wrk -t1 -c{settings['connections']}` POSTing one record to {settings['path']} "
        f"({settings['rps']:,.0f} req/s during the sampling, {summary['samples']} samples).",
        "",
        "| layer (a sample counts in the first layer of the list it reached) | share of samples |",
        "| --- | --- |",
    ]
    lines += [f"| {name} | {share:.1%} |" for name, share in summary["layers"]]
    lines += ["", "| function (inclusive) | share |", "| --- | --- |"]
    lines += [f"| `{name}` | {share:.1%} |" for name, share in summary["functions"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--path", default="/predict")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    args = parser.parse_args(argv)
    wrk = ensure_wrk()
    py_spy = shutil.which("py-spy", path=str(BIN)) or sys.exit("py-spy is missing: make bench installs it")

    workdir = Path(tempfile.mkdtemp(prefix="hvs-profile-"))
    mlruns = trained_store(workdir)
    server = Server(
        "profile",
        [str(BIN / "gunicorn"), "--config", str(ROOT / "api" / "gunicorn.conf.py")],
        ROOT / "api",
        {
            "WORKERS": "1",
            "WORKER_CLASS": "gevent",
            "MODEL_RELOAD_SECONDS": "0",
            "MLRUNS_DIR": str(mlruns),
            "PROMETHEUS_MULTIPROC_DIR": str(workdir / "metrics"),
        },
        ready_path="/ready",
    )
    script = wrk_script(workdir / "predict.lua", json.dumps(json.loads((ROOT / "test_payload.json").read_text())))
    url = f"http://127.0.0.1:{server.port}{args.path}"

    def load(seconds: int) -> subprocess.Popen:
        command = [wrk, "-t1", f"-c{args.connections}", f"-d{seconds}s", "-s", str(script), url]
        return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)

    raw_path = args.out / "profile.raw.txt"
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        server.start()
        server.wait_ready()
        load(2).wait()  # warm up: the first requests fill caches the steady state does not pay for
        [worker] = server.workers()
        # wrk runs a second longer than py-spy samples, so that every sample is under load.
        traffic = load(args.seconds + 1)
        subprocess.run(
            [py_spy, "record", "--pid", str(worker), "--rate", str(args.rate), "--duration", str(args.seconds)]
            # Without pausing the worker: paused by ptrace for each sample, it is caught in
            # system calls far more often than it spends there (os.getpid, 0.2 µs a call here,
            # took 9% of the samples). Read while running, a stack can now and then be torn
            # (a frame under the wrong caller): a smaller error, and in one frame, not a layer.
            + ["--format", "raw", "--output", str(raw_path), "--nonblocking"],
            check=True,
            capture_output=True,
        )
        out, _ = traffic.communicate()
    finally:
        server.stop()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    settings = {**vars(args), "rps": rps}
    markdown = render(summarise(raw_path.read_text()), settings)
    (args.out / "profile.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
