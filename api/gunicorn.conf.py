"""gunicorn settings and hooks for the HVS Prediction API: the image's CMD and `make serve` use this file.

Its environment is the API's settings (``hvs_settings.ApiSettings``, listed in
docs/configuration.md): HOST, PORT, WORKERS, INFERENCE_THREADS, PROMETHEUS_MULTIPROC_DIR,
ACCESS_LOG, LOG_LEVEL, TIMEOUT, MAX_REQUESTS and WORKER_CLASS (`sync` serves as the API first
did, one connection per worker process, for `make bench`'s comparison). A malformed value stops
the server before it binds, naming the variable.
"""

import os

# Standard library only: safe to import before gevent's patch, which this decides on.
from hvs_settings import ApiSettings

SETTINGS = ApiSettings.from_env()

# gevent must replace the blocking parts of the standard library before anything imports
# them, and the app is preloaded in this master process (below): gunicorn would patch only in
# each worker, after the app, MLflow and requests have captured the originals (and MLflow's
# background threads, started here, would not survive the fork).
if SETTINGS.worker_class == "gevent":
    from gevent import monkey

    monkey.patch_all()

# MLflow would start usage-reporting threads while the master loads the model; a server has
# nothing to report, and those threads (greenlets, once patched) would not survive the fork.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import logging  # noqa: E402 (after the patch, on purpose)
import shutil  # noqa: E402

# The app's own log lines (which model is served, or why none is) go to stderr beside gunicorn's.
logging.basicConfig(
    level=SETTINGS.log_level.upper(),
    format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
)

# OpenMP and BLAS read their thread counts once, when the model's libraries load, so they are
# set here, before the app is imported. Several workers each starting one thread per core
# oversubscribe the CPUs: a prototype on 2 cores served 80 times fewer requests that way.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_variable] = str(SETTINGS.inference_threads)

# prometheus_client decides at import time whether to share values through files, so the
# directory is set before the app (and prometheus_client) is imported. Dead workers' counts
# stay there (folded into archive files, see child_exit), which keeps counts exact after a
# worker dies, but also means a directory left over from an earlier server would add its
# counts to ours: it is emptied when a new server starts. gunicorn re-reads this file on
# SIGHUP, in the same master process, and must not empty the directory then: the master's pid
# marks that it has already done so.
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = SETTINGS.prometheus_multiproc_dir
if os.environ.get("HVS_METRICS_DIR_OWNER") != str(os.getpid()):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
    os.makedirs(_metrics_dir, exist_ok=True)
    os.environ["HVS_METRICS_DIR_OWNER"] = str(os.getpid())

# Each metric write without a system call and a greenlet lock (hvs_api.metric_values): before the
# first metric of this process is created, and after the thread variables above.
from hvs_api.metric_values import install as _install_metric_values  # noqa: E402

_install_metric_values()

wsgi_app = "hvs_api:create_app()"
bind = f"{SETTINGS.host}:{SETTINGS.port}"
# The model is CPU-bound: one worker process per available core. Each holds its clients'
# connections in greenlets (hvs_api.gunicorn_worker), so slow clients wait without holding a
# process, and up to worker_connections of them per worker.
workers = SETTINGS.workers or len(os.sched_getaffinity(0))
worker_class = "hvs_api.gunicorn_worker.SlowClientSafeWorker" if SETTINGS.worker_class == "gevent" else "sync"
worker_connections = 1000
# The app, MLflow and the model are loaded once in the master and shared with the workers
# (copy-on-write), so a worker that dies is replaced in milliseconds, not seconds.
preload_app = True
timeout = SETTINGS.timeout
# Recycle a worker after this many requests (0: never), with jitter so they don't all go at once.
max_requests = SETTINGS.max_requests
max_requests_jitter = max_requests // 10
# SIGTERM lets in-flight requests finish for this long before workers are killed.
graceful_timeout = 20
keepalive = 5
accesslog = "-" if SETTINGS.access_log else None
errorlog = "-"
# gunicorn's control socket would be written under $HOME, which is read-only in the container
# and unused by the lab.
control_socket_disable = True
loglevel = SETTINGS.log_level


def when_ready(server):
    """Drop the master's live gauges before the first worker starts.

    The master builds the app (preload_app), so prometheus_client gave it a file of live gauges
    at their initial 0, which it never sets: hvs_model_loaded's "livemin" would read that 0
    forever. The master serves nothing, so its live gauges have nothing to say.
    """
    from prometheus_client.multiprocess import mark_process_dead

    mark_process_dead(os.getpid(), _metrics_dir)
    # Created here, in the master, so that both series exist at 0 from the start.
    _worker_losses()


_LOSSES = {}


def _worker_losses():
    """The master's counters of work lost with dead workers (written to the master's own file,
    which outlives every worker)."""
    if not _LOSSES:
        from prometheus_client import Counter

        _LOSSES["requests"] = Counter(
            "hvs_api_aborted_requests_total",
            "Requests in progress in a worker when it died (killed, crashed, timed out): never answered or counted",
            registry=None,
        )
        _LOSSES["workers"] = Counter(
            "hvs_api_aborted_workers_total",
            "Workers that died with requests in progress",
            registry=None,
        )
    return _LOSSES


def post_worker_init(worker):
    """Publish the worker's model and start its model watcher now, not on its first request.

    A gevent worker may go a while without a request while the other takes them all; it must
    still follow the champion alias, and its metrics must say which model it holds.
    """
    from hvs_api import start_in_this_process

    app = worker.wsgi
    if "hvs_model" not in getattr(app, "extensions", {}):
        return  # Another app under these settings: make bench's bare Flask baseline.
    with app.app_context():
        start_in_this_process()


def child_exit(server, worker):
    """Drop the exited worker's live gauges and fold its counts into the archive files.

    This does what prometheus-flask-exporter's mark_process_dead_on_child_exit does, and then
    keeps the directory from growing with every replaced worker (see hvs_api.metrics_files).
    """
    from hvs_api.metrics import REQUESTS_IN_PROGRESS
    from hvs_api.metrics_files import fold_dead_worker, live_gauge_value

    # A worker that exits on purpose (recycled, reloaded, stopped) finishes its requests first;
    # one that still had some was killed, crashed or timed out, and they died with it.
    lost = live_gauge_value(_metrics_dir, worker.pid, REQUESTS_IN_PROGRESS)
    if lost > 0:
        losses = _worker_losses()
        losses["requests"].inc(lost)
        losses["workers"].inc()
        server.log.warning("Worker (pid:%s) died with %d requests in progress", worker.pid, lost)
    fold_dead_worker(_metrics_dir, worker.pid)
