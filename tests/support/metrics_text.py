"""Reading a /metrics page: its samples, one value, the values by a label."""

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample of a /metrics page as ``(name, labels, value)``: the one parser the tests use.

    prometheus_client's own parser, so escaping, exponents and ``NaN`` read as Prometheus reads them.
    """
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The value of the series ``name{labels}`` (labels must match exactly), or None when it is absent."""
    for found_name, found_labels, value in samples(text):
        if found_name == name and found_labels == labels:
            return value
    return None


def values_by_label(text: str, name: str, label: str) -> dict[str, float]:
    """``{value of label: sample value}`` of every series of ``name``, e.g. hvs_model_info by model_version."""
    return {found[label]: value for found_name, found, value in samples(text) if found_name == name}


def predict_ok(text: str) -> float:
    """/predict requests answered 200, from a /metrics page (0 before the first one)."""
    return metric_value(text, "flask_http_request_total", endpoint="/predict", method="POST", status="200") or 0.0
