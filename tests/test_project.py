"""Static checks of the files a newcomer and the image depend on, since no Docker engine runs here."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support.dockerfile import dockerfile_instructions, final_stage, image_cmd, image_env
from tests.support.paths import DOCKERFILE, ROOT

VENV_BIN = Path(sys.executable).parent


def requirement_pins(path: Path) -> dict[str, str]:
    """``name -> version`` of the exact pins in a requirements file, following ``-r`` includes."""
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            pins.update(requirement_pins(path.parent / line[3:].strip()))
        elif line:
            name, _, version = line.partition("==")
            assert version, f"{path.name}: {line!r} is not pinned exactly"
            pins[name.lower()] = version
    return pins


def test_every_copy_source_exists():
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY" and "--from=" not in rest:
            *sources, _destination = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY source {source} is missing"


def test_image_installs_the_runtime_pins_the_tests_install():
    dockerfile = DOCKERFILE.read_text()
    assert "-r api/requirements.txt" in dockerfile
    runtime = requirement_pins(ROOT / "api" / "requirements.txt")
    dev = requirement_pins(ROOT / "requirements-dev.txt")
    assert runtime.items() <= dev.items()
    for name in ("flask", "gunicorn", "prometheus-flask-exporter", "prometheus-client", "mlflow-skinny"):
        assert name in runtime


def test_base_image_is_pinned():
    [base] = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base


def test_image_runs_as_non_root_with_a_healthcheck_and_the_serving_environment():
    final = dict(dockerfile_instructions())  # The last occurrence of each instruction wins.
    assert final["USER"] not in ("root", "0")
    assert "/ready" in final["HEALTHCHECK"]
    env = image_env()
    assert env["OMP_NUM_THREADS"] == env["INFERENCE_THREADS"] == "1"
    assert env["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
    assert env["MLRUNS_DIR"] == "/app/mlruns" and env["PORT"] == "5001"
    assert image_cmd() == ["gunicorn", "--config", "gunicorn.conf.py"]
    # The default build bakes in a champion, trained from the package's own generator.
    assert ("RUN", "python -m hvs_model.train") in final_stage()
    assert (ROOT / "api" / "gunicorn.conf.py").exists()


def test_each_image_gets_only_the_environment_its_process_reads():
    # The MLflow UI creates prometheus_client metrics at import: with the API's
    # PROMETHEUS_MULTIPROC_DIR it went into multiprocess mode on a missing folder and crashed.
    server_only = {"PROMETHEUS_MULTIPROC_DIR", "MLRUNS_DIR", "PORT", "OMP_NUM_THREADS", "INFERENCE_THREADS"}
    assert server_only <= image_env(target="server").keys()
    for target in ("mlflow-ui", "loadtest"):
        assert not server_only & image_env(target=target).keys(), target


def test_the_dockerfile_builds_without_a_registry():
    # A `# syntax=` line makes BuildKit pull its frontend image before it reads the file.
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE.read_text(), re.IGNORECASE | re.MULTILINE)


def test_hadolint_is_clean():
    result = subprocess.run([VENV_BIN / "hadolint", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_scripts_and_configs_keep_lf_line_endings():
    attributes = (ROOT / ".gitattributes").read_text()
    assert re.search(r"^\* text=auto eol=lf$", attributes, re.MULTILINE)
    tracked = subprocess.run(["git", "ls-files", "--eol"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "w/crlf" not in tracked


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


def test_every_make_target_has_help():
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][a-z-]*):", makefile, re.MULTILINE))
    documented = set(re.findall(r"^\.PHONY: ([a-z-]+) +## ", makefile, re.MULTILINE))
    assert targets == documented


def test_the_documented_feature_table_matches_the_features():
    from hvs_model.features import FEATURES

    page = (ROOT / "docs" / "model-and-inference.md").read_text()
    rows = [line for line in page.splitlines() if line.startswith("| `")]
    expected = [f"| `{f.name}` | {f.unit} | {f.description} | {f.minimum:g} to {f.maximum:g} |" for f in FEATURES]
    assert rows[: len(expected)] == expected, "docs/model-and-inference.md's feature table is out of date"


def test_checkov_passes_the_dockerfile():
    checkov = os.environ.get("CHECKOV", str(ROOT / ".venv-checkov" / "bin" / "checkov"))
    assert Path(checkov).exists(), f"{checkov} is missing: `make test` installs checkov in .venv-checkov"
    result = subprocess.run(
        [checkov, "-f", str(DOCKERFILE), "--framework", "dockerfile", "--output", "json", "--skip-download"],
        capture_output=True,
        text=True,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(result.stdout)
    assert report["results"]["failed_checks"] == [], [c["check_id"] for c in report["results"]["failed_checks"]]
    assert report["summary"]["passed"] > 50


def test_the_mlflow_ui_stage_serves_the_lab_store_lightly():
    stages = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.MULTILINE)
    [ui] = [s for s in stages if s.startswith("base AS mlflow-ui")]
    assert "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false" in ui
    cmd = json.loads(re.search(r"^CMD (.+)$", ui, re.MULTILINE).group(1))
    assert cmd[:2] == ["mlflow", "ui"] and cmd[cmd.index("--workers") + 1] == "1"
    assert cmd[cmd.index("--backend-store-uri") + 1] == "sqlite:////app/mlruns/mlflow.db"
