"""The served model's inputs against its training data: per-feature bins, the training shares
they are compared with, records outside the training range, and refused fields."""

import dataclasses
import math

import numpy as np
import pytest
from hvs_model import baseline, readings
from hvs_model.features import FEATURE_NAMES

from hvs_api.extensions import api_metrics
from hvs_api.validation import FIELD_REASONS
from tests.support.metrics_text import metric_value, samples


def metrics(client) -> str:
    return client.get("/metrics").get_data(as_text=True)


def bin_counts(text: str) -> np.ndarray:
    return np.array(
        [
            [metric_value(text, "hvs_model_feature_bin_records_total", feature=f, bin=b) for b in baseline.BIN_LABELS]
            for f in FEATURE_NAMES
        ]
    )


def training_shares(text: str) -> np.ndarray:
    return np.array(
        [
            [metric_value(text, "hvs_model_feature_bin_training_ratio", feature=f, bin=b) for b in baseline.BIN_LABELS]
            for f in FEATURE_NAMES
        ]
    )


def test_training_cuts_each_feature_into_tenths_of_its_records():
    x, _ = readings.generate(5000, seed=3)
    found = baseline.from_training(x)
    for index, feature in enumerate(found.features):
        assert sum(feature.expected) == pytest.approx(1.0)
        assert feature.expected == pytest.approx([0.1] * baseline.BINS, abs=0.002)
        assert (feature.minimum, feature.maximum) == (x[:, index].min(), x[:, index].max())
    assert baseline.Baseline.from_dict(found.as_dict()) == found


def test_a_value_falls_in_the_bin_between_the_cut_points_around_it():
    x, _ = readings.generate(2000, seed=4)
    found = baseline.from_training(x)
    rows = np.array([[f.edges[2] for f in found.features], [f.edges[2] + 1e-9 for f in found.features]])
    per_bin, outside = found.count(rows)
    # A value equal to a cut point belongs to the bin below it; a hair above, to the next.
    assert per_bin[:, 2].tolist() == [1] * 5 and per_bin[:, 3].tolist() == [1] * 5
    assert outside.tolist() == [0] * 5


@pytest.mark.parametrize(
    "broken",
    [
        {"bins": 5},
        {"features": {}},
        {"records": "many"},
    ],
)
def test_a_malformed_baseline_is_refused(broken):
    x, _ = readings.generate(500, seed=5)
    data = {**baseline.from_training(x).as_dict(), **broken}
    with pytest.raises(ValueError):
        baseline.Baseline.from_dict(data)


def test_the_champion_is_served_with_the_baseline_it_was_trained_with(champion, client):
    assert champion.inputs is not None and champion.inputs.records > 0
    expected = np.array([f.expected for f in champion.inputs.features])
    assert np.allclose(training_shares(metrics(client)), expected)
    assert client.get("/health").json["model"]["feature_baseline"] is True


def test_every_record_is_counted_once_per_feature_in_its_training_bin(champion, client):
    assert bin_counts(metrics(client)).sum() == 0  # every series exists from the start
    records = readings.records(40, seed=11, drift=0.5)
    assert client.post("/predict", json={"records": records}).status_code == 200
    assert client.post("/predict", json=records[0]).status_code == 200
    matrix = np.array([[r[name] for name in FEATURE_NAMES] for r in [*records, records[0]]])
    expected, _ = champion.inputs.count(matrix)
    found = bin_counts(metrics(client))
    assert (found == expected).all()
    assert found.sum(axis=1).tolist() == [41] * 5


def test_records_outside_the_training_range_are_counted_by_feature(champion, client, payloads):
    # Inside what the API accepts (up to 150 degrees), beyond anything the model was trained on.
    hot = {**payloads["Normal"], "temperature_c": champion.inputs.features[0].maximum + 1}
    assert client.post("/predict", json={"records": [hot, hot, payloads["Normal"]]}).status_code == 200
    text = metrics(client)
    name = "hvs_model_feature_out_of_training_range_records_total"
    assert metric_value(text, name, feature="temperature_c") == 2
    assert [metric_value(text, name, feature=f) for f in FEATURE_NAMES[1:]] == [0] * 4


