"""Load scenarios for the HVS Prediction API.

In the Compose lab, open http://localhost:8089, pick a scenario (user class) and, for a ramp
or a spike, a shape, then start. From a shell (``make load`` wraps this)::

    locust -f loadtest/locustfile.py --headless -H http://127.0.0.1:5001 \\
        -u 20 -r 5 -t 2m --csv results/steady --html results/steady.html SteadyUser

Scenarios (user classes): ``SteadyUser`` (realistic mix), ``DriftUser`` (readings pushed
towards the stressed regime, so the Hazardous share, the features and the drift alerts move),
``SensorFaultUser`` (the gas and vibration sensors under-read: those features drift, then the
labels show the model missing hazards), and ``ErrorBurstUser`` (a share of requests asks the
API for an injected 500; the API must run with ``FAULT_INJECTION_ENABLED=true``, as the
Compose lab does). Load shapes live in their own
files, since Locust runs whichever shape class it loads: add ``,loadtest/shapes/ramp.py`` or
``,loadtest/shapes/spike.py`` to ``-f`` (the Compose web UI loads both and lets you pick one).

Every scenario sends single Normal and Hazardous records (the shipped example payloads),
batches of 5 to 100 records from the project's data generator, health checks, and a small
share of invalid payloads whose expected 4xx counts as a success. Every user also sends back
the true labels (the generator's) of a share of its predictions, by their ids, a while after
it got them: ``POST /feedback``, as an operator or a later inspection would.

Environment (``hvs_settings.LoadTestSettings``, listed in docs/configuration.md): HVS_DRIFT
(the DriftUser's drift), HVS_SENSOR_FAULT (the SensorFaultUser's), HVS_FEEDBACK_SHARE and
HVS_FEEDBACK_DELAY (how many labels come back, how late), HVS_FAULT_SHARE (the ErrorBurstUser's
share of injected failures), HVS_MAX_FAILURE_RATIO and HVS_MAX_P95_MS: a headless run that misses
either exits with code 1
(error-burst runs expect failures and are not held to the failure ratio).
"""

import json
import random
import time
from collections import deque
from pathlib import Path

from hvs_model import readings
from hvs_settings import LoadTestSettings
from locust import FastHttpUser, between, events, task

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = {
    "Normal": json.loads((ROOT / "test_payload.json").read_text()),
    "Hazardous": json.loads((ROOT / "test_payload_hazardous.json").read_text()),
}
# Bodies the API must refuse with a 4xx, built from a valid example so only one thing is wrong.
INVALID_BODIES = [
    json.dumps({k: v for k, v in EXAMPLES["Normal"].items() if k != "gas_ppm"}),  # missing field
    json.dumps({**EXAMPLES["Normal"], "temperature_c": 999}),  # out of range
    json.dumps({**EXAMPLES["Normal"], "pressure_kpa": "high"}),  # wrong type
    json.dumps({"records": []}),  # empty batch
    '{"temperature_c": NaN}',  # not JSON
]
JSON_HEADERS = {"Content-Type": "application/json"}
POOL_SIZE = 2000
# Labels sent in one POST /feedback at most (the API's batch limit is larger).
FEEDBACK_BATCH = 200
# Read once, when Locust loads this file: a malformed value stops it before any user starts.
SETTINGS = LoadTestSettings.from_env()


class PredictionUser(FastHttpUser):
    """The shared task mix; subclasses choose the readings and the failures they ask for."""

    abstract = True
    wait_time = between(0.2, 1.0)
    drift = 0.0
    sensor_fault = 0.0
    fault_share = 0.0

    def on_start(self) -> None:
        # Each simulated client gets its own readings and their true labels, drawn once.
        labelled = readings.labelled_records(
            POOL_SIZE, seed=random.randrange(2**31), drift=self.drift, sensor_fault=self.sensor_fault
        )
        self.pool = [record for record, _ in labelled]
        self.truth = [label for _, label in labelled]
        # (when to send it, prediction id, true label), oldest first.
        self.due: deque[tuple[float, str, str]] = deque()

    def _headers(self) -> dict:
        if self.fault_share and random.random() < self.fault_share:
            return {**JSON_HEADERS, "X-Inject-Fault": "1"}
        return JSON_HEADERS

    def _post(self, body: str, name: str, truth: list[str]) -> None:
        response = self.client.post("/predict", data=body, headers=self._headers(), name=name)
        if response.status_code != 200 or not SETTINGS.feedback_share:
            return
        answer = response.json()
        predictions = answer["predictions"] if "predictions" in answer else [answer["prediction"]]
        when = time.monotonic() + SETTINGS.feedback_delay
        for prediction, label in zip(predictions, truth, strict=True):
            if random.random() < SETTINGS.feedback_share:
                self.due.append((when, prediction["id"], label))

    def _single(self, record: dict, label: str) -> None:
        self._post(json.dumps(record), "/predict single", [label])

    @task(6)
    def single_normal(self) -> None:
        if self.drift or self.sensor_fault:
            index = random.randrange(POOL_SIZE)
            self._single(self.pool[index], self.truth[index])
        else:
            self._single(EXAMPLES["Normal"], "Normal")

    @task(2)
    def single_hazardous(self) -> None:
        self._single(EXAMPLES["Hazardous"], "Hazardous")

    @task(6)
    def batch(self) -> None:
        size = random.choice((5, 10, 25, 50, 100))
        start = random.randrange(POOL_SIZE - size)
        body = json.dumps({"records": self.pool[start : start + size]})
        self._post(body, f"/predict batch {size}", self.truth[start : start + size])

    @task(3)
    def feedback(self) -> None:
        """Send the labels that are due, as one batch."""
        now, items = time.monotonic(), []
        while self.due and self.due[0][0] <= now and len(items) < FEEDBACK_BATCH:
            _, prediction_id, label = self.due.popleft()
            items.append({"id": prediction_id, "label": label})
        if items:
            self.client.post("/feedback", data=json.dumps({"feedback": items}), headers=JSON_HEADERS, name="/feedback")

    @task(2)
    def health(self) -> None:
        self.client.get("/health", name="/health")

    @task(1)
    def invalid(self) -> None:
        body = random.choice(INVALID_BODIES)
        with self.client.post(
            "/predict", data=body, headers=JSON_HEADERS, name="/predict invalid (4xx expected)", catch_response=True
        ) as response:
            if 400 <= response.status_code < 500:
                response.success()
            else:
                response.failure(f"expected a 4xx for an invalid body, got {response.status_code}")


class SteadyUser(PredictionUser):
    """Steady, realistic traffic: the Hazardous share stays near the training baseline."""


class DriftUser(PredictionUser):
    """Readings drifted towards the stressed regime: more Hazardous predictions."""

    drift = SETTINGS.drift


class SensorFaultUser(PredictionUser):
    """The gas and vibration sensors under-read: inputs drift, and the model misses hazards."""

    sensor_fault = SETTINGS.sensor_fault


class ErrorBurstUser(PredictionUser):
    """Steady readings, but a share of requests asks for an injected 500."""

    fault_share = SETTINGS.fault_share


@events.quitting.add_listener
def enforce_slo(environment, **_kwargs) -> None:
    """Turn a missed SLO into a non-zero exit code for headless runs."""
    stats = environment.stats.total
    if stats.num_requests == 0:
        return
    max_failure_ratio = SETTINGS.max_failure_ratio
    max_p95_ms = SETTINGS.max_p95_ms
    expects_failures = any(cls.fault_share for cls in environment.user_classes)
    p95 = stats.get_response_time_percentile(0.95)
    missed = []
    if stats.fail_ratio > max_failure_ratio and not expects_failures:
        missed.append(f"failure ratio {stats.fail_ratio:.2%} > {max_failure_ratio:.2%}")
    if p95 > max_p95_ms:
        missed.append(f"p95 {p95:.0f} ms > {max_p95_ms:.0f} ms")
    if missed:
        environment.process_exit_code = 1
        print("SLO missed: " + "; ".join(missed))
