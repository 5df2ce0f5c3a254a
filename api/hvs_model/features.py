"""The sensor features the hazard classifier reads: names, units and accepted ranges.

This table is the one source of truth for the data generator, the training step,
the request schema, the OpenAPI description and the feature table of docs/model-and-inference.md.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Feature:
    """One sensor reading: its JSON field name, unit and physically plausible range."""

    name: str
    unit: str
    description: str
    minimum: float
    maximum: float


# The order is the column order of the model's input matrix.
FEATURES: tuple[Feature, ...] = (
    Feature("temperature_c", "°C", "Enclosure temperature", -40.0, 150.0),
    Feature("vibration_mm_s", "mm/s RMS", "Housing vibration velocity", 0.0, 100.0),
    Feature("pressure_kpa", "kPa", "Coolant line pressure", 0.0, 1000.0),
    Feature("humidity_pct", "% RH", "Relative humidity inside the enclosure", 0.0, 100.0),
    Feature("gas_ppm", "ppm", "Combustible gas concentration", 0.0, 5000.0),
)

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)

LABELS: dict[int, str] = {0: "Normal", 1: "Hazardous"}
