"""Where true labels are kept: one SQLite file shared by every worker of an API instance.

Three tables: ``labelled`` (the key of every prediction id that has been labelled, so that none
is counted twice), ``confusion`` (records by model role and version, predicted and true label)
and ``delay`` (a histogram of the time from prediction to label). A batch of feedback is one
transaction: all of it is recorded, or (an id already labelled) none of it. The counts that
``/metrics`` exports are read from the file at each scrape, so they are exact across workers,
across a worker that dies (a transaction it did not commit never counted) and across restarts
of the API (the file is on the model store's volume in Compose).

The file also holds the secret that signs prediction ids when ``FEEDBACK_SECRET`` is unset:
the first worker to open the file writes one, and every worker reads the same.

Cost: one row of about 60 bytes per labelled record. Ids expire after
``FEEDBACK_MAX_AGE_SECONDS`` (feedback for an older one is refused), so older keys are deleted
and the file stops growing once traffic is steady: about 60 MB per million labels a week.
"""

import secrets
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from hvs_api.prediction_ids import Prediction

# Seconds from prediction to label: a label from an automated check within seconds, an
# operator's confirmation within hours, a maintenance report within days.
DELAY_BUCKETS = (1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 86400.0, 7 * 86400.0)
# Keys older than the oldest acceptable id are deleted after this many labels.
PRUNE_EVERY = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labelled (key BLOB PRIMARY KEY, issued_at INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS labelled_issued_at ON labelled (issued_at);
CREATE TABLE IF NOT EXISTS confusion (
    role TEXT NOT NULL, model_version TEXT NOT NULL, predicted TEXT NOT NULL, actual TEXT NOT NULL,
    records INTEGER NOT NULL,
    PRIMARY KEY (role, model_version, predicted, actual)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delay (bucket INTEGER PRIMARY KEY, records INTEGER NOT NULL, seconds REAL NOT NULL);
CREATE TABLE IF NOT EXISTS settings (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
"""


class AlreadyLabelled(Exception):
    """Some ids of a batch were labelled before; nothing of the batch was recorded."""

    def __init__(self, positions: list[int]):
        super().__init__(positions)
        self.positions = positions


@dataclass(frozen=True)
class Label:
    """One true label for one prediction, as a feedback request gives it."""

    prediction: Prediction
    label: str  # the true label's text, one of hvs_model.features.LABELS
    field: str = "id"  # where the request gave the id ("feedback[3].id" in a batch), for errors


class FeedbackLedger:
    """One process's connection to the ledger file."""

    def __init__(self, path: Path, labels: dict[int, str]):
        self.path = path
        self._labels = labels
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection per worker process; a gevent worker's greenlets share it, and no call
        # into it yields, so their transactions never interleave.
        self._db = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
        # WAL lets a scrape read while a worker writes; NORMAL syncs at checkpoints, so a power
        # cut may lose the last labels but never corrupts the file.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._since_prune = 0

    def close(self) -> None:
        self._db.close()

    def secret(self) -> bytes:
        """The id-signing secret stored in the file, written by the first process to ask."""
        self._db.execute(
            "INSERT OR IGNORE INTO settings (name, value) VALUES ('id_secret', ?)", (secrets.token_bytes(32),)
        )
        return self._db.execute("SELECT value FROM settings WHERE name = 'id_secret'").fetchone()[0]

    def record(self, labels: list[Label], now: float | None = None, oldest: int | None = None) -> None:
        """Record a batch of labels in one transaction, or raise ``AlreadyLabelled`` and record none."""
        now = time.time() if now is None else now
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            keys = [item.prediction.key for item in labels]
            seen = set()
            for start in range(0, len(keys), 500):  # SQLite's limit on parameters per statement
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                seen |= {row[0] for row in db.execute(f"SELECT key FROM labelled WHERE key IN ({marks})", chunk)}
            if seen:
                raise AlreadyLabelled([i for i, key in enumerate(keys) if key in seen])
            db.executemany(
                "INSERT INTO labelled (key, issued_at) VALUES (?, ?)",
                [(item.prediction.key, item.prediction.issued_at) for item in labels],
            )
            counts: dict[tuple[str, str, str, str], int] = {}
            for item in labels:
                p = item.prediction
                scored = [("champion", p.model_version, p.label_id)]
                if p.challenger_version is not None and p.challenger_label_id is not None:
                    scored.append(("challenger", p.challenger_version, p.challenger_label_id))
                for role, version, label_id in scored:
                    key = (role, version, self._labels[label_id], item.label)
                    counts[key] = counts.get(key, 0) + 1
            db.executemany(
                "INSERT INTO confusion VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT DO UPDATE SET records = records + excluded.records",
                [(*key, n) for key, n in counts.items()],
            )
            delays: dict[int, tuple[int, float]] = {}
            for item in labels:
                seconds = max(0.0, now - item.prediction.issued_at)
                bucket = next((i for i, bound in enumerate(DELAY_BUCKETS) if seconds <= bound), len(DELAY_BUCKETS))
                n, total = delays.get(bucket, (0, 0.0))
                delays[bucket] = (n + 1, total + seconds)
            db.executemany(
                "INSERT INTO delay VALUES (?, ?, ?) "
                "ON CONFLICT DO UPDATE SET records = records + excluded.records, seconds = seconds + excluded.seconds",
                [(bucket, n, total) for bucket, (n, total) in delays.items()],
            )
            self._since_prune += len(labels)
            if oldest is not None and self._since_prune >= PRUNE_EVERY:
                db.execute("DELETE FROM labelled WHERE issued_at < ?", (oldest,))
                self._since_prune = 0
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def confusion(self) -> list[tuple[str, str, str, str, int]]:
        return self._db.execute("SELECT role, model_version, predicted, actual, records FROM confusion").fetchall()

    def delays(self) -> tuple[list[int], float]:
        """Records per delay bucket (the last one beyond every bound), and the sum of the delays."""
        per_bucket = [0] * (len(DELAY_BUCKETS) + 1)
        total = 0.0
        for bucket, records, seconds in self._db.execute("SELECT bucket, records, seconds FROM delay"):
            per_bucket[bucket] = records
            total += seconds
        return per_bucket, total


class FeedbackCollector:
    """Exports the ledger's counts at each scrape (a prometheus_client custom collector).

    ``ledger`` is anything with the ledger's ``confusion()`` and ``delays()``: the API passes
    its per-process holder (hvs_api.feedback.Feedback), so each worker reads through its own
    connection."""

    def __init__(self, ledger):
        self._ledger = ledger

    def collect(self) -> Iterable:
        confusion = CounterMetricFamily(
            "hvs_model_feedback_records",
            "Labelled predictions by model role and version, predicted and true label, from the feedback ledger",
            labels=["model_role", "model_version", "predicted_label_text", "true_label_text"],
        )
        for role, version, predicted, actual, records in self._ledger.confusion():
            confusion.add_metric([role, version, predicted, actual], records)
        yield confusion
        per_bucket, total = self._ledger.delays()
        cumulative, buckets = 0, []
        for bound, records in zip((*DELAY_BUCKETS, float("inf")), per_bucket, strict=True):
            cumulative += records
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        delay = HistogramMetricFamily(
            "hvs_model_feedback_delay_seconds",
            "Time from a prediction to its true label, one observation per labelled record",
        )
        delay.add_metric([], buckets, total)
        yield delay
