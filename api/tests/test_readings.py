import numpy as np
import pytest
from hvs_model import readings
from hvs_model.features import FEATURE_NAMES, FEATURES


def test_same_seed_gives_same_readings():
    x1, y1 = readings.generate(500, seed=3)
    x2, y2 = readings.generate(500, seed=3)
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    x3, _ = readings.generate(500, seed=4)
    assert not np.array_equal(x1, x3)


def test_readings_stay_inside_the_accepted_ranges():
    x, _ = readings.generate(20_000, seed=1, drift=1.0)
    for column, feature in enumerate(FEATURES):
        assert x[:, column].min() >= feature.minimum
        assert x[:, column].max() <= feature.maximum


def test_hazardous_share_is_a_minority_that_drift_raises():
    shares = [readings.generate(20_000, seed=2, drift=d)[1].mean() for d in (0.0, 0.5, 1.0)]
    assert 0.10 < shares[0] < 0.25
    assert shares[0] < shares[1] < shares[2]


@pytest.mark.parametrize(
    ("reading", "expected"),
    [
        ([55, 4, 200, 45, 120], 0),
        ([86, 4, 200, 45, 120], 1),  # hot
        ([55, 12.5, 200, 45, 120], 1),  # shaking
        ([55, 4, 200, 45, 460], 1),  # gas
        ([55, 4, 115, 45, 120], 1),  # pressure far below the set point
        ([55, 4, 285, 45, 120], 1),  # and far above it
        ([76, 4, 200, 81, 120], 1),  # hot and humid
        ([76, 4, 200, 79, 120], 0),  # warm, humid, but not both past the limits
    ],
)
def test_hazard_rule(reading, expected):
    assert readings.hazard_rule(np.array([reading], dtype=float))[0] == expected


def test_records_are_request_ready():
    records = readings.records(3, seed=5)
    assert len(records) == 3
    assert all(list(r) == list(FEATURE_NAMES) for r in records)
    assert all(isinstance(v, float) for r in records for v in r.values())


def test_drift_outside_zero_to_one_is_refused():
    with pytest.raises(ValueError, match="drift"):
        readings.generate(10, drift=1.5)
