import json

import numpy as np
import pytest
from hvs_model.features import FEATURE_NAMES

from hvs_api import validation

GOOD = {"temperature_c": 50.0, "vibration_mm_s": 3, "pressure_kpa": 200.0, "humidity_pct": 40.0, "gas_ppm": 100.0}


def refused(payload, max_records=10) -> validation.RequestError:
    with pytest.raises(validation.RequestError) as caught:
        validation.validate(payload, max_records)
    return caught.value


def test_single_record_becomes_one_row_in_feature_order():
    features = validation.validate(dict(reversed(GOOD.items())), 10)
    assert not features.is_batch
    assert features.matrix.tolist() == [[GOOD[name] for name in FEATURE_NAMES]]
    assert features.matrix.dtype == np.float64


def test_batch_becomes_one_row_per_record():
    features = validation.validate({"records": [GOOD, GOOD, GOOD]}, 10)
    assert features.is_batch and features.matrix.shape == (3, 5)


@pytest.mark.parametrize(
    ("change", "reason", "field"),
    [
        ({"temperature_c": "50"}, "wrong_type", "temperature_c"),
        ({"temperature_c": True}, "wrong_type", "temperature_c"),
        ({"temperature_c": None}, "wrong_type", "temperature_c"),
        ({"temperature_c": [1]}, "wrong_type", "temperature_c"),
        ({"temperature_c": 1e400}, "not_finite", "temperature_c"),
        ({"temperature_c": 151}, "out_of_range", "temperature_c"),
        ({"gas_ppm": -0.01}, "out_of_range", "gas_ppm"),
        ({"humidity_pct": 10**30}, "out_of_range", "humidity_pct"),
        # too large for a float: refused by its range, not a 500 from converting it
        ({"humidity_pct": 10**400}, "out_of_range", "humidity_pct"),
        ({"colour": "red"}, "unknown_field", "colour"),
    ],
)
def test_bad_fields_are_named(change, reason, field):
    error = refused({**GOOD, **change})
    assert error.status == 422
    assert (error.reason, error.problems[0].field) == (reason, field)
    assert field in error.problems[0].message


def test_missing_fields_are_all_named():
    error = refused({"temperature_c": 50.0})
    assert error.status == 422
    missing = {p.field for p in error.problems if p.reason == "missing_field"}
    assert missing == set(FEATURE_NAMES) - {"temperature_c"}


def test_problems_in_a_batch_name_the_record():
    error = refused({"records": [GOOD, {**GOOD, "pressure_kpa": 5000}]})
    assert error.problems[0].field == "records[1].pressure_kpa"


@pytest.mark.parametrize(
    ("payload", "status", "reason"),
    [
        ([GOOD], 400, "invalid_shape"),
        ("text", 400, "invalid_shape"),
        (3, 400, "invalid_shape"),
        (None, 400, "invalid_shape"),
        ({"records": GOOD}, 400, "invalid_shape"),
        ({"records": [GOOD, 1]}, 400, "invalid_shape"),
        ({"records": []}, 422, "empty_batch"),
        ({"records": [GOOD] * 11}, 422, "batch_too_large"),
        ({"records": [GOOD], "extra": 1}, 422, "unknown_field"),
        ({}, 422, "missing_field"),
    ],
)
def test_wrong_shapes(payload, status, reason):
    error = refused(payload)
    assert (error.status, error.reason) == (status, reason)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"temperature_c": NaN}', "malformed_json"),
        (b'{"temperature_c": Infinity}', "malformed_json"),
        (b'{"temperature_c": -Infinity}', "malformed_json"),
        (b'{"a": 1, "a": 2}', "duplicate_key"),
        (b'{"records": [{"a": 1, "b": 2, "a": 3}]}', "duplicate_key"),
        ("\ufeff{}".encode(), "malformed_json"),
        (b"{} {}", "malformed_json"),
        (b"\xff\xfe{}", "malformed_json"),
        (b'{"temperature_c": 1', "malformed_json"),
        (b"", "malformed_json"),
        (b"[" * 100_000 + b"]" * 100_000, "malformed_json"),
        (b'{"gas_ppm": ' + b"9" * 5000 + b"}", "malformed_json"),
    ],
)
def test_malformed_bodies(raw, reason):
    with pytest.raises(validation.RequestError) as caught:
        validation.parse_json(raw)
    assert caught.value.status == 400 and caught.value.reason == reason


def test_error_body_lists_a_bounded_number_of_problems():
    error = refused({"records": [{"x": 1}] * 10})
    body = error.as_dict()
    assert body["error"] == "missing_field" and body["field"] == "records[0].temperature_c"
    assert len(body["problems"]) == validation.MAX_PROBLEMS_REPORTED
    json.dumps(body)  # Serialisable as it is.
