"""Every setting the lab's processes read from the environment, read in one place.

Each deployable has its settings class (the API, with its gunicorn server and worker class;
the alert receiver; the load tests; the model store), built once with ``from_env()``. A value
is parsed by the one parser of its kind (``flag``, ``integer``, ``number``, ``choice``,
``text``); an empty value means the default (``make serve`` passes ``WORKERS=`` when none is
given); a malformed or unknown value raises ``SettingError`` naming the variable, so the
process stops at start rather than serving with a guess.

Standard library only, on purpose: gunicorn's configuration reads these settings before gevent
patches the standard library (``WORKER_CLASS`` decides whether it does), and the alert receiver
and the MLflow UI's store plugin must not import the API. pydantic-settings would do the
parsing, but it imports ssl and about 300 modules (a quarter of a second) before that patch,
which gevent warns can break ssl afterwards. ``python -m hvs_settings`` prints the tables of
docs/configuration.md, which a test keeps equal to this module.
"""

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ApiSettings",
    "LoadTestSettings",
    "ReceiverSettings",
    "SettingError",
    "StoreSettings",
    "markdown_tables",
]

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class SettingError(ValueError):
    """A variable's value that its kind does not accept; the message starts with the variable."""


# --- One parser per kind of value ---------------------------------------------------------------
# Each returns a function of the raw string that returns the value or raises ValueError saying
# what the kind accepts (``from_env`` adds the variable's name and the value).


def flag() -> Callable[[str], bool]:
    def parse(raw: str) -> bool:
        word = raw.strip().lower()
        if word in TRUE:
            return True
        if word in FALSE:
            return False
        raise ValueError(f"must be one of {', '.join(TRUE + FALSE)}")

    parse.kind = "true or false"
    return parse


def integer(minimum: int = 0) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("must be a whole number") from None
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    parse.kind = f"whole number, at least {minimum}"
    return parse


def number(minimum: float = 0.0, maximum: float | None = None) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("must be a number") from None
        # NaN compares false with everything: it would pass both bounds unless refused here.
        if value != value or value < minimum or (maximum is not None and value > maximum):
            bounds = f"from {minimum:g} to {maximum:g}" if maximum is not None else f"at least {minimum:g}"
            raise ValueError(f"must be a number {bounds}")
        return value

    parse.kind = f"number from {minimum:g} to {maximum:g}" if maximum is not None else f"number, at least {minimum:g}"
    return parse


