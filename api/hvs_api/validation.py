"""The ``POST /predict`` request: its two shapes, its limits, and every way it can be wrong.

A request is either one record, a JSON object with every sensor field::

    {"temperature_c": 54.2, "vibration_mm_s": 3.9, "pressure_kpa": 201.0, "humidity_pct": 44.0, "gas_ppm": 118.0}

or a batch of records::

    {"records": [{...}, {...}]}

Every field is required, must be a JSON number (not a string or boolean), finite, and
inside the range ``hvs_model.features`` gives; any other field is an error. A problem is
reported as a ``RequestError`` with an HTTP status and one of ``INVALID_REASONS``, the
bounded label the ``hvs_api_invalid_requests_total`` metric counts it by.
"""

import json
import math
from dataclasses import dataclass, field

import numpy as np
from hvs_model.features import FEATURE_NAMES, FEATURES

# The reasons any JSON request (/predict, /feedback) can be refused for: its body, its batch,
# its fields.
REQUEST_REASONS: tuple[str, ...] = (
    "unsupported_media_type",
    "body_too_large",
    "body_incomplete",
    "malformed_json",
    "duplicate_key",
    "invalid_shape",
    "empty_batch",
    "batch_too_large",
    "missing_field",
    "unknown_field",
    "wrong_type",
)
# Every reason a prediction request can be refused for; metrics pre-initialise one series per reason.
INVALID_REASONS: tuple[str, ...] = (*REQUEST_REASONS, "not_finite", "out_of_range")

# The reasons that are about one field of a record; hvs_api_invalid_fields_total counts them by
# the sensor field, or by UNKNOWN_FIELD for a field that is not a sensor's (any name a client
# sends would make the label unbounded).
FIELD_REASONS: tuple[str, ...] = ("missing_field", "unknown_field", "wrong_type", "not_finite", "out_of_range")
UNKNOWN_FIELD = "unknown"

# At most this many problems are listed in one error response, to keep it small.
MAX_PROBLEMS_REPORTED = 20

_RANGES = {f.name: f for f in FEATURES}
# (name, minimum, maximum) in FEATURE_NAMES order, for the check of a record that is well formed.
_BOUNDS = tuple((f.name, f.minimum, f.maximum) for f in FEATURES)


@dataclass
class Problem:
    """One thing wrong with one field (or with the request as a whole when ``field`` is None)."""

    reason: str
    message: str
    field: str | None = None

    def as_dict(self) -> dict:
        return {"field": self.field, "reason": self.reason, "message": self.message}

    def field_label(self) -> tuple[str, str]:
        """``(field, reason)`` as the field metric counts it: the sensor field's name without
        its place in a batch (``records[3].gas_ppm`` is ``gas_ppm``), or UNKNOWN_FIELD."""
        name = (self.field or "").rsplit(".", 1)[-1]
        return (name if name in _RANGES else UNKNOWN_FIELD), self.reason


@dataclass
class RequestError(Exception):
    """A refused request: the status to answer with and the problems found."""

    status: int
    problems: list[Problem] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return self.problems[0].reason

    def as_dict(self) -> dict:
        first = self.problems[0]
        return {
            "error": first.reason,
            "message": first.message,
            "field": first.field,
            "problems": [p.as_dict() for p in self.problems[:MAX_PROBLEMS_REPORTED]],
        }


def refuse(status: int, reason: str, message: str, field_name: str | None = None) -> RequestError:
    """Build a one-problem ``RequestError``."""
    return RequestError(status, [Problem(reason, message, field_name)])


@dataclass(frozen=True)
class Features:
    """A validated request: the model's input matrix and whether it came as a batch."""

    matrix: np.ndarray
    is_batch: bool


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON; send a finite number")


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise RequestError(400, [Problem("duplicate_key", f"the key {key!r} appears more than once", key)])
        seen.add(key)
    raise AssertionError("unreachable: fewer keys than pairs means a key repeats")


# One decoder for every request: json.loads with any option builds a new decoder and scanner
# on each call, which cost more than decoding a one-record body.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)


