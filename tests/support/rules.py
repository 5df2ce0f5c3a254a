"""The lab's rule files as data, and Prometheus durations."""

from pathlib import Path

import yaml

from loadtest import prometheus_duration
from tests.support.paths import ROOT

# A Prometheus duration (``500ms``, ``5m``, ``1h30m``, ``30d``, ``2w``) in seconds: the parser the
# benchmarks use too.
seconds = prometheus_duration.seconds


def rule_groups(folder: Path = ROOT / "prometheus" / "rules") -> list[dict]:
    """The rule groups of every rule file in a folder, in file order."""
    groups = []
    for path in sorted(folder.glob("*.yml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups
