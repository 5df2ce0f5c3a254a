"""Prometheus's duration format (``500ms``, ``5m``, ``1h30m``, ``30d``, ``2w``, ``1y``): the one
parser the benchmarks and the tests share. Units as Prometheus defines them: a week of 7 days,
a year of 365."""

import re

UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
_PART = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")


def seconds(text: str) -> float:
    """Seconds in a Prometheus duration; ValueError for anything else (``1.5m``, ``5 m``, "")."""
    parts = _PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * UNITS[u] for n, u in parts)


def text(duration: float) -> str:
    """The shortest Prometheus duration of a whole number of days, hours or minutes, else seconds."""
    for unit in ("d", "h", "m"):
        if duration >= UNITS[unit] and duration % UNITS[unit] == 0:
            return f"{int(duration // UNITS[unit])}{unit}"
    return f"{duration:g}s"
