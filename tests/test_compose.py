"""docker-compose.yml checked without a Docker engine: the Compose schema, then every reference
it makes into the repository, the images, and the other services' configuration."""

import json
import os
import re
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.support import ROOT, dockerfile_instructions, image_env

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict = COMPOSE["services"]
OUR_IMAGE_TARGETS = {"server", "mlflow-ui", "loadtest"}
# The services whose ports the lab publishes, and the port each listens on inside the network.
LISTENS_ON = {
    "api": 5001,
    "mlflow": 5000,
    "prometheus": 9090,
    "alertmanager": 9093,
    "alert-receiver": 9095,
    "grafana": 3000,
    "cadvisor": 8080,
    "locust": 8089,
}


def container_ports(service: dict) -> set[int]:
    return {int(str(mapping).rsplit(":", 1)[1]) for mapping in service.get("ports", [])}


def bind_mounts(service: dict) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append((source, target))
    return mounts


@pytest.mark.parametrize("name", ["docker-compose.yml", "docker-compose.notify.yml"])
def test_compose_files_match_the_compose_specification(name):
    schema_path = Path(os.environ.get("COMPOSE_SCHEMA", ROOT / ".cache" / "compose.schema.json"))
    assert schema_path.exists(), f"{schema_path} is missing: `make test` fetches it (npm pack dclint)"
    schema = json.loads(schema_path.read_text())
    jsonschema.validate(yaml.safe_load((ROOT / name).read_text()), schema, cls=jsonschema.Draft7Validator)


def test_every_mounted_repository_path_exists():
    for name, service in SERVICES.items():
        for source, _target in bind_mounts(service):
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
            else:
                # Only cAdvisor reads the host's own folders.
                assert name == "cadvisor", f"{name} mounts the host path {source}"


def test_published_ports_are_bound_to_localhost_by_default():
    for name, service in SERVICES.items():
        for mapping in service.get("ports", []):
            assert str(mapping).startswith("${HVS_BIND_ADDRESS:-127.0.0.1}:"), f"{name}: {mapping}"
        if name in LISTENS_ON:
            assert container_ports(service) == {LISTENS_ON[name]}, name


def test_images_are_pinned_or_built_here():
    for name, service in SERVICES.items():
        if "build" in service:
            assert (
                service["build"]["dockerfile"] == "api/Dockerfile" and service["build"]["target"] in OUR_IMAGE_TARGETS
            )
            stages = {rest.split(" AS ")[1] for keyword, rest in dockerfile_instructions() if " AS " in rest}
            assert service["build"]["target"] in stages, name
        else:
            assert re.fullmatch(r"[\w./-]+:v?\d+\.\d+\.\d+", service["image"]), f"{name}: {service['image']}"


def test_long_running_services_have_healthchecks_and_wait_for_what_they_need():
    for name, service in SERVICES.items():
        if name == "trainer":
            assert service["restart"] == "no" and service["healthcheck"] == {"disable": True}
            continue
        assert "healthcheck" in service, f"{name} has no healthcheck"
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency == "trainer" else "service_healthy"
            assert condition["condition"] == expected, f"{name} -> {dependency}"
            assert "healthcheck" in SERVICES[dependency] or dependency == "trainer"
    assert "trainer" in SERVICES["api"]["depends_on"]


def test_our_services_run_commands_the_image_has():
    import importlib.util

    for name, service in SERVICES.items():
        command = service.get("command")
        if service.get("build", {}).get("target") == "server" and command:
            assert command[:2] == ["python", "-m"], name
            assert importlib.util.find_spec(command[2]) is not None, f"{name}: no module {command[2]}"
            assert name == "trainer" or name == "alert-receiver"
        if service.get("build", {}).get("target") == "loadtest":
            assert command[0] == "locust"
            files = command[command.index("-f") + 1].split(",")
            mounts = dict((target, source) for source, target in bind_mounts(service))
            for file in files:
                folder, _, rest = file.removeprefix("/app/").partition("/")
                assert mounts.get(f"/app/{folder}") == f"./{folder}" and (ROOT / folder / rest).exists(), file


