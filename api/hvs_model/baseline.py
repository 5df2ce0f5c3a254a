"""Each feature's training distribution, the baseline that live inputs are compared with.

Training cuts every feature at the deciles of its training values, so that each of the ten
bins holds a known share of the training records (a tenth, give or take ties), and records that
share and the range the training data covered. The baseline is logged with the model's run
(``feature_baseline.json``) and the API loads it with the model: live records are counted per
bin of the model being served, and the recording rules compare the live shares with the
training shares (a population stability index per feature).

Bins are numbered 0 to ``BINS - 1`` and are the same label values for every model, so a new
model changes where the bins are cut and what they expect, never which series exist.
"""

from bisect import bisect_left
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from hvs_model.features import FEATURE_NAMES

BINS = 10
ARTIFACT = "feature_baseline.json"
BIN_LABELS: tuple[str, ...] = tuple(str(i) for i in range(BINS))
# Up to this many rows, plain Python bins a request faster than numpy's fixed cost per call
# (about 3 µs for 5 values against 25 µs): the single-record requests most clients send.
FEW_ROWS = 8


@dataclass(frozen=True)
class FeatureBaseline:
    """One feature's training distribution: where its bins are cut and what share each held."""

    name: str
    # BINS - 1 increasing cut points: bin i holds values in (edges[i-1], edges[i]].
    edges: tuple[float, ...]
    expected: tuple[float, ...]  # share of the training records in each bin; sums to 1
    minimum: float  # the smallest and largest training values
    maximum: float


@dataclass(frozen=True)
class Baseline:
    """Every feature's training distribution, in ``FEATURE_NAMES`` order."""

    features: tuple[FeatureBaseline, ...]
    records: int  # training records it was computed from

    @cached_property
    def _edges(self) -> np.ndarray:  # (features, 1, BINS - 1)
        return np.array([f.edges for f in self.features])[:, None, :]

    @cached_property
    def _limits(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([f.minimum for f in self.features]), np.array([f.maximum for f in self.features])

    def count(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For rows of ``matrix``: records per (feature, bin), and per feature those outside the
        training range. One pass over all features: a handful of numpy calls per request,
        whatever its size (a loop per feature would cost several times more on one record)."""
        # A value's bin is the number of cut points below it (searchsorted, side="left").
        bins = (matrix.T[:, :, None] > self._edges).sum(axis=2)  # (features, rows)
        flat = bins + (np.arange(len(self.features)) * BINS)[:, None]
        per_bin = np.bincount(flat.ravel(), minlength=len(self.features) * BINS).reshape(-1, BINS)
        low, high = self._limits
        outside = ((matrix < low) | (matrix > high)).sum(axis=0)
        return per_bin, outside

    @cached_property
    def _plain(self) -> tuple[list[list[float]], list[float], list[float]]:
        return (
            [list(f.edges) for f in self.features],
            [f.minimum for f in self.features],
            [f.maximum for f in self.features],
        )

    def count_nonzero(self, matrix: np.ndarray) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
        """What ``count`` gives, as the metrics increment it: ``(feature, bin, records)`` for each
        bin with records, and ``(feature, records)`` for each feature with values outside the
        training range."""
        if len(matrix) > FEW_ROWS:
            per_bin, outside = self.count(matrix)
            features, bins = np.nonzero(per_bin)
            found = list(zip(features.tolist(), bins.tolist(), per_bin[features, bins].tolist(), strict=True))
            return found, [(f, int(outside[f])) for f in np.flatnonzero(outside).tolist()]
        edges, low, high = self._plain
        per_bin: dict[tuple[int, int], int] = {}
        beyond: dict[int, int] = {}
        for row in matrix.tolist():
            for feature, value in enumerate(row):
                key = (feature, bisect_left(edges[feature], value))  # the cut points below it
                per_bin[key] = per_bin.get(key, 0) + 1
                if value < low[feature] or value > high[feature]:
                    beyond[feature] = beyond.get(feature, 0) + 1
        return [(f, b, n) for (f, b), n in per_bin.items()], list(beyond.items())

    def as_dict(self) -> dict:
        return {
            "bins": BINS,
            "records": self.records,
            "features": {
                f.name: {
                    "edges": list(f.edges),
                    "expected": list(f.expected),
                    "minimum": f.minimum,
                    "maximum": f.maximum,
                }
                for f in self.features
            },
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Baseline":
        """Read what ``as_dict`` wrote; a ValueError when it is not a baseline of these features."""
        try:
            if data["bins"] != BINS:
                raise ValueError(f"baseline has {data['bins']} bins, not {BINS}")
            features = tuple(
                FeatureBaseline(
                    name,
                    tuple(float(e) for e in data["features"][name]["edges"]),
                    tuple(float(s) for s in data["features"][name]["expected"]),
                    float(data["features"][name]["minimum"]),
                    float(data["features"][name]["maximum"]),
                )
                for name in FEATURE_NAMES
            )
            records = int(data["records"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a feature baseline: {exc!r}") from exc
        for f in features:
            if len(f.edges) != BINS - 1 or len(f.expected) != BINS or list(f.edges) != sorted(f.edges):
                raise ValueError(f"baseline of {f.name} has malformed bins")
        return cls(features, records)


def from_training(x: np.ndarray) -> Baseline:
    """The baseline of a training matrix (columns in ``FEATURE_NAMES`` order)."""
    cuts = Baseline(
        tuple(
            FeatureBaseline(
                name, tuple(float(e) for e in np.quantile(x[:, i], np.arange(1, BINS) / BINS)), (), 0.0, 0.0
            )
            for i, name in enumerate(FEATURE_NAMES)
        ),
        len(x),
    )
    # The expected shares come from the same counting the API does, so ties fall alike.
    per_bin, _ = cuts.count(x)
    return Baseline(
        tuple(
            FeatureBaseline(
                f.name, f.edges, tuple(float(c) / len(x) for c in counts), float(x[:, i].min()), float(x[:, i].max())
            )
            for i, (f, counts) in enumerate(zip(cuts.features, per_bin, strict=True))
        ),
        len(x),
    )
