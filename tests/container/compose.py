"""The Compose lab brought up by a test as a user brings it up, under a project of its own.

The project name, published ports and image tag are the test's own, set through the variables
docker-compose.yml reads (COMPOSE_PROJECT_NAME, HVS_*_PORT, HVS_IMAGE_TAG). Volumes and the
network are named after the project, so a lab the user is running is never touched.
"""

import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from urllib.parse import quote

import yaml

from tests.container.engine import COMPOSE_FILE, NOT_STARTED, docker
from tests.support.paths import ROOT
from tests.support.web import free_port, http

# The tag of the images the test builds, so that the user's own (`latest`) stay as they are.
TEST_TAG = "test"


def published_ports() -> dict[str, tuple[str, int]]:
    """``{service: (variable, container port)}`` for every port docker-compose.yml publishes."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    found = {}
    for name, service in services.items():
        for entry in service.get("ports", []):
            variable, port = re.fullmatch(r"\$\{HVS_BIND_ADDRESS:-[^}]+\}:\$\{(\w+):-\d+\}:(\d+)", entry).groups()
            found[name] = (variable, int(port))
    return found


def compose_default(variable: str) -> str:
    """The default docker-compose.yml gives ``${variable:-default}``."""
    [default] = set(re.findall(rf"\$\{{{variable}:-([^}}]*)\}}", COMPOSE_FILE.read_text()))
    return default


def services() -> list[str]:
    """The services the stage starts: all but those without an image here."""
    names = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return [name for name in names if name not in NOT_STARTED]


@dataclass
class ComposeLab:
    project: str = field(default_factory=lambda: f"hvs-lab-test-{os.getpid()}")
    ports: dict[str, int] = field(default_factory=lambda: {name: free_port() for name in published_ports()})

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HVS_", "COMPOSE_"))}
        env.update(COMPOSE_PROJECT_NAME=self.project, HVS_IMAGE_TAG=TEST_TAG, HVS_BIND_ADDRESS="127.0.0.1")
        for name, (variable, _) in published_ports().items():
            env[variable] = str(self.ports[name])
        return env

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"

    def run(self, *command: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """A command in the project root with the test project's environment; output kept."""
        return subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)

    def compose(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        return self.run("docker", "compose", *args, timeout=timeout)

    def up(self, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``up -d --wait`` of every service the stage runs: returns once all are healthy or done."""
        return self.compose("up", "-d", "--wait", *extra, *services(), timeout=timeout)

    def containers(self) -> list[dict]:
        """Every container of the project, running or not, as ``docker compose ps`` describes it."""
        out = self.compose("ps", "--all", "--format", "json").stdout
        # Compose 2.21+ prints one JSON object per line; earlier releases printed one array.
        return json.loads(out) if out.lstrip().startswith("[") else [json.loads(line) for line in out.splitlines()]

    def inspect(self, service: str) -> dict:
        [container] = [c for c in self.containers() if c["Service"] == service]
        return json.loads(docker("inspect", container["ID"]).stdout)[0]

    def logs(self, service: str) -> str:
        return self.compose("logs", "--no-color", service).stdout

    def prometheus(self, query: str) -> list[dict]:
        status, body = http("GET", f"{self.url('prometheus')}/api/v1/query?query={quote(query, safe='')}")
        assert status == 200, body
        return json.loads(body)["data"]["result"]

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "10")


def failure(result: subprocess.CompletedProcess, what: str) -> str:
    """A failure message with the end of a command's output."""
    return f"{what} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
