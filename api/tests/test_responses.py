"""The API's JSON answers are Flask's own, byte for byte: its provider's, and the /predict answer's text."""

import datetime
import decimal
import uuid

import pytest
from flask import Flask
from flask.json.provider import DefaultJSONProvider
from hvs_model.features import LABELS
from hypothesis import given
from hypothesis import strategies as st

from hvs_api import prediction_body
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


_URLSAFE = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@st.composite
def _predictions(draw):
    records = draw(st.integers(1, 5))
    probabilities = draw(st.lists(st.floats(), min_size=records, max_size=records))
    label_ids = draw(st.lists(st.sampled_from([0, 1]), min_size=records, max_size=records))
    ids = draw(st.none() | st.lists(st.text(_URLSAFE, min_size=1), min_size=records, max_size=records))
    return probabilities, label_ids, ids, draw(st.booleans()) or records > 1


@given(st.text(), st.text(), st.text(), _predictions())
def test_a_prediction_answer_is_the_text_flask_gives_for_its_dicts(name, version, run_id, drawn):
    probabilities, label_ids, ids, is_batch = drawn
    predictions = [
        {"label": LABELS[h], "label_id": h, "hazard_probability": round(p, 6), "model_version": version}
        for p, h in zip(probabilities, label_ids, strict=True)
    ]
    for prediction, prediction_id in zip(predictions, ids or (), strict=False):
        prediction["id"] = prediction_id
    body = {"predictions": predictions} if is_batch else {"prediction": predictions[0]}
    body["model"] = {"name": name, "version": version, "run_id": run_id}
    ours, flasks = _answers(body, debug=False)

    text = prediction_body.PredictionBody(name, version, run_id).render(probabilities, label_ids, ids, is_batch)
    assert text.encode() == flasks == ours
