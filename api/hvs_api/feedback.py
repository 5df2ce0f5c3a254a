"""``POST /feedback``: the true labels of earlier predictions, by the ids ``/predict`` gave them.

One label::

    {"id": "AWsWF2Si...", "label": "Hazardous"}

or a batch::

    {"feedback": [{"id": "...", "label": "Normal"}, ...]}

Refused with a 4xx and a JSON error, as ``/predict`` refuses its bodies, and recorded all or
nothing: an id this API did not issue (or that was altered) is ``unknown_prediction_id``, one
older than ``FEEDBACK_MAX_AGE_SECONDS`` is ``expired_prediction_id``, the same id twice in one
batch is ``repeated_id``, and an id labelled before is ``already_labelled`` (409), counted once.
"""

import logging
import os
import secrets
import sqlite3
import time
from pathlib import Path

from hvs_model.features import LABELS

from hvs_api.feedback_ledger import DELAY_BUCKETS, FeedbackCollector, FeedbackLedger, Label
from hvs_api.prediction_ids import InvalidId, PredictionIds
from hvs_api.validation import REQUEST_REASONS, Problem, RequestError, batch_items, refuse

log = logging.getLogger(__name__)

# Every reason a feedback request can be refused for (hvs_api_invalid_feedback_total's labels).
FEEDBACK_REASONS: tuple[str, ...] = (
    *REQUEST_REASONS,
    "unknown_label",
    "unknown_prediction_id",
    "expired_prediction_id",
    "repeated_id",
    "already_labelled",
)
FIELDS = ("id", "label")
LABEL_TEXTS = tuple(LABELS.values())


class LedgerUnavailable(Exception):
    """The ledger file cannot be opened or written (a read-only or foreign-owned store)."""


class Feedback:
    """One app's feedback: the ledger (opened once per process: a SQLite connection must not
    cross gunicorn's fork) and the ids, signed with the configured or the ledger's secret.

    A ledger that cannot be used costs feedback only: predictions are still answered, with ids
    signed by a key made when the app is built (in gunicorn's master, so every worker forked
    from it has it), and ``POST /feedback`` answers 503 saying why."""

    def __init__(self, path: Path, secret: str, max_age_seconds: float):
        self.path = path
        self.max_age_seconds = max_age_seconds
        self._secret = secret.encode() if secret else None
        self._fallback_secret = secrets.token_bytes(32)
        self._pid: int | None = None
        self._ledger: FeedbackLedger | None = None
        self._ids: PredictionIds | None = None
        self.error = ""
        self.collector = FeedbackCollector(self)

    def _open(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        stored = None
        try:
            self._ledger = FeedbackLedger(self.path, LABELS)
            stored = self._ledger.secret()
        except (sqlite3.Error, OSError) as exc:
            self._ledger = None
            self.error = f"the feedback ledger {self.path} cannot be used ({exc}); set FEEDBACK_DB to a writable file"
            log.error("%s: predictions are answered, POST /feedback answers 503", self.error)
        self._ids = PredictionIds(self._secret or stored or self._fallback_secret)

    def ledger(self) -> FeedbackLedger:
        """This process's ledger, or ``LedgerUnavailable``."""
        self._open()
        if self._ledger is None:
            raise LedgerUnavailable(self.error)
        return self._ledger

    def ids(self) -> PredictionIds:
        self._open()
        return self._ids

    # The collector reads through this object, so that it uses this process's connection; without
    # a ledger there is nothing to count.
    def confusion(self):
        self._open()
        return self._ledger.confusion() if self._ledger else []

    def delays(self):
        self._open()
        return self._ledger.delays() if self._ledger else ([0] * (len(DELAY_BUCKETS) + 1), 0.0)


def parse(payload: object, max_records: int, ids: PredictionIds, max_age_seconds: float, now: float | None = None):
    """The labels a decoded feedback body gives, or ``RequestError``."""
    now = time.time() if now is None else now
    batch = batch_items(payload, "feedback", "label", max_records)
    if batch is not None:
        items, paths = batch
    elif isinstance(payload, dict):
        items, paths = [payload], [""]
    else:
        raise refuse(
            400, "invalid_shape", 'the body must be a JSON object: {"id": ..., "label": ...}, or {"feedback": [...]}'
        )

    problems: list[Problem] = []
    labels: list[Label] = []
    first_seen: dict[bytes, str] = {}
    oldest = now - max_age_seconds
    for item, where in zip(items, paths, strict=True):
        prefix = f"{where}." if where else ""
        if not isinstance(item, dict):
            problems.append(Problem("invalid_shape", f"{where} must be an object with 'id' and 'label'", where or None))
            continue
        found = [
            Problem("missing_field", f"the field {name!r} is required", prefix + name)
            for name in FIELDS
            if name not in item
        ]
        found += [
            Problem("unknown_field", f"the field {name!r} is not one of {', '.join(FIELDS)}", prefix + name)
            for name in item
            if name not in FIELDS
        ]
        text, label = item.get("id"), item.get("label")
        if "id" in item and not isinstance(text, str):
            found.append(
                Problem("wrong_type", f"{prefix}id must be a string, got {type(text).__name__}", prefix + "id")
            )
        if "label" in item and label not in LABEL_TEXTS:
            reason = "wrong_type" if not isinstance(label, str) else "unknown_label"
            found.append(Problem(reason, f"{prefix}label must be one of {', '.join(LABEL_TEXTS)}", prefix + "label"))
        if found:
            problems += found
            continue
        try:
            prediction = ids.read(text)
        except InvalidId:
            problems.append(Problem("unknown_prediction_id", f"{prefix}id was not issued by this API", prefix + "id"))
            continue
        if prediction.issued_at < oldest:
            problems.append(
                Problem(
                    "expired_prediction_id",
                    f"{prefix}id is older than {max_age_seconds:g} seconds and no longer takes a label",
                    prefix + "id",
                )
            )
            continue
        if prediction.key in first_seen:
            problems.append(
                Problem("repeated_id", f"{prefix}id is also given at {first_seen[prediction.key]}", prefix + "id")
            )
            continue
        first_seen[prediction.key] = where or "the top level"
        labels.append(Label(prediction, label, prefix + "id"))
    if problems:
        status = 400 if problems[0].reason == "invalid_shape" else 422
        raise RequestError(status, problems)
    return labels, int(oldest)
