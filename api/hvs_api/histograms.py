"""Observations into prometheus_client histograms, done by the histogram's own per-bucket values.

Under gunicorn each write of a value is a locked write to a memory-mapped file, and
``Histogram.observe`` makes two per value (its sum and its bucket) after a Python loop over the
bounds. prometheus_client has no call for many observations, so these add to the histogram's
own per-bucket values (``_upper_bounds``, ``_buckets``, ``_sum``: each bucket counts the values
above the bound before it, as ``observe`` counts them). A property test holds both to
``observe`` one value at a time, so a change of those internals fails it.
"""

from bisect import bisect_left

from prometheus_client import Histogram


def observe_all(histogram: Histogram, values: list[float]) -> None:
    """``histogram.observe(v)`` for every value, in one write per bucket that gets any and one for
    the sum rather than two writes per value (a batch of a hundred records made two hundred)."""
    if len(values) == 1:
        observe_one(histogram, values[0])
        return
    bounds = histogram._upper_bounds
    counts = [0] * len(bounds)
    for value in values:
        if value == value:  # NaN falls in no bucket, as observe() leaves it
            counts[bisect_left(bounds, value)] += 1  # the first bound at or above it
    histogram._sum.inc(sum(values))
    for bucket, count in zip(histogram._buckets, counts, strict=True):
        if count:
            bucket.inc(count)


def observe_one(histogram: Histogram, value: float) -> None:
    """``histogram.observe(value)`` by the same internals as ``observe_all``: the first bound at
    or above the value found by bisection rather than by a Python loop over up to 17 bounds, and
    none of ``observe``'s checks for exemplars, which the API never gives (a few tenths of a
    microsecond of each request's half a dozen observations)."""
    histogram._sum.inc(value)
    if value == value:  # NaN falls in no bucket, as observe() leaves it
        histogram._buckets[bisect_left(histogram._upper_bounds, value)].inc(1)
