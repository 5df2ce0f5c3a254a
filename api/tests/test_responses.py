"""The API's JSON answers are Flask's own, byte for byte."""

import datetime
import decimal
import uuid

import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from hypothesis import given
from hypothesis import strategies as st

from hvs_api.responses import CompactJSONProvider

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


def _answers(obj, debug: bool) -> tuple[bytes, bytes]:
    app = Flask("answers")
    app.debug = debug
    ours, flasks = CompactJSONProvider(app), DefaultJSONProvider(app)
    with app.app_context():
        return ours.response(obj).get_data(), flasks.response(obj).get_data()


@given(json_values)
def test_any_json_value_is_answered_as_flask_answers_it(value):
    ours, flasks = _answers(value, debug=False)
    assert ours == flasks


@pytest.mark.parametrize("debug", [False, True])
def test_the_types_flask_converts_are_converted_alike(debug):
    value = {
        "when": datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.UTC),
        "id": uuid.UUID(int=7),
        "amount": decimal.Decimal("1.50"),
        "é": "ü",
    }
    ours, flasks = _answers(value, debug)
    assert ours == flasks
