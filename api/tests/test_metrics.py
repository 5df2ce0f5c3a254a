"""The histogram helpers of hvs_api.histograms held to what prometheus_client itself does."""

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram

from hvs_api.histograms import observe_all, observe_one
from hvs_api.metrics import PROBABILITY_BUCKETS


def _histogram_samples(values: list[float], all_at_once: bool | str) -> dict:
    registry = CollectorRegistry()
    histogram = Histogram("probability", "values", buckets=PROBABILITY_BUCKETS, registry=registry)
    if all_at_once == "one by one":
        for value in values:
            observe_one(histogram, value)
    elif all_at_once:
        observe_all(histogram, values)
    else:
        for value in values:
            histogram.observe(value)
    return {
        (sample.name, sample.labels.get("le")): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


values = st.lists(
    st.one_of(
        st.floats(0, 1),
        st.sampled_from(PROBABILITY_BUCKETS),  # on a bound: it belongs to that bucket
        st.floats(-10, 10),
        st.just(math.nan),
    ),
    max_size=40,
)


@given(values)
def test_observing_all_values_at_once_gives_what_observing_them_one_by_one_gives(batch):
    _assert_same(_histogram_samples(batch, True), _histogram_samples(batch, False))


def _assert_same(ours: dict, observed: dict) -> None:
    assert ours.keys() == observed.keys()
    for key, expected in observed.items():
        got = ours[key]
        assert (math.isnan(got) and math.isnan(expected)) or math.isclose(got, expected, abs_tol=1e-9), key


@given(values)
def test_observing_each_value_through_observe_one_gives_what_observe_gives(batch):
    _assert_same(_histogram_samples(batch, "one by one"), _histogram_samples(batch, all_at_once=False))
