"""docker-compose.yml checked without a Docker engine: the Compose schema, then every reference
it makes into the repository, the images, and the other services' configuration."""

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.support.dockerfile import dockerfile_instructions, final_stage, image_env
from tests.support.paths import NORMAL, ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict = COMPOSE["services"]
OUR_IMAGE_TARGETS = {"server", "mlflow-ui", "loadtest"}
# The services that listen on a port, and the port each listens on inside the network. The lab
# publishes each of them on the host, but for NOT_PUBLISHED.
LISTENS_ON = {
    "api": 5001,
    "mlflow": 5000,
    "prometheus": 9090,
    "alertmanager": 9093,
    "alert-receiver": 9095,
    "grafana": 3000,
    "cadvisor": 8080,
    "locust": 8089,
    "blackbox": 9115,
}
# Only Prometheus talks to the blackbox exporter, inside the lab's network.
NOT_PUBLISHED = {"blackbox"}


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
            expected = set() if name in NOT_PUBLISHED else {LISTENS_ON[name]}
            assert container_ports(service) == expected, name


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


def stage_cmd(target: str) -> list[str]:
    """The ``CMD`` a stage of api/Dockerfile runs, in exec form (empty when it sets none)."""
    cmds = [rest for keyword, rest in final_stage(target=target) if keyword == "CMD"]
    return json.loads(cmds[-1]) if cmds else []


def run_command(service: dict) -> list[str]:
    """What a service's container runs: its own ``command``, else the ``CMD`` of the stage it builds
    (empty for a pinned image, whose defaults the checks take from the program)."""
    if "command" in service or "build" not in service:
        return service.get("command", [])
    return stage_cmd(service["build"]["target"])


def program(service: dict) -> str:
    """The program a service runs: its ``python -m`` module, the command of our image, or the
    repository name of a pinned image (prom/prometheus -> prometheus)."""
    if "build" not in service:
        return service["image"].rsplit(":", 1)[0].rsplit("/", 1)[-1]
    command = run_command(service)
    return command[2] if command[:2] == ["python", "-m"] else command[0]


def flag_value(command: list[str], flag: str) -> str | None:
    """The value of ``--flag=value`` or ``--flag value`` in a command, or None."""
    for i, argument in enumerate(command):
        if argument.startswith(flag + "="):
            return argument.split("=", 1)[1]
        if argument == flag:
            return command[i + 1]
    return None


def help_default(binary: str, flag: str) -> str:
    """A flag's default as the Debian binary (the version the image pins) prints it in --help."""
    shown = subprocess.run([binary, "--help"], capture_output=True, text=True)
    return re.search(rf'{re.escape(flag)}="?([^"\s]*)', shown.stdout + shown.stderr).group(1)


def locust_default_web_port() -> int:
    # Asked in a process of its own: importing locust monkey-patches the standard library.
    code = "from locust.argument_parser import get_parser; print(get_parser().get_default('web_port'))"
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)


def listening_port(service: dict) -> int:
    """The port a service's program listens on inside its container: its command's flag or
    environment, else the image's ENV or the program's own default."""
    command, name = run_command(service), program(service)
    env = image_env(target=service["build"]["target"]) if "build" in service else {}
    env.update({key: str(value) for key, value in service.get("environment", {}).items()})
    if name in ("gunicorn", "hvs_alert_receiver"):
        # gunicorn.conf.py binds to PORT, and the alert receiver listens on it.
        return int(env["PORT"])
    if name == "mlflow":
        return int(flag_value(command, "--port"))
    if name == "locust":
        return int(flag_value(command, "--web-port") or locust_default_web_port())
    if name in ("prometheus", "alertmanager", "blackbox-exporter"):
        binary = DEBIAN_BINARIES[name]
        address = flag_value(command, "--web.listen-address") or help_default(binary, "--web.listen-address")
        return int(address.rsplit(":", 1)[1])
    if name == "grafana":
        # Grafana's documented default http_port; GF_SERVER_HTTP_PORT overrides it.
        return int(env.get("GF_SERVER_HTTP_PORT", "3000"))
    if name == "cadvisor":
        # cAdvisor's documented default for --port.
        return int(flag_value(command, "--port") or "8080")
    raise AssertionError(f"no rule for the port of {name}")


# The Debian binary of each pinned image's program, of the version the image pins.
DEBIAN_BINARIES = {
    "prometheus": "prometheus",
    "alertmanager": "prometheus-alertmanager",
    "blackbox-exporter": "prometheus-blackbox-exporter",
}
# The paths each program answers only when it is up (and, where it has one, ready).
HEALTH_PATHS = {
    "gunicorn": {"/ready", "/health"},
    "hvs_alert_receiver": {"/health"},
    "mlflow": {"/health"},
    "prometheus": {"/-/ready", "/-/healthy"},
    "alertmanager": {"/-/ready", "/-/healthy"},
    # blackbox_exporter has no /-/ready (0.28 still answers its index page there).
    "blackbox-exporter": {"/-/healthy"},
    "grafana": {"/api/health"},
    "cadvisor": {"/healthz"},
    # Locust has no health endpoint: its web UI's page answers once the master runs.
    "locust": {"/"},
}


def seconds(duration: str) -> float:
    """A Compose duration (``5s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, f"not a duration: {duration}"
    return sum(float(number) * units[unit] for number, unit in parts)


def test_healthchecks_probe_each_services_health_path_on_its_own_port_with_sane_timing():
    """Every long-running service's check asks its own program, in its own container, whether it
    is healthy; a locust worker, which serves no port, checks that its main process is a worker."""
    for name, service in SERVICES.items():
        if name == "trainer":
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable"), f"{name} has no healthcheck"
        test = check["test"]
        assert test[0] == "CMD", f"{name}: {test}"
        probe = " ".join(test[1:])
        command = run_command(service)
        if "--worker" in command:
            assert "/proc/1/cmdline" in probe and "--worker" in probe, f"{name}: {probe}"
        else:
            [(port, path)] = re.findall(r"https?://(?:127\.0\.0\.1|localhost):(\d+)(/[^'\"\s]*)?", probe)
            listens = listening_port(service)
            assert int(port) == listens, f"{name} probes port {port} but listens on {listens}"
            assert listens == LISTENS_ON[name], f"{name} listens on {listens}, LISTENS_ON says {LISTENS_ON[name]}"
            assert (path or "/") in HEALTH_PATHS[program(service)], f"{name} probes {path}, not a health path"
        interval, timeout = seconds(check["interval"]), seconds(check["timeout"])
        assert 1 <= interval <= 60 and 0 < timeout < interval, f"{name}: interval {interval}s, timeout {timeout}s"
        assert 1 <= check["retries"] <= 10, f"{name}: retries {check['retries']}"
        if "start_period" in check:
            assert seconds(check["start_period"]) >= 0
        # A probe that gives up before Docker does reports its own error rather than a kill.
        for own in re.findall(r"timeout=(\d+(?:\.\d+)?)", probe):
            assert float(own) < timeout, f"{name}: the probe waits {own}s, Docker {timeout}s"


def test_services_wait_for_healthy_dependencies_or_the_trainer_to_finish():
    """The one-shot trainer has no healthcheck and is not restarted; everything else that
    depends on a service waits for its healthcheck to pass."""
    trainer = SERVICES["trainer"]
    assert trainer["restart"] == "no" and trainer["healthcheck"] == {"disable": True}
    for name, service in SERVICES.items():
        for dependency, condition in service.get("depends_on", {}).items():
            expected = "service_completed_successfully" if dependency == "trainer" else "service_healthy"
            assert condition["condition"] == expected, f"{name} -> {dependency}"
            assert dependency == "trainer" or "test" in SERVICES[dependency].get("healthcheck", {}), dependency
    assert "trainer" in SERVICES["api"]["depends_on"]


def copied_sources(target: str, context: Path) -> list[Path]:
    """The build-context paths a stage's image is made from: the sources of the COPY and ADD
    instructions of the stage, of the stages it builds on, and of the stages those read
    (``COPY --from=`` or ``RUN --mount=...,from=``)."""
    sources, seen, pending = [], set(), [target]
    while pending:
        stage = pending.pop()
        if stage in seen:
            continue
        seen.add(stage)
        for keyword, rest in final_stage(target=stage):
            pending += re.findall(r"\bfrom=([\w.-]+)", rest)
            if keyword in ("COPY", "ADD") and "--from=" not in rest:
                arguments = [a for a in shlex.split(rest) if not a.startswith("--")]
                sources += [context / source for source in arguments[:-1]]
    return sources


def has_module(sources: list[Path], module: str) -> bool:
    """Whether a module's file (``a/b.py``, or ``a/b/__main__.py`` for a package) is among the sources."""
    *package, last = module.split(".")
    wanted = ["/".join([*package, last + ".py"]), "/".join([*package, last, "__main__.py"])]
    for source in sources:
        files = [source] if source.is_file() else source.rglob("*.py")
        if any(f.as_posix().endswith("/" + w) for f in files for w in wanted):
            return True
    return False


