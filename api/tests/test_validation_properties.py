"""Property tests of the request validation: whatever arrives, a clear 4xx or a prediction, and a
refused request never moves the counters of good predictions."""

import json
import math

import pytest
from hvs_model.features import FEATURE_NAMES, FEATURES
from hvs_settings import ApiSettings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.metrics_text import samples

# Any JSON value, nested a few levels.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
good_record = st.fixed_dictionaries(
    {f.name: st.floats(min_value=f.minimum, max_value=f.maximum, allow_nan=False) for f in FEATURES}
)
bad_number = st.sampled_from([math.nan, math.inf, -math.inf, 1e308 * 10, -1e400]) | st.integers(min_value=10**6)
quick = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
# The JSON text json.dumps(allow_nan=True) writes for each float JSON has no number for.
NON_JSON_TOKENS = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
# A body limit small enough that bodies over it are quick to build and send.
SMALL_BODY_LIMIT = 4096
MAX_BATCH = ApiSettings().max_batch_records


def good_counts(client) -> list[tuple[str, dict[str, str], float]]:
    """The samples of the prediction-outcome counter and the inference histogram."""
    text = client.get("/metrics").get_data(as_text=True)
    return [s for s in samples(text) if s[0].startswith(("hvs_api_prediction_outcomes_", "hvs_model_inference_"))]


def assert_clear_refusal(response) -> None:
    assert 400 <= response.status_code < 500, response.status_code
    body = response.get_json()
    assert body["error"] and body["message"] and isinstance(body["problems"], list)


@quick
@given(payload=json_values)
def test_any_json_gets_a_prediction_or_a_clear_4xx(client, payload):
    before = good_counts(client)
    response = client.post("/predict", data=json.dumps(payload), content_type="application/json")
    if response.status_code == 200:
        return
    assert_clear_refusal(response)
    assert good_counts(client) == before


@quick
@given(record=good_record, field=st.sampled_from(FEATURE_NAMES), value=bad_number | st.text() | st.booleans())
def test_a_bad_value_names_its_field_or_its_non_json_token(client, record, field, value):
    before = good_counts(client)
    body = json.dumps({"records": [record, {**record, field: value}]}, allow_nan=True)
    response = client.post("/predict", data=body, content_type="application/json")
    assert_clear_refusal(response)
    answer = response.get_json()
    if isinstance(value, float) and not math.isfinite(value):
        # Not JSON at all, so refused before any field is looked at: the message names the token.
        token = NON_JSON_TOKENS[str(value)]
        assert response.status_code == 400 and answer["error"] == "malformed_json"
        assert f": {token} is not valid JSON" in answer["message"], answer["message"]
    else:
        reason = "out_of_range" if isinstance(value, int) and not isinstance(value, bool) else "wrong_type"
        assert response.status_code == 422
        assert [(p["field"], p["reason"]) for p in answer["problems"]] == [(f"records[1].{field}", reason)]
    assert good_counts(client) == before


@quick
@given(raw=st.binary(max_size=300))
def test_arbitrary_bytes_never_break_the_parser(client, raw):
    response = client.post("/predict", data=raw, content_type="application/json")
    assert response.status_code in (200, 400, 413, 422)
    if response.status_code != 200:
        assert_clear_refusal(response)


@quick
@given(depth=st.integers(min_value=1, max_value=200_000))
def test_deep_nesting_is_refused(client, depth):
    response = client.post("/predict", data="[" * depth + "]" * depth, content_type="application/json")
    assert_clear_refusal(response)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(min_value=MAX_BATCH + 1, max_value=3 * MAX_BATCH))
def test_a_batch_over_max_batch_records_but_under_the_body_limit_is_a_422(client, payloads, size):
    body = json.dumps({"records": [payloads["Normal"]] * size})
    assert len(body.encode()) <= client.application.config["MAX_CONTENT_LENGTH"]
    before = good_counts(client)
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == 422
    assert response.get_json()["error"] == "batch_too_large" and response.get_json()["field"] == "records"
    assert good_counts(client) == before


@pytest.fixture
def small_body_client(champion, make_app):
    """A test client for an app that refuses bodies over ``SMALL_BODY_LIMIT`` bytes."""
    return make_app({"TESTING": True, "MODEL": champion, "MAX_CONTENT_LENGTH": SMALL_BODY_LIMIT}).test_client()


@quick
@given(excess=st.integers(min_value=1, max_value=3 * SMALL_BODY_LIMIT))
def test_a_body_over_max_content_length_is_a_413(small_body_client, payloads, excess):
    # A valid one-record request padded with whitespace, served at the limit: past it, its size
    # is all that is wrong with it.
    at_limit = json.dumps(payloads["Normal"]).ljust(SMALL_BODY_LIMIT)
    assert small_body_client.post("/predict", data=at_limit, content_type="application/json").status_code == 200
    before = good_counts(small_body_client)
    response = small_body_client.post("/predict", data=at_limit + " " * excess, content_type="application/json")
    assert response.status_code == 413
    answer = response.get_json()
    assert answer["error"] == "body_too_large" and f"larger than {SMALL_BODY_LIMIT} bytes" in answer["message"]
    assert good_counts(small_body_client) == before


# Values near and beyond every edge a field has: its range, its type, its finiteness.
edge_values = (
    st.sampled_from([f.minimum for f in FEATURES] + [f.maximum for f in FEATURES])
    | st.floats()
    | st.integers(min_value=-(10**400), max_value=10**400)
    | st.booleans()
    | st.none()
    | st.text(max_size=3)
)
any_record = (
    st.dictionaries(st.sampled_from([*FEATURE_NAMES, "colour"]), edge_values, max_size=6)
    | good_record
    # a good record with one field changed: the case that a lax quick check would let through
    | st.tuples(good_record, st.sampled_from([*FEATURE_NAMES, "colour"]), edge_values).map(
        lambda changed: {**changed[0], changed[1]: changed[2]}
    )
)


@settings(max_examples=500, deadline=None)
@given(record=any_record)
def test_the_quick_check_of_a_record_agrees_with_the_full_one(record):
    """_well_formed (the pass that serves well-formed records) accepts exactly the records in
    which the full check, the one that writes the error messages, finds no problem."""
    from hvs_api import validation

    assert validation._well_formed(record) == (validation._check_record(record, "") == [])