@pytest.mark.parametrize(
    ("service", "binary"), [("prometheus", "prometheus"), ("alertmanager", "prometheus-alertmanager")]
)
def test_prometheus_and_alertmanager_flags_exist_in_the_tested_binaries(service, binary):
    """The images are pinned to the Debian binaries' versions, so their flags must be the same."""
    shown = subprocess.run([binary, "--help"], capture_output=True, text=True)
    help_text = shown.stdout + shown.stderr
    version = subprocess.run([binary, "--version"], capture_output=True, text=True)
    image_version = SERVICES[service]["image"].rsplit(":v", 1)[1]
    assert f"version {image_version}" in version.stdout + version.stderr
    for flag in SERVICES[service]["command"]:
        assert f"{flag.split('=')[0]}=" in help_text, f"{binary} has no flag {flag}"


def test_scrape_and_alerting_targets_are_services_on_their_ports():
    prometheus = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    targets = [t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]]
    targets += [t for am in prometheus["alerting"]["alertmanagers"] for c in am["static_configs"] for t in c["targets"]]
    for target in targets:
        host, port = target.split(":")
        host = "prometheus" if host == "localhost" else host
        assert host in SERVICES and LISTENS_ON[host] == int(port), target
    jobs = [job["job_name"] for job in prometheus["scrape_configs"]]
    assert jobs[0] == "hvs-api" and prometheus["global"]["scrape_interval"] == "15s"


def test_alertmanager_webhooks_and_grafana_datasources_point_at_services():
    alertmanager = yaml.safe_load((ROOT / "alertmanager" / "alertmanager.yml").read_text())
    urls = [w["url"] for r in alertmanager["receivers"] for w in r.get("webhook_configs", [])]
    datasources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/datasources.yml").read_text())
    urls += [d["url"] for d in datasources["datasources"]]
    for url in urls:
        host, port = re.match(r"http://([\w-]+):(\d+)", url).groups()
        assert host in SERVICES and LISTENS_ON[host] == int(port), url
    assert {d["uid"] for d in datasources["datasources"]} == {"prometheus", "alertmanager"}


def test_grafana_provisioning_matches_its_mounts():
    grafana = SERVICES["grafana"]
    mounts = {target: source for source, target in bind_mounts(grafana)}
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/dashboards.yml").read_text())["providers"][0]
    dashboards_path = provider["options"]["path"]
    assert mounts[dashboards_path] == "./grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(dashboards_path + "/") and (ROOT / "grafana/dashboards" / Path(home).name).exists()
    env = grafana["environment"]
    assert (env["GF_AUTH_ANONYMOUS_ENABLED"], env["GF_AUTH_ANONYMOUS_ORG_ROLE"], env["GF_USERS_ALLOW_SIGN_UP"]) == (
        "${GRAFANA_ANONYMOUS_VIEWERS:-true}",
        "Viewer",
        "false",
    )


def test_env_example_lists_every_variable():
    used = set(re.findall(r"\$\{(\w+)", (ROOT / "docker-compose.yml").read_text()))
    listed = set(re.findall(r"^(\w+)=", (ROOT / ".env.example").read_text(), re.MULTILINE))
    assert used == listed


def test_fault_injection_is_on_only_in_the_compose_lab():
    assert SERVICES["api"]["environment"]["FAULT_INJECTION_ENABLED"] == "${FAULT_INJECTION_ENABLED:-true}"
    from hvs_api import DEFAULTS

    assert DEFAULTS["FAULT_INJECTION_ENABLED"] is False


def test_the_apis_metric_files_and_heartbeat_are_in_memory():
    metrics_dir = Path(image_env()["PROMETHEUS_MULTIPROC_DIR"])
    memory = [Path(m) for m in SERVICES["api"].get("tmpfs", [])]
    assert any(metrics_dir.is_relative_to(m) for m in memory), (metrics_dir, memory)
    # gunicorn keeps its worker heartbeat files in the default temporary folder.
    assert Path("/tmp") in memory