def test_a_model_without_a_baseline_bins_nothing_and_expects_nothing(champion, make_app, payloads):
    client = make_app({"TESTING": True, "MODEL": dataclasses.replace(champion, inputs=None)}).test_client()
    assert client.post("/predict", json=payloads["Normal"]).status_code == 200
    text = metrics(client)
    assert bin_counts(text).sum() == 0
    # NaN, not 0: a share of 0 would read as a bin the training data never filled.
    assert all(math.isnan(v) for v in training_shares(text).ravel())


def feature_series(text: str) -> set[tuple]:
    return {
        (name, tuple(sorted(labels.items())))
        for name, labels, _ in samples(text)
        if name.startswith("hvs_model_feature_") and not name.endswith("_created")
    }


def test_a_new_model_moves_the_expected_shares_and_leaves_no_series_behind(champion, app, client):
    before = feature_series(metrics(client))
    x, _ = readings.generate(3000, seed=9, drift=1.0)
    other = dataclasses.replace(champion, version="99", inputs=baseline.from_training(x))
    with app.app_context():
        api_metrics().model_changed(other, champion)
    text = metrics(client)
    assert feature_series(text) == before and len(before) == 5 * 10 * 2 + 5
    assert np.allclose(training_shares(text), [f.expected for f in other.inputs.features])


def test_refused_fields_are_counted_by_field_and_reason(client, payloads):
    text = metrics(client)
    assert metric_value(text, "hvs_api_invalid_fields_total", field="gas_ppm", reason="missing_field") == 0
    no_gas = {k: v for k, v in payloads["Normal"].items() if k != "gas_ppm"}
    too_hot = {**payloads["Normal"], "temperature_c": 999}
    extra = {**payloads["Normal"], "colour": "red"}
    response = client.post("/predict", json={"records": [no_gas, no_gas, too_hot, extra]})
    assert response.status_code == 422
    text = metrics(client)
    found = {
        (f, r): metric_value(text, "hvs_api_invalid_fields_total", field=f, reason=r)
        for f in (*FEATURE_NAMES, "unknown")
        for r in FIELD_REASONS
    }
    assert {k: v for k, v in found.items() if v} == {
        ("gas_ppm", "missing_field"): 2,
        ("temperature_c", "out_of_range"): 1,
        ("unknown", "unknown_field"): 1,
    }
    # The request itself is counted once, by its first problem.
    assert metric_value(text, "hvs_api_invalid_requests_total", reason="missing_field") == 1
    # The client's own field name never becomes a label value.
    assert "colour" not in text


def test_model_monitoring_off_bins_nothing_and_issues_no_ids(champion, make_app, payloads):
    """The switch make bench measures the cost with: the answers are the same, without ids."""
    off = make_app({"TESTING": True, "MODEL": champion, "MODEL_MONITORING_ENABLED": False}).test_client()
    on = make_app({"TESTING": True, "MODEL": champion}).test_client()
    answers = [
        c.post("/predict", json={"records": [payloads["Normal"], payloads["Hazardous"]]}).json for c in (off, on)
    ]
    assert all("id" not in p for p in answers[0]["predictions"])
    assert answers[0]["predictions"] == [{k: v for k, v in p.items() if k != "id"} for p in answers[1]["predictions"]]
    assert bin_counts(metrics(off)).sum() == 0 and bin_counts(metrics(on)).sum() == 10


@pytest.mark.parametrize("rows", [1, 2, baseline.FEW_ROWS, baseline.FEW_ROWS + 1, 60])
def test_few_and_many_rows_are_binned_alike(rows):
    """Small requests take a plain-Python path; it must give what the numpy one gives, cut
    points and values beyond the training range included."""
    x, _ = readings.generate(3000, seed=12)
    found = baseline.from_training(x)
    rng = np.random.default_rng(rows)
    matrix, _ = readings.generate(rows, seed=rows, drift=1.0)
    edges = np.array([f.edges for f in found.features])
    # A third of the values exactly on a cut point, some beyond the training maximum.
    on_edge = rng.random(matrix.shape) < 0.33
    matrix = np.where(on_edge, edges[np.arange(5), rng.integers(0, 9, size=matrix.shape)], matrix)
    matrix[0, 0] = found.features[0].maximum + 5
    per_bin, outside = found.count(matrix)
    sparse, beyond = found.count_nonzero(matrix)
    assert sorted(sparse) == [(f, b, int(per_bin[f, b])) for f, b in zip(*np.nonzero(per_bin), strict=True)]
    assert sorted(beyond) == [(f, int(outside[f])) for f in np.flatnonzero(outside)]
    assert sum(n for _, _, n in sparse) == 5 * rows