def choice(*values: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        word = raw.strip().lower()
        if word not in values:
            raise ValueError(f"must be one of {', '.join(values)}")
        return word

    parse.kind = ", ".join(f"`{v}`" for v in values)
    return parse


def text() -> Callable[[str], str]:
    def parse(raw: str) -> str:
        return raw.strip()

    parse.kind = "text"
    return parse


def setting(variable: str, parse: Callable[[str], object], default: object, doc: str, shown: str | None = None):
    """A dataclass field read from ``variable``; ``shown`` is the default as the docs write it."""
    return field(default=default, metadata={"variable": variable, "parse": parse, "doc": doc, "shown": shown})


class FromEnvironment:
    """``from_env`` for a settings dataclass whose fields were made with ``setting``."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None):
        env = os.environ if env is None else env
        values = {}
        for f in dataclasses.fields(cls):
            raw = env.get(f.metadata["variable"], "")
            if raw.strip() == "":  # Unset or empty: the default.
                continue
            try:
                values[f.name] = f.metadata["parse"](raw)
            except ValueError as error:
                raise SettingError(f"{f.metadata['variable']}={raw!r}: {error}") from None
        return cls(**values)


# --- The settings of each deployable ------------------------------------------------------------


@dataclass(frozen=True)
class StoreSettings(FromEnvironment):
    """The embedded MLflow store, shared by training, the API and the MLflow UI."""

    mlruns_dir: str = setting(
        "MLRUNS_DIR", text(), "mlruns", "the embedded MLflow store (a relative path is from the working directory)",
        shown="`./mlruns` (`/app/mlruns` in the image)",
    )  # fmt: skip

    @property
    def mlruns_path(self) -> Path:
        return Path(self.mlruns_dir).resolve()


@dataclass(frozen=True)
class ApiSettings(FromEnvironment):
    """The API: the Flask app, gunicorn's configuration (api/gunicorn.conf.py) and its worker class."""

    model_uri: str = setting(
        "MODEL_URI",
        text(),
        "",
        "any MLflow model URI or local model folder to serve; first in [the lookup order]"
        "(model-and-inference.md#training-and-the-registry)",
    )
    best_mlflow_run_id: str = setting(
        "BEST_MLFLOW_RUN_ID", text(), "", "training run whose model to serve, when `MODEL_URI` is unset"
    )
    host: str = setting("HOST", text(), "0.0.0.0", "listening address (`make serve` binds 127.0.0.1)")
    port: int = setting("PORT", integer(1), 5001, "listening port")
    workers: int | None = setting(
        "WORKERS", integer(1), None, "gunicorn worker processes", shown="one per available CPU"
    )
    inference_threads: int = setting("INFERENCE_THREADS", integer(1), 1, "OpenMP/BLAS threads per worker")
    timeout: int = setting("TIMEOUT", integer(1), 30, "seconds before gunicorn replaces a stuck worker")
    max_requests: int = setting(
        "MAX_REQUESTS", integer(0), 0, "recycle a worker after this many requests, with 10 % jitter (0: never)"
    )
    client_idle_seconds: float = setting(
        "CLIENT_IDLE_SECONDS", number(0.001), 10.0,
        "a client that sends (or reads) nothing for this long in the middle of a request is dropped",
    )  # fmt: skip
    inference_runtime: str = setting(
        "INFERENCE_RUNTIME", choice("auto", "sklearn"), "auto",
        "`sklearn` serves every model with scikit-learn, never treelite (see [the inference runtime]"
        "(model-and-inference.md#the-inference-runtime-treelite-proven-identical))",
    )  # fmt: skip
    worker_class: str = setting(
        "WORKER_CLASS", choice("gevent", "sync"), "gevent",
        "`sync` serves with plain synchronous workers; for `make bench`'s comparison only, since slow "
        "clients can then take every worker",
    )  # fmt: skip
    max_body_bytes: int = setting(
        "MAX_BODY_BYTES", integer(1), 1024 * 1024, "largest request body; a full 1,000-record batch is about 120 KiB"
    )
    max_batch_records: int = setting("MAX_BATCH_RECORDS", integer(1), 1000, "largest batch")
    model_reload_seconds: float = setting(
        "MODEL_RELOAD_SECONDS", number(0), 30.0,
        "how often each worker checks whether the `champion` alias moved (0: never)",
        shown="`30` (`15` in the lab, `0` in Kubernetes)",
    )  # fmt: skip
    fault_injection_enabled: bool = setting(
        "FAULT_INJECTION_ENABLED", flag(), False,
        "honour `X-Inject-Fault: 1` on `/predict` with a 500 (the error-burst demo)",
        shown="`false` (`true` in the Compose lab)",
    )  # fmt: skip
    metrics_enabled: bool = setting(
        "METRICS_ENABLED", flag(), True, "the default HTTP metrics (off only to measure their cost in `make bench`)"
    )
    model_monitoring_enabled: bool = setting(
        "MODEL_MONITORING_ENABLED", flag(), True,
        "the per-feature drift counts and the prediction ids (off only to measure their cost in `make bench`)",
    )  # fmt: skip
    prometheus_multiproc_dir: str = setting(
        "PROMETHEUS_MULTIPROC_DIR", text(), "/tmp/hvs-api-metrics",
        "where workers share metric values; emptied when the server starts",
    )  # fmt: skip
    challenger_share: float = setting(
        "CHALLENGER_SHARE", number(0, 1), 0.1,
        "share of records the `challenger` alias's model also scores, when the champion alias is served (0: none); "
        "each costs a second model call",
    )  # fmt: skip
    feedback_db: str = setting(
        "FEEDBACK_DB", text(), "",
        "the SQLite file that keeps true labels (`POST /feedback`), shared by the workers",
        shown="`feedback.sqlite` in `MLRUNS_DIR`",
    )  # fmt: skip
    feedback_secret: str = setting(
        "FEEDBACK_SECRET", text(), "",
        "signs prediction ids; set the same value on every instance that must accept the others' ids",
        shown="a random one, kept in `FEEDBACK_DB`",
    )  # fmt: skip
    feedback_secret_file: str = setting(
        "FEEDBACK_SECRET_FILE", text(), "",
        "a file holding `FEEDBACK_SECRET` (a mounted Secret); used when it exists",
    )  # fmt: skip
    feedback_max_age_seconds: float = setting(
        "FEEDBACK_MAX_AGE_SECONDS", number(1), 7 * 86400.0,
        "how long a prediction id accepts its label; older ids are refused and forgotten",
        shown="`604800` (7 days)",
    )  # fmt: skip
    access_log: bool = setting("ACCESS_LOG", flag(), False, "gunicorn's access log on stdout")
    log_level: str = setting("LOG_LEVEL", choice(*LOG_LEVELS), "info", "the app's and gunicorn's log level")

    @property
    def model_uri_to_serve(self) -> str:
        """The documented lookup order: MODEL_URI, then BEST_MLFLOW_RUN_ID, then the champion."""
        # Imported here: the store's names, without making this module depend on it at import.
        from hvs_store import CHAMPION_ALIAS, MODEL_NAME

        if self.model_uri:
            return self.model_uri
        if self.best_mlflow_run_id:
            return f"runs:/{self.best_mlflow_run_id}/model"
        return f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}"

    @property
    def challenger_uri(self) -> str | None:
        """The challenger alias, scored beside the champion alias only (a model chosen by
        MODEL_URI or BEST_MLFLOW_RUN_ID has no challenger), and not at a share of 0."""
        from hvs_store import CHALLENGER_ALIAS, CHAMPION_ALIAS, MODEL_NAME

        if self.challenger_share == 0 or self.model_uri_to_serve != f"models:/{MODEL_NAME}@{CHAMPION_ALIAS}":
            return None
        return f"models:/{MODEL_NAME}@{CHALLENGER_ALIAS}"


