"""Property tests of the request validation: whatever arrives, a clear 4xx or a prediction, and a
refused request never moves the counters of good predictions."""

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hvs_api.features import FEATURE_NAMES, FEATURES

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


def good_counts(client) -> list[str]:
    text = client.get("/metrics").get_data(as_text=True)
    return [
        line
        for line in text.splitlines()
        if line.startswith(("hvs_api_prediction_outcomes_total{", "hvs_model_inference"))
    ]


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
def test_a_bad_value_in_any_field_is_named(client, record, field, value):
    before = good_counts(client)
    body = json.dumps({"records": [record, {**record, field: value}]}, allow_nan=True)
    response = client.post("/predict", data=body, content_type="application/json")
    assert_clear_refusal(response)
    named = {p["field"] for p in response.get_json()["problems"]}
    assert f"records[1].{field}" in named or response.get_json()["error"] == "malformed_json"
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


@quick
@given(content_type=st.sampled_from(["text/plain", "application/xml", "multipart/form-data", "", "application/jsonx"]))
def test_wrong_content_types_are_refused(client, payloads, content_type):
    response = client.post("/predict", data=json.dumps(payloads["Normal"]), content_type=content_type)
    assert response.status_code == 415 and response.get_json()["error"] == "unsupported_media_type"


@quick
@given(key=st.sampled_from(FEATURE_NAMES))
def test_duplicate_keys_are_refused(client, payloads, key):
    body = json.dumps(payloads["Normal"])[:-1] + f', "{key}": 1.0}}'
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == 400 and response.get_json()["error"] == "duplicate_key"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(size=st.integers(min_value=1001, max_value=3000))
def test_oversized_batches_are_refused(client, payloads, size):
    response = client.post("/predict", json={"records": [payloads["Normal"]] * size})
    assert response.status_code in (413, 422)
    assert response.get_json()["error"] in ("batch_too_large", "body_too_large")