def parse_json(raw: bytes) -> object:
    """Decode a UTF-8 JSON body strictly: no NaN or Infinity literals, no duplicate keys."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise refuse(400, "malformed_json", f"the body is not valid UTF-8 (byte {exc.start})") from exc
    if text.startswith("\ufeff"):  # as json.loads refuses it
        raise refuse(400, "malformed_json", "the body is not valid JSON: it starts with a UTF-8 byte order mark")
    try:
        return _DECODER.decode(text)
    except RecursionError as exc:
        raise refuse(400, "malformed_json", "the JSON is nested too deeply") from exc
    except ValueError as exc:
        raise refuse(400, "malformed_json", f"the body is not valid JSON: {exc}") from exc


def _check_record(record: object, where: str) -> list[Problem]:
    if not isinstance(record, dict):
        return [Problem("invalid_shape", f"{where} must be an object of sensor fields", where or None)]
    prefix = f"{where}." if where else ""
    problems = [
        Problem("missing_field", f"the field {name!r} is required", prefix + name)
        for name in FEATURE_NAMES
        if name not in record
    ]
    problems += [
        Problem(
            "unknown_field",
            f"the field {name!r} is not a sensor field (expected {', '.join(FEATURE_NAMES)})",
            prefix + name,
        )
        for name in record
        if name not in _RANGES
    ]
    for name, value in record.items():
        feature = _RANGES.get(name)
        if feature is None:
            continue
        path = prefix + name
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(Problem("wrong_type", f"{path} must be a number, got {type(value).__name__}", path))
        # An int is finite, however large: math.isfinite would convert it to a float and
        # overflow (10**400 is valid JSON); the range check compares it exactly.
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(Problem("not_finite", f"{path} must be finite", path))
        elif not feature.minimum <= value <= feature.maximum:
            problems.append(
                Problem(
                    "out_of_range",
                    f"{path} = {value} is outside the accepted range {feature.minimum:g} to {feature.maximum:g} "
                    f"{feature.unit}",
                    path,
                )
            )
    return problems


def _well_formed(record: object) -> bool:
    """True when ``record`` holds exactly the sensor fields, each a finite number in its range.

    The common case, checked in one pass without building a message: ``_check_record`` says
    what is wrong only when this is False, so the answers are the same either way. A bool is
    not a number here (``type(True)`` is bool, not int), a NaN fails every comparison and an
    infinity its range."""
    if type(record) is not dict or len(record) != len(_BOUNDS):
        return False
    for name, minimum, maximum in _BOUNDS:
        value = record.get(name)
        value_type = type(value)
        if (value_type is not float and value_type is not int) or not minimum <= value <= maximum:
            return False
    return True


def batch_items(payload: object, key: str, noun: str, max_items: int) -> tuple[list, list[str]] | None:
    """The items of a batch body (``{key: [...]}``, and no other key) with their paths in error
    messages (``key[3]``), or None when the body is no batch; ``RequestError`` when the batch is
    malformed, empty or larger than ``max_items``. ``/predict`` and ``/feedback`` share it."""
    if not (isinstance(payload, dict) and key in payload):
        return None
    if len(payload) > 1:
        extra = sorted(k for k in payload if k != key)
        raise refuse(422, "unknown_field", f"a batch has only the key {key!r}, not {extra}", extra[0])
    items = payload[key]
    if not isinstance(items, list):
        raise refuse(400, "invalid_shape", f"{key!r} must be a list of objects", key)
    if not items:
        raise refuse(422, "empty_batch", f"{key!r} must hold at least one {noun}", key)
    if len(items) > max_items:
        raise refuse(422, "batch_too_large", f"a batch holds at most {max_items} {noun}s, got {len(items)}", key)
    return items, [f"{key}[{i}]" for i in range(len(items))]


def validate(payload: object, max_records: int) -> Features:
    """Check a decoded request and return its input matrix, or raise ``RequestError``."""
    batch = batch_items(payload, "records", "record", max_records)
    if batch is not None:
        records, paths = batch
        is_batch = True
    elif isinstance(payload, dict):
        records, is_batch, paths = [payload], False, [""]
    else:
        raise refuse(
            400, "invalid_shape", 'the body must be a JSON object: one record, or {"records": [...]} for a batch'
        )

    if not all(map(_well_formed, records)):
        problems: list[Problem] = []
        for record, path in zip(records, paths, strict=True):
            problems += _check_record(record, path)
        if problems:  # always, as _well_formed is stricter; if not, the record is served as before
            status = 400 if problems[0].reason == "invalid_shape" else 422
            raise RequestError(status, problems)
    matrix = np.array([[record[name] for name in FEATURE_NAMES] for record in records], dtype=np.float64)
    return Features(matrix, is_batch)
