"""Where the project is, and the two example payloads every API test sends."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "api" / "Dockerfile"
# The virtual environment's programs (gunicorn, locust), beside the Python running the tests.
VENV_BIN = Path(sys.executable).parent
# The two example payloads (one Normal, one Hazardous).
NORMAL = json.loads((ROOT / "test_payload.json").read_text())
HAZARDOUS = json.loads((ROOT / "test_payload_hazardous.json").read_text())
