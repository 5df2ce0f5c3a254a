"""One version of each monitoring component everywhere: docker-compose.yml pins the images, and
the stand-in builder, system-deps, the binaries the tests run, the Kubernetes path, the README
and .env.example say the same (or derive it from the Compose file)."""

import re
import subprocess

import pytest
import yaml

from tests.container.engine import RECIPES, base_images
from tests.support.paths import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
# The Compose service of each component, and how its name is written in prose and file names
# (Debian's package names included; "kube-prometheus-stack" or "prometheus-node-exporter" are
# other things, hence the guards against a neighbouring word character or hyphen).
COMPONENTS = {
    "prometheus": r"prometheus",
    "alertmanager": r"(?:prometheus-)?alertmanager",
    "blackbox": r"(?:prometheus-)?blackbox(?:[-_ ]exporter)?",
    "grafana": r"grafana",
    "cadvisor": r"cadvisor",
}
# The settings that carry a version (k8s/stack.env).
SETTINGS = {
    "prometheus": "PROMETHEUS_VERSION",
    "alertmanager": "ALERTMANAGER_VERSION",
    "blackbox": "BLACKBOX_EXPORTER_VERSION",
    "grafana": "GRAFANA_VERSION",
    "cadvisor": "CADVISOR_VERSION",
}
# Files that speak of these versions. Each mention of a component followed by a version must
# give the pinned one.
SCANNED = [
    "docker-compose.yml",
    "README.md",
    ".env.example",
    "tests/system-deps.sh",
    "tests/container/engine.py",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests" / "container" / "standins").glob("*.Dockerfile")),
    "k8s/helm-values.yaml",
    "k8s/stack.env",
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "k8s" / "base").glob("*.yaml")),
    *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").glob("**/*.md")),
]
VERSION = r"v?(\d+\.\d+(?:\.\d+)?)(?![\w.])"


def pinned(service: str) -> str:
    """The upstream version of the image docker-compose.yml pins for a service (no leading v)."""
    tag = COMPOSE[service]["image"].rpartition(":")[2]
    match = re.fullmatch(r"v?(\d+\.\d+\.\d+)", tag)
    assert match, f"{service}: {tag} is not a pinned release"
    return match.group(1)


def mentions(text: str) -> list[tuple[str, str]]:
    """(component, version) for each "<component> <version>" in a text: image references
    (prom/prometheus:v3.5.3), prose and tables (Prometheus 3.5, Alertmanager (v0.33.1),
    "| Grafana | 13.2.0 |") and settings (PROMETHEUS_VERSION=v3.5.3)."""
    found = []
    for component, name in COMPONENTS.items():
        prose = rf"(?<![\w-]){name}(?![\w-])[\s:=/(|]*{VERSION}"
        setting = rf"(?m)^{SETTINGS[component]}={VERSION}"
        found += [(component, v) for v in re.findall(prose, text, re.IGNORECASE)]
        found += [(component, v) for v in re.findall(setting, text)]
    return found


def disagreements(text: str) -> list[str]:
    """The mentions in a text of a version that is not the pinned one (a shorter version, such
    as 3.5 for 3.5.3, agrees when it is a prefix)."""
    wrong = []
    for component, version in mentions(text):
        want = pinned(component)
        if not (version == want or want.startswith(version + ".")):
            wrong.append(f"{component} {version} (pinned: {want})")
    return wrong


@pytest.mark.parametrize("path", SCANNED)
def test_every_mention_of_a_version_is_the_pinned_one(path):
    assert disagreements((ROOT / path).read_text()) == []


def test_the_check_catches_an_old_version_in_prose_an_image_and_a_setting():
    assert disagreements("Prometheus 2.42 and prom/alertmanager:v0.25.0") == [
        f"prometheus 2.42 (pinned: {pinned('prometheus')})",
        f"alertmanager 0.25.0 (pinned: {pinned('alertmanager')})",
    ]
    assert disagreements("GRAFANA_VERSION=10.1.5\n") == [f"grafana 10.1.5 (pinned: {pinned('grafana')})"]
    assert disagreements("prometheus-blackbox-exporter 0.23.0") == [f"blackbox 0.23.0 (pinned: {pinned('blackbox')})"]
    # The chart's and other projects' versions are not the components'.
    assert mentions("kube-prometheus-stack 88.5.3, prometheus-node-exporter 4.56.1, grafana-12.11.1-values") == []


def test_the_versions_page_states_every_pinned_version():
    found = set(mentions((ROOT / "docs" / "versions.md").read_text()))
    for component in COMPONENTS:
        assert (component, pinned(component)) in found or (component, "v" + pinned(component)) in found, component


def test_the_kubernetes_path_pins_the_same_prometheus_alertmanager_and_exporter():
    values = yaml.safe_load((ROOT / "k8s" / "helm-values.yaml").read_text())
    prometheus = values["prometheus"]["prometheusSpec"]
    alertmanager = values["alertmanager"]["alertmanagerSpec"]
    assert prometheus["image"]["repository"] == "prometheus/prometheus"
    assert prometheus["image"]["tag"] == prometheus["version"] == "v" + pinned("prometheus")
    assert alertmanager["image"]["repository"] == "prometheus/alertmanager"
    assert alertmanager["image"]["tag"] == "v" + pinned("alertmanager")
    deployment = yaml.safe_load((ROOT / "k8s" / "base" / "hvs-blackbox-exporter-deployment.yaml").read_text())
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == COMPOSE["blackbox"]["image"]
    env = dict(
        line.split("=", 1)
        for line in (ROOT / "k8s" / "stack.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    assert env["PROMETHEUS_VERSION"] == "v" + pinned("prometheus")
    assert env["ALERTMANAGER_VERSION"] == "v" + pinned("alertmanager")
    assert env["BLACKBOX_EXPORTER_VERSION"] == "v" + pinned("blackbox")
    assert env["GRAFANA_VERSION"] == pinned("grafana")


def test_the_stand_in_builder_has_a_recipe_for_every_image_it_must_build():
    """The recipes take their version from the image's tag, so they name none of their own."""
    for image in base_images():
        assert image.rpartition(":")[0] in RECIPES, image
    for path in (ROOT / "tests" / "container" / "standins").glob("*.Dockerfile"):
        if path.name != "python.Dockerfile":
            assert mentions(path.read_text()) == [], path.name


def test_system_deps_reads_the_versions_from_the_compose_file():
    script = (ROOT / "tests" / "system-deps.sh").read_text()
    assert re.findall(r"\b\d+\.\d+\.\d+\b", script) == []
    for image in ("prom/prometheus", "prom/alertmanager", "prom/blackbox-exporter"):
        assert f"$(pinned {image})" in script


@pytest.mark.parametrize(
    ("program", "component"),
    [
        ("prometheus", "prometheus"),
        ("promtool", "prometheus"),
        ("prometheus-alertmanager", "alertmanager"),
        ("amtool", "alertmanager"),
        ("prometheus-blackbox-exporter", "blackbox"),
    ],
)
def test_the_binaries_the_tests_run_are_the_pinned_versions(program, component):
    shown = subprocess.run([program, "--version"], capture_output=True, text=True)
    found = re.search(r"version (\d+\.\d+\.\d+)", shown.stdout + shown.stderr)
    assert found and found.group(1) == pinned(component), shown.stdout + shown.stderr
