"""The Docker engine and the base images for the container stage.

The stage uses an engine that answers, or starts Debian's ``dockerd`` for the session when it
can (root), and stops it afterwards. Every image the lab's files name but do not build (the
Python base, Prometheus, Alertmanager, the blackbox exporter) is used as it is when present,
pulled when a registry answers, and otherwise built as a *stand-in* from Debian's packages of
the same version: Python from bookworm, the monitoring programs from the sid packages that
``make system-deps`` fetched (bookworm's own are releases out of support).
Grafana and cAdvisor have no Debian package, so the stage never starts them.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.paths import DOCKERFILE, ROOT
from tests.support.waiting import wait_for

COMPOSE_FILE = ROOT / "docker-compose.yml"
STANDINS = Path(__file__).parent / "standins"
# Marks an image as a stand-in; its value says what it was built from.
STANDIN_LABEL = "org.hvs-lab.stand-in"
# The base every stand-in is built on: `debootstrap --variant=minbase bookworm`, imported.
MINBASE = "hvs-lab-standin/debian:bookworm-minbase"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Services of docker-compose.yml whose images have no stand-in here.
NOT_STARTED = ("grafana", "cadvisor")
# A stand-in recipe per image repository, and the command that prints its version.
RECIPES = {
    "python": ("python.Dockerfile", ["python", "--version"]),
    "prom/prometheus": ("prometheus.Dockerfile", ["--version"]),
    "prom/alertmanager": ("alertmanager.Dockerfile", ["--version"]),
    "prom/blackbox-exporter": ("blackbox-exporter.Dockerfile", ["--version"]),
}
# Where tests/system-deps.sh keeps the sid .deb files it installed, and which of them each
# monitoring stand-in unpacks (the Python stand-in takes bookworm's packages with apt).
DEB_CACHE = Path(os.environ.get("DEB_CACHE", "/var/cache/hvs-lab/debs"))
DEBS = {
    "prom/prometheus": ("prometheus", "promtool"),
    "prom/alertmanager": ("prometheus-alertmanager",),
    "prom/blackbox-exporter": ("prometheus-blackbox-exporter",),
}


class EngineUnavailable(Exception):
    """No engine can be had here; the message says why and how to get one."""


def docker(*args: str, timeout: float = 600, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run the docker CLI; on failure, raise with its output so that the test report shows it."""
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise RuntimeError(
            f"docker {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result


def _answers() -> bool:
    try:
        return docker("info", timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


class Engine:
    """A reachable Docker engine for the session, started here (and stopped again) when needed."""

    HOW = "run `make system-deps` as root on Debian, or start Docker (Desktop, docker-ce) yourself"

    def __init__(self, log_path: Path):
        self.log_path = log_path
        self.started: subprocess.Popen | None = None

    def __enter__(self) -> "Engine":
        if shutil.which("docker") is None:
            raise EngineUnavailable(f"no docker CLI: {self.HOW}")
        if not _answers():
            self._start_dockerd()
        if docker("compose", "version", check=False).returncode != 0:
            raise EngineUnavailable(f"the engine answers but `docker compose` (v2) is missing: {self.HOW}")
        return self

    def _start_dockerd(self) -> None:
        if shutil.which("dockerd") is None or os.geteuid() != 0:
            raise EngineUnavailable(
                f"no engine answers and none can be started here (not root, or no dockerd): {self.HOW}"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.started = subprocess.Popen(["dockerd"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: self.started.poll() is not None or _answers(), 60, "dockerd to answer")
        except TimeoutError:
            pass
        if not _answers():
            self.__exit__()
            # Not a reason to skip: here an engine can be had, so the stage must run.
            raise RuntimeError(f"dockerd did not start (log: {self.log_path}): {self.log_tail()}")

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-1500:] if self.log_path.exists() else ""

    def __exit__(self, *exc) -> None:
        if self.started and self.started.poll() is None:
            self.started.send_signal(signal.SIGTERM)
            try:
                self.started.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.started.kill()
                self.started.wait()


def base_images() -> list[str]:
    """The images the lab's files name and do not build, without those of NOT_STARTED."""
    [python] = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    others = [s["image"] for name, s in services.items() if "build" not in s and name not in NOT_STARTED]
    return [python, *sorted(set(others))]


@dataclass(frozen=True)
class ImageOrigin:
    tag: str
    origin: str  # "present", "pulled" or "stand-in"
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.tag}: {self.origin}" + (f" ({self.detail})" if self.detail else "")


def standin_label(tag: str) -> str | None:
    result = docker("image", "inspect", "--format", f'{{{{index .Config.Labels "{STANDIN_LABEL}"}}}}', tag, check=False)
    if result.returncode != 0:
        return None
    return result.stdout.strip()


def ensure_image(tag: str, cache: Path) -> ImageOrigin:
    """Make ``tag`` available: as it is, pulled, or built as a stand-in (in that order)."""
    label = standin_label(tag)
    if label == "":
        return ImageOrigin(tag, "present")
    if label is None:
        if docker("pull", "--quiet", tag, check=False, timeout=600).returncode == 0:
            return ImageOrigin(tag, "pulled")
        build_standin(tag, cache)
    return ImageOrigin(tag, "stand-in", f"{standin_label(tag)}, version {standin_version(tag)}")


def standin_version(tag: str) -> str:
    """The version a stand-in's program prints of itself."""
    _, version_command = RECIPES[tag.rpartition(":")[0]]
    result = docker("run", "--rm", tag, *version_command)
    return re.search(r"(\d+\.\d+\.\d+)", result.stdout + result.stderr).group(1)


def build_standin(tag: str, cache: Path) -> None:
    """Build ``tag`` from its recipe in standins/ and check that it has the tag's version."""
    repository, _, version = tag.rpartition(":")
    recipe, _ = RECIPES[repository]
    wanted = re.match(r"v?(\d+\.\d+(?:\.\d+)?)", version).group(1)
    ensure_minbase(cache)
    with tempfile.TemporaryDirectory() as context:
        shutil.copy(STANDINS / recipe, Path(context) / "Dockerfile")
        # The recipe copies this machine's CA bundle in, after apt (see python.Dockerfile).
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", context)
        origin = "Debian bookworm's packages"
        if repository in DEBS:
            (Path(context) / "debs").mkdir()
            for deb in debs_of(repository, wanted):
                shutil.copy(deb, Path(context) / "debs")
            origin = "Debian sid's packages"
        docker(
            "build", "--quiet", "--build-arg", f"BASE={MINBASE}",
            "--label", f"{STANDIN_LABEL}=built from {origin}", "--tag", tag, context,
            timeout=900,
        )  # fmt: skip
    # Debian's Python 3.11 stands in for any 3.11 release; the others must match exactly.
    wanted = ".".join(wanted.split(".")[:2]) if repository == "python" else wanted
    found = standin_version(tag)
    if not (found == wanted or found.startswith(wanted + ".")):
        docker("image", "rm", tag, check=False)
        raise RuntimeError(f"Debian's package for the {tag} stand-in has version {found}, not {wanted}")


def debs_of(repository: str, version: str) -> list[Path]:
    """The cached .deb files of a monitoring stand-in, of the upstream ``version`` its tag names."""
    found = []
    for package in DEBS[repository]:
        # Debian versions read 3.5.3+ds1-6 or 0.33.1-5: the upstream release, then + or -.
        matches = [
            p
            for p in DEB_CACHE.glob(f"{package}_{version}*.deb")
            if re.match(r"[+-]", p.name[len(package) + len(version) + 1 :])
        ]
        if len(matches) != 1:
            wanted = f"{package} {version}"
            raise RuntimeError(f"no .deb of {wanted} in {DEB_CACHE} for {repository}: run `make system-deps` as root")
        found += matches
    return found


def ensure_minbase(cache: Path) -> None:
    """Import a minimal Debian bookworm root filesystem as MINBASE, once."""
    if docker("image", "inspect", MINBASE, check=False).returncode == 0:
        return
    if shutil.which("debootstrap") is None:
        raise RuntimeError("no registry answers and debootstrap is missing: run `make system-deps` as root")
    rootfs = cache / "bookworm-minbase"
    shutil.rmtree(rootfs, ignore_errors=True)
    started = time.monotonic()
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), DEBIAN_MIRROR],
        check=True,
        capture_output=True,
    )
    with subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE) as tar:
        docker("import", "-", MINBASE, stdin=tar.stdout)
    shutil.rmtree(rootfs)
    print(f"stand-in base {MINBASE} built in {time.monotonic() - started:.0f} s")
