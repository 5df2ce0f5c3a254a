"""The API image on its own: the default build with its built-in model, the user's original
`docker run -e BEST_MLFLOW_RUN_ID -v ${PWD}/mlruns:/app/mlruns`, the image run as the
Kubernetes Deployment runs it, and the modules the Compose services run found in their images."""

import json
import shutil
import subprocess
import uuid

import pytest
import yaml

from tests.container.compose import ComposeLab, failure
from tests.container.engine import docker
from tests.kube import cpus
from tests.support.environment import run_id_of
from tests.support.paths import DOCKERFILE, HAZARDOUS, NORMAL, ROOT
from tests.support.waiting import wait_for
from tests.support.web import answers_200, free_port, http

IMAGE = "hvs-prediction-api:test"
DEPLOYMENT = ROOT / "k8s" / "base" / "hvs-api-deployment.yaml"


@pytest.fixture(scope="module")
def image(images):
    """The default build (`docker build -f api/Dockerfile .`): the server with a built-in champion."""
    result = subprocess.run(
        ["docker", "build", "--file", str(DOCKERFILE), "--tag", IMAGE, "."],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, failure(result, "docker build -f api/Dockerfile .")
    return IMAGE


@pytest.fixture
def run_container():
    """Start containers of the image; every one started is removed afterwards."""
    started: list[str] = []

    def run(*options: str, command: tuple[str, ...] = ()) -> str:
        name = f"hvs-test-{uuid.uuid4().hex[:10]}"
        started.append(name)
        docker("run", "--detach", "--name", name, *options, IMAGE, *command)
        return name

    yield run
    for name in started:
        docker("rm", "--force", "--volumes", name, check=False)


def serve_and_predict(name: str, port: int) -> dict:
    """Wait for the container's API to be ready, predict both payloads; return /ready's model."""
    url = f"http://127.0.0.1:{port}"

    def ready():
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        assert state["Running"], (
            f"{name} exited {state['ExitCode']}:\n{docker('logs', name, check=False).stderr[-3000:]}"
        )
        return answers_200(url + "/ready")

    wait_for(ready, 90, f"{name} to be ready", interval=1)
    for payload, label in ((NORMAL, "Normal"), (HAZARDOUS, "Hazardous")):
        status, body = http("POST", url + "/predict", payload)
        assert status == 200 and json.loads(body)["prediction"]["label"] == label, body
    return json.loads(http("GET", url + "/ready")[1])["model"]


def test_the_default_image_serves_its_built_in_model(image, run_container):
    port = free_port()
    name = run_container("--publish", f"127.0.0.1:{port}:5001")
    model = serve_and_predict(name, port)
    assert model["version"] == "1" and model["uri"].endswith("@champion"), model


def test_the_designs_docker_run_serves_a_run_id_from_a_host_trained_store(
    image, run_container, trained_mlruns, tmp_path
):
    # A copy, as the user's own ./mlruns, trained on the host by `make train`'s command.
    mlruns = tmp_path / "mlruns"
    shutil.copytree(trained_mlruns, mlruns)
    run_id = run_id_of(mlruns, "random_forest")
    port = free_port()
    name = run_container(
        "--publish", f"127.0.0.1:{port}:5001", "--env", f"BEST_MLFLOW_RUN_ID={run_id}",
        "--volume", f"{mlruns}:/app/mlruns",
    )  # fmt: skip
    model = serve_and_predict(name, port)
    assert model["run_id"] == run_id and model["uri"] == f"runs:/{run_id}/model", model


def docker_size(quantity: str) -> str:
    """A Kubernetes memory quantity (``512Mi``, ``1Gi``) as Docker writes it."""
    return quantity.replace("Mi", "m").replace("Gi", "g")


def pod_security(container: dict, pod: dict) -> list[str]:
    """The user, security context and limits of one of the pod's containers, as `docker run` options."""
    security, context = pod["securityContext"], container["securityContext"]
    options = ["--user", f"{security['runAsUser']}:{security['runAsGroup']}", "--group-add", str(security["fsGroup"])]
    if context["readOnlyRootFilesystem"]:
        options.append("--read-only")
    if context["allowPrivilegeEscalation"] is False:
        options += ["--security-opt", "no-new-privileges"]
    options += [f"--cap-drop={cap}" for cap in context["capabilities"]["drop"]]
    limits = container["resources"]["limits"]
    return [*options, "--cpus", str(cpus(limits["cpu"])), "--memory", docker_size(limits["memory"])]


def pod_mounts(container: dict, volumes: dict[str, str | None], sizes: dict[str, str]) -> list[str]:
    """The container's volumeMounts as `docker run` options: a disk emptyDir is the Docker volume
    the pod's containers share, a Memory emptyDir a tmpfs of its size limit."""
    options = []
    for mount in container["volumeMounts"]:
        name, path = mount["name"], mount["mountPath"]
        if name not in volumes:
            continue  # A volume the pod runs without (an optional Secret not created).
        if volumes[name] is None:
            options += ["--tmpfs", f"{path}:size={docker_size(sizes[name])}"]
        else:
            options += ["--mount", f"type=volume,source={volumes[name]},destination={path}"]
    return options


@pytest.fixture
def pod_volumes(image):
    """The Deployment's emptyDirs: a Docker volume per disk one, None for a Memory one.

    Each is made as the kubelet makes an emptyDir for a pod with an fsGroup: owned by root,
    group fsGroup, mode 2777. The volumes are removed afterwards.
    """
    pod = yaml.safe_load(DEPLOYMENT.read_text())["spec"]["template"]["spec"]
    volumes: dict[str, str | None] = {}
    for volume in pod["volumes"]:
        if "emptyDir" not in volume:
            continue  # The optional feedback-key Secret, which the base does not create: absent.
        empty = volume["emptyDir"]
        if empty.get("medium") == "Memory":
            volumes[volume["name"]] = None
            continue
        name = f"hvs-test-{volume['name']}-{uuid.uuid4().hex[:10]}"
        docker("volume", "create", name)
        # What the kubelet does to an emptyDir (made 0777) for a pod with an fsGroup.
        group = pod["securityContext"]["fsGroup"]
        docker("run", "--rm", "--user", "0", "--volume", f"{name}:/volume", IMAGE, "sh", "-c",
               f"chgrp {group} /volume && chmod 2777 /volume")  # fmt: skip
        volumes[volume["name"]] = name
    yield pod, volumes
    for name in filter(None, volumes.values()):
        docker("volume", "rm", "--force", name, check=False)


def test_the_image_runs_as_the_kubernetes_pod_runs_it(image, run_container, pod_volumes, slow_clients_check):
    pod, volumes = pod_volumes
    sizes = {v["name"]: v["emptyDir"]["sizeLimit"] for v in pod["volumes"] if "emptyDir" in v}
    [init], [api] = pod["initContainers"], pod["containers"]
    # The init container copies the built-in store to the writable emptyDir and exits 0.
    copy = docker(
        "run", "--rm", *pod_security(init, pod), *pod_mounts(init, volumes, sizes), IMAGE, *init["command"],
        check=False,
    )  # fmt: skip
    assert copy.returncode == 0, failure(copy, f"the init container's {init['command']}")
    # Every variable as the pod sets it: WORKERS is written out beside the CPU limit (test_k8s
    # checks that they agree), so the container runs the pod's worker count.
    env = {e["name"]: e["value"] for e in api["env"]}
    [port] = [p["containerPort"] for p in api["ports"]]
    host_port = free_port()
    name = run_container(
        *pod_security(api, pod), *pod_mounts(api, volumes, sizes), "--publish", f"127.0.0.1:{host_port}:{port}",
        *(f"--env={key}={value}" for key, value in env.items()),
    )  # fmt: skip
    model = serve_and_predict(name, host_port)
    assert model["version"] == "1", model
    status = docker("exec", name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[0] == str(pod["securityContext"]["runAsUser"]), fields["Uid"]
    assert int(fields["CapEff"], 16) == 0 and fields["NoNewPrivs"].strip() == "1", fields
    write = docker("exec", name, "touch", "/app/written", check=False)
    assert write.returncode != 0 and "Read-only file system" in write.stderr, write
    # Within the pod's limits (its CPUs, memory and 64 MiB of /tmp), slow clients do not starve it.
    slow_clients_check(host_port)


@pytest.fixture(scope="module")
def compose_python_m(images) -> list[tuple[str, str, str]]:
    """``(service, image, module)`` of every Compose service that runs ``python -m``, as
    ``docker compose config`` resolves them under the test's image tag; those images built."""
    lab = ComposeLab()
    config = lab.compose("config", "--format", "json")
    assert config.returncode == 0, failure(config, "docker compose config")
    found = [
        (name, service["image"], service["command"][2])
        for name, service in json.loads(config.stdout)["services"].items()
        if (service.get("command") or [])[:2] == ["python", "-m"]
    ]
    assert found, "no Compose service runs python -m"
    # One service per image: those of one image share its build.
    builders = {image: name for name, image, _ in found}
    built = lab.compose("build", *sorted(builders.values()), timeout=1200)
    assert built.returncode == 0, failure(built, f"docker compose build {' '.join(sorted(builders.values()))}")
    return found


def test_every_python_m_module_compose_runs_is_found_in_the_image_compose_builds(compose_python_m):
    code = "import importlib.util, sys; sys.exit(importlib.util.find_spec(sys.argv[1]) is None)"
    for name, image, module in compose_python_m:
        found = docker("run", "--rm", "--entrypoint", "python", image, "-c", code, module, check=False)
        assert found.returncode == 0, failure(found, f"{name}: python finds no module {module} in {image}")
