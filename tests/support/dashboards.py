"""The dashboards' panel queries, with their variables at the values a first visit shows."""

import json
import re
from dataclasses import dataclass

from tests.support.paths import ROOT

DASHBOARDS = sorted((ROOT / "grafana" / "dashboards").glob("*.json"))


# A panel whose description starts with this may show no data (but never an error).
EXPECTED_EMPTY = "Expected empty:"


@dataclass(frozen=True)
class PanelQuery:
    """One query of one dashboard panel, with the dashboard's variables at their defaults."""

    dashboard: str
    panel: str
    expr: str
    instant: bool
    may_be_empty: bool


def variable_value(variable: dict) -> str:
    """A template variable's default as Grafana writes it into a Prometheus query: "All" as its
    ``allValue``, several values as a regex alternation."""
    value = variable["current"]["value"]
    values = value if isinstance(value, list) else [value]
    if values == ["$__all"]:
        return variable["allValue"]
    return values[0] if len(values) == 1 else "(" + "|".join(map(re.escape, values)) + ")"


def substitute_variables(expr: str, variables: dict[str, str]) -> str:
    """``$name`` and ``${name}`` of the given variables replaced; Grafana's own (``$__…``) left alone."""

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return variables.get(name, match.group(0))

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


def panel_queries(rate_interval: str = "1m") -> list[PanelQuery]:
    """Every Prometheus query of every dashboard panel, ready to send to Prometheus."""
    queries = []
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        variables = {v["name"]: variable_value(v) for v in dashboard.get("templating", {}).get("list", [])}
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = substitute_variables(target["expr"].replace("$__rate_interval", rate_interval), variables)
                queries.append(
                    PanelQuery(
                        path.stem,
                        panel["title"],
                        expr,
                        bool(target.get("instant")),
                        panel.get("description", "").startswith(EXPECTED_EMPTY),
                    )
                )
    return queries