@dataclass(frozen=True)
class ReceiverSettings(FromEnvironment):
    """The lab's alert receiver (``python -m hvs_alert_receiver``)."""

    host: str = setting("HOST", text(), "0.0.0.0", "listening address")
    port: int = setting("PORT", integer(1), 9095, "listening port")
    runbook_path: str = setting("RUNBOOK_PATH", text(), "/etc/hvs/runbook.md", "the runbook it serves at `/runbook`")
    keep: int = setting("ALERT_RECEIVER_KEEP", integer(1), 500, "notifications kept for the page and `/alerts`")
    # The heartbeat route's repeat_interval (60 s) plus its group_interval (30 s), the longest
    # regular gap between two heartbeats, plus 60 s of grace for a retried delivery.
    heartbeat_max_silence_seconds: float = setting(
        "HEARTBEAT_MAX_SILENCE_SECONDS", number(1), 150.0,
        "seconds without a Watchdog heartbeat before the page says it is missing",
    )  # fmt: skip


@dataclass(frozen=True)
class LoadTestSettings(FromEnvironment):
    """The Locust scenarios (loadtest/locustfile.py)."""

    drift: float = setting("HVS_DRIFT", number(0, 1), 1.0, "how far `DriftUser`'s readings move to the stressed regime")
    fault_share: float = setting(
        "HVS_FAULT_SHARE", number(0, 1), 0.3, "share of `ErrorBurstUser`'s requests that ask for an injected 500"
    )
    sensor_fault: float = setting(
        "HVS_SENSOR_FAULT", number(0, 1), 1.0,
        "how much `SensorFaultUser`'s gas and vibration sensors under-read (1: by 60 %)",
    )  # fmt: skip
    feedback_share: float = setting(
        "HVS_FEEDBACK_SHARE", number(0, 1), 0.5, "share of predicted records whose true label every user sends back"
    )
    feedback_delay: float = setting(
        "HVS_FEEDBACK_DELAY", number(0), 30.0, "seconds from a prediction to its label's `POST /feedback`"
    )
    max_failure_ratio: float = setting(
        "HVS_MAX_FAILURE_RATIO", number(0, 1), 0.01, "a headless run with more failures exits 1 (not error bursts)"
    )
    max_p95_ms: float = setting("HVS_MAX_P95_MS", number(0), 500.0, "a headless run with a slower p95 exits 1")


SECTIONS = (
    ("The API (and its gunicorn server)", ApiSettings),
    ("The model store (training, the API, the MLflow UI)", StoreSettings),
    ("The alert receiver", ReceiverSettings),
    ("The load tests", LoadTestSettings),
)


def _shown(f: dataclasses.Field) -> str:
    if f.metadata["shown"] is not None:
        return f.metadata["shown"]
    if f.default in ("", None):
        return ""
    if isinstance(f.default, bool):
        return f"`{str(f.default).lower()}`"
    return f"`{f.default:g}`" if isinstance(f.default, float) else f"`{f.default}`"


def markdown_tables() -> str:
    """docs/configuration.md's tables: each deployable's variables, defaults, kinds and meanings."""
    out = []
    for title, cls in SECTIONS:
        out += [f"### {title}", "", "| variable | default | accepts | meaning |", "| --- | --- | --- | --- |"]
        for f in dataclasses.fields(cls):
            meta = f.metadata
            out.append(f"| `{meta['variable']}` | {_shown(f)} | {meta['parse'].kind} | {meta['doc']} |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
