"""The JSON text of a ``/predict`` answer, written from parts kept per model.

The answer is a dict of dicts turned into JSON by Flask's provider on every request: for one
record, building the dicts and encoding them cost more than validating the record. Only the
probabilities, labels and ids change from one answer to the next, so the rest (the model's
identity, the labels' and version's JSON) is encoded once per model, and each answer is
joined from those parts and the numbers. The text is what Flask's provider gives for the same
dicts (compact separators, keys sorted, ASCII only), byte for byte: a property test holds it
to ``json.dumps`` of the dicts.
"""

import functools
import json
import math

from hvs_model.features import LABELS

# As Flask's JSON answers are encoded (CompactJSONProvider: sort_keys, compact, ensure_ascii).
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode


class PredictionBody:
    """The answer's parts for one model (its name, version and run id)."""

    def __init__(self, name: str, version: str, run_id: str):
        self.model = _ENCODE({"name": name, "version": version, "run_id": run_id})
        self.labels = {label_id: _ENCODE(label) for label_id, label in LABELS.items()}
        self.version = _ENCODE(version)

    def render(self, probabilities: list[float], label_ids: list[int], ids: list[str] | None, is_batch: bool) -> str:
        """The answer's JSON text (with Flask's closing newline): each record's prediction, its
        probability rounded to 6 places, and its id when ``ids`` is given."""
        labels, version = self.labels, self.version
        parts = []
        for index, (probability, label_id) in enumerate(zip(probabilities, label_ids, strict=True)):
            probability = round(probability, 6)
            if not math.isfinite(probability):  # JSON has no literal for it: as json.dumps writes it
                number = _ENCODE(probability)
            else:
                number = float.__repr__(probability)
            # The keys in sorted order. An id is URL-safe base64 (hvs_api.prediction_ids): no
            # character in it needs escaping.
            identity = f',"id":"{ids[index]}"' if ids is not None else ""
            parts.append(
                f'{{"hazard_probability":{number}{identity},"label":{labels[label_id]},'
                f'"label_id":{label_id},"model_version":{version}}}'
            )
        if is_batch:
            return f'{{"model":{self.model},"predictions":[{",".join(parts)}]}}\n'
        return f'{{"model":{self.model},"prediction":{parts[0]}}}\n'


@functools.lru_cache(maxsize=8)
def for_model(name: str, version: str, run_id: str) -> PredictionBody:
    """The parts of one model's answers, built on its first answer (a reload brings a new one)."""
    return PredictionBody(name, version, run_id)
