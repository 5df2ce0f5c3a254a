"""The one Prometheus-duration parser (loadtest/prometheus_duration.py) the tests and benchmarks share."""

import pytest

from loadtest.prometheus_duration import seconds, text


@pytest.mark.parametrize(
    ("duration", "expected"),
    [("500ms", 0.5), ("15s", 15), ("1h30m", 5400), ("30d", 2592000), ("2w", 1209600), ("1y", 31536000)],
)
def test_every_unit_prometheus_knows(duration, expected):
    assert seconds(duration) == expected


@pytest.mark.parametrize("bad", ["", "5", "1.5m", "5 m", "5mm", "now-3d", "5M"])
def test_anything_else_is_refused(bad):
    with pytest.raises(ValueError, match="not a Prometheus duration"):
        seconds(bad)


def test_text_writes_back_the_shortest_whole_unit():
    assert [text(s) for s in (86400, 7200, 300, 90, 0.5)] == ["1d", "2h", "5m", "90s", "0.5s"]