def test_python_m_modules_of_our_services_are_in_what_their_image_copies():
    checked = set()
    for name, service in SERVICES.items():
        command = service.get("command")
        if "build" in service and command and command[:2] == ["python", "-m"]:
            sources = copied_sources(service["build"]["target"], ROOT / service["build"]["context"])
            assert has_module(sources, command[2]), f"{name}: {command[2]} is in none of {sources}"
            checked.add(name)
    assert checked == {"trainer", "alert-receiver"}


def test_locust_files_are_in_the_folders_mounted_where_its_command_reads_them():
    checked = set()
    for name, service in SERVICES.items():
        if service.get("build", {}).get("target") == "loadtest":
            command = service["command"]
            assert command[0] == "locust", name
            files = command[command.index("-f") + 1].split(",")
            mounts = dict((target, source) for source, target in bind_mounts(service))
            for file in files:
                folder, _, rest = file.removeprefix("/app/").partition("/")
                assert mounts.get(f"/app/{folder}") == f"./{folder}", f"{name}: {file} is not in a mounted folder"
                assert (ROOT / folder / rest).exists(), f"{name}: {file} does not exist"
            checked.add(name)
    assert checked == {"locust", "locust-worker"}


@pytest.mark.parametrize(
    ("service", "binary"),
    [
        ("prometheus", "prometheus"),
        ("alertmanager", "prometheus-alertmanager"),
        ("blackbox", "prometheus-blackbox-exporter"),
    ],
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


@pytest.mark.parametrize("service", ["prometheus", "alertmanager"])
def test_external_urls_are_the_host_address_a_user_opens(service):
    """Alert links (generatorURL, silences) use the external URL: it must be the published port."""
    [flag] = [f for f in SERVICES[service]["command"] if f.startswith("--web.external-url=")]
    # "<bind address>:<published port>:<container port>", each part maybe a ${VARIABLE:-default}.
    [published] = [re.fullmatch(r"(\$\{[^}]*\}|[^:]*):(.*):\d+", str(m)).group(2) for m in SERVICES[service]["ports"]]
    assert flag.split("=", 1)[1] == f"http://localhost:{published}", flag


def test_prometheus_starts_after_the_api_answers_so_the_first_start_pages_nobody():
    assert SERVICES["prometheus"]["depends_on"]["api"] == {"condition": "service_healthy"}


def test_prometheus_keeps_the_whole_slo_window():
    [flag] = [f for f in SERVICES["prometheus"]["command"] if f.startswith("--storage.tsdb.retention.time=")]
    # The 30-day SLO's ratios need 30 days of samples.
    assert int(re.fullmatch(r"(\d+)d", flag.split("=", 1)[1]).group(1)) >= 30, flag


def probe_jobs(prometheus: dict) -> list[dict]:
    """The scrape jobs that probe through the blackbox exporter (their targets are URLs)."""
    return [job for job in prometheus["scrape_configs"] if job.get("metrics_path") == "/probe"]


def test_scrape_and_alerting_targets_are_services_on_their_ports():
    prometheus = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    probes = probe_jobs(prometheus)
    targets = [
        t
        for job in prometheus["scrape_configs"]
        if job not in probes
        for c in job["static_configs"]
        for t in c["targets"]
    ]
    # A probe job scrapes the exporter at the address its relabeling sets.
    targets += [
        r["replacement"] for job in probes for r in job["relabel_configs"] if r["target_label"] == "__address__"
    ]
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
    from hvs_settings import ApiSettings

    assert ApiSettings.from_env({}).fault_injection_enabled is False


def test_the_apis_metric_files_and_heartbeat_are_in_memory():
    metrics_dir = Path(image_env()["PROMETHEUS_MULTIPROC_DIR"])
    memory = [Path(m) for m in SERVICES["api"].get("tmpfs", [])]
    assert any(metrics_dir.is_relative_to(m) for m in memory), (metrics_dir, memory)
    # gunicorn keeps its worker heartbeat files in the default temporary folder.
    assert Path("/tmp") in memory


def test_the_probe_job_asks_the_blackbox_exporter_to_probe_readiness_and_predictions():
    """Prometheus hands each URL to the exporter as its target, under the module its `module`
    label names, which the exporter's mounted configuration defines, and keeps the URL as the
    instance: /ready with a GET, /predict with a marked POST of a record the API accepts."""
    prometheus = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    [job] = probe_jobs(prometheus)
    assert job["job_name"] == "hvs-api-probe" and "params" not in job
    relabel = {r["target_label"]: r for r in job["relabel_configs"]}
    assert relabel["__param_module"]["source_labels"] == ["module"]
    assert relabel["__param_target"]["source_labels"] == ["__address__"]
    assert relabel["instance"]["source_labels"] == ["__param_target"]
    assert relabel["__address__"]["replacement"] == f"blackbox:{LISTENS_ON['blackbox']}"
    probed = {}
    for static in job["static_configs"]:
        [url] = static["targets"]
        host, port, path = re.fullmatch(r"http://([\w-]+):(\d+)(/\S*)", url).groups()
        assert (host, int(port)) == ("api", LISTENS_ON["api"])
        probed[static["labels"]["module"]] = path
    # The API's readiness, not /health: an API without a model is not available.
    assert probed == {"hvs_api_ready": "/ready", "hvs_api_predict": "/predict"}
    blackbox = SERVICES["blackbox"]
    config_file = flag_value(blackbox["command"], "--config.file")
    [(source, target)] = bind_mounts(blackbox)
    assert config_file.startswith(target + "/"), (config_file, target)
    config = ROOT / source / config_file[len(target) + 1 :]
    modules = yaml.safe_load(config.read_text())["modules"]
    assert set(modules) == set(probed)
    # The probe must answer before Prometheus's scrape gives up on the exporter.
    timeout = prometheus["global"].get("scrape_timeout", "10s")
    for module in modules.values():
        assert module["prober"] == "http" and module["http"]["valid_status_codes"] == [200]
        assert seconds(module["timeout"]) < seconds(timeout)
    predict = modules["hvs_api_predict"]["http"]
    assert predict["method"] == "POST" and predict["headers"]["X-HVS-Synthetic"]
    # The record is one the API accepts as it is (api/tests/test_routes.py posts it).
    assert json.loads(predict["body"]) == NORMAL
    checked = subprocess.run(
        ["prometheus-blackbox-exporter", f"--config.file={config}", "--config.check"], capture_output=True, text=True
    )
    assert checked.returncode == 0 and "level=warn" not in checked.stderr, checked.stderr
    # Probing starts once the exporter answers, as scraping does once the API does.
    assert SERVICES["prometheus"]["depends_on"]["blackbox"] == {"condition": "service_healthy"}
