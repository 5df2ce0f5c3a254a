"""Deterministic generator of HVS sensor readings and their hazard labels.

Readings come from two operating regimes: normal operation and a stressed regime
(heavy load, failing cooling) that is more likely to be hazardous. The true state
of the equipment is labelled by a fixed rule; the readings the model sees carry
sensor noise on top, so no model can be perfect near the rule's boundaries.

The rule: a reading is Hazardous when any of these holds on the true values

- temperature above 85 °C;
- vibration above 12 mm/s RMS;
- combustible gas above 450 ppm;
- coolant pressure more than 80 kPa away from its 200 kPa set point;
- temperature above 75 °C together with humidity above 80 % RH (condensation on hot parts).

Then 1 % of labels are flipped, as mislabelled maintenance records would be.

``drift`` (0 to 1) moves the whole population towards the stressed regime, which is how
the load test's drift scenario shifts the Hazardous share away from its training baseline.

``sensor_fault`` (0 to 1) is drift of another kind: the gas and vibration sensors under-read,
by up to ``SENSOR_FAULT_LOSS`` of the true value, while the equipment is as before. The labels
follow the true values, so the model, which sees the readings, misses hazards it would have
flagged: the inputs drift, and then its recall falls (the load test's sensor-fault scenario).
"""

import numpy as np

from hvs_model.features import FEATURE_NAMES, FEATURES, LABELS

# Share of readings taken in the stressed regime when there is no drift.
STRESSED_SHARE = 0.25
LABEL_NOISE = 0.01
# The share of the true value a failed gas or vibration sensor loses (at sensor_fault=1).
SENSOR_FAULT_LOSS = 0.6
# Standard deviation of the measurement noise, per feature, in the feature's unit.
SENSOR_NOISE = np.array([1.5, 0.6, 6.0, 2.0, 20.0])


def _true_readings(rng: np.random.Generator, n: int, drift: float) -> np.ndarray:
    stressed = rng.random(n) < STRESSED_SHARE + (1.0 - STRESSED_SHARE) * drift
    s = stressed.astype(float)
    temperature = rng.normal(55.0 + 22.0 * s, 8.0 + 4.0 * s)
    vibration = rng.lognormal(np.log(4.0) + 0.8 * s, 0.35 + 0.1 * s)
    pressure = rng.normal(200.0, 22.0 + 30.0 * s)
    humidity = rng.normal(45.0 + 20.0 * s, 12.0 + 6.0 * s)
    gas = rng.lognormal(np.log(120.0) + 0.9 * s, 0.45 + 0.1 * s)
    return np.column_stack([temperature, vibration, pressure, humidity, gas])


def hazard_rule(x: np.ndarray) -> np.ndarray:
    """Return 1 where the true readings are hazardous by the documented rule, else 0."""
    t, v, p, h, g = (x[:, i] for i in range(5))
    hazardous = (t > 85.0) | (v > 12.0) | (g > 450.0) | (np.abs(p - 200.0) > 80.0) | ((t > 75.0) & (h > 80.0))
    return hazardous.astype(int)


def _clip_to_ranges(x: np.ndarray) -> np.ndarray:
    low = np.array([f.minimum for f in FEATURES])
    high = np.array([f.maximum for f in FEATURES])
    return np.clip(x, low, high)


def generate(n: int, seed: int = 42, drift: float = 0.0, sensor_fault: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(X, y)``: ``n`` noisy readings in ``FEATURE_NAMES`` order and their labels."""
    for name, value in (("drift", drift), ("sensor_fault", sensor_fault)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1, got {value}")
    rng = np.random.default_rng(seed)
    true_x = _clip_to_ranges(_true_readings(rng, n, drift))
    y = hazard_rule(true_x)
    flips = rng.random(n) < LABEL_NOISE
    y = np.where(flips, 1 - y, y)
    observed = true_x + rng.normal(0.0, SENSOR_NOISE, size=true_x.shape)
    if sensor_fault:
        gain = 1.0 - SENSOR_FAULT_LOSS * sensor_fault
        observed[:, 1] *= gain  # vibration
        observed[:, 4] *= gain  # gas
    return _clip_to_ranges(observed), y


def records(n: int, seed: int = 42, drift: float = 0.0, sensor_fault: float = 0.0) -> list[dict[str, float]]:
    """Return ``n`` readings as JSON-ready request records, rounded to two decimals."""
    return [record for record, _ in labelled_records(n, seed, drift, sensor_fault)]


def labelled_records(
    n: int, seed: int = 42, drift: float = 0.0, sensor_fault: float = 0.0
) -> list[tuple[dict[str, float], str]]:
    """``n`` request records, each with its true label's text (the load test's feedback)."""
    x, y = generate(n, seed=seed, drift=drift, sensor_fault=sensor_fault)
    return [
        (dict(zip(FEATURE_NAMES, (round(float(v), 2) for v in row), strict=True)), LABELS[int(label)])
        for row, label in zip(x, y, strict=True)
    ]
