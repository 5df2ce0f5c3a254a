"""The workers' metric values (hvs_api.metric_values): each process still writes only its own files."""

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.mmap_dict import MmapedDict

# Run in a process of its own: prometheus_client chooses its value class at import, from the
# environment, and a test process has long imported it in single-process mode.
SCRIPT = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()
    import os, sys
    from hvs_api import metric_values

    assert metric_values.install()
    assert not metric_values.install()  # gunicorn's SIGHUP reads the configuration again
    from prometheus_client import Counter

    requests = Counter("hvs_demo_requests", "demo", registry=None)
    requests.inc(3)
    child = os.fork()
    if child == 0:
        requests.inc(4)  # the child's own file, from 0
        os._exit(0)
    os.waitpid(child, 0)
    requests.inc(1)
    print(os.getpid(), child)
    """
)


def _counts(directory) -> dict[str, float]:
    found = {}
    for path in directory.glob("counter_*.db"):
        for _, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            found[path.name] = found.get(path.name, 0.0) + value
    return found


def test_a_forked_child_writes_its_own_file_and_the_parent_keeps_its_count(tmp_path):
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    parent, child = result.stdout.split()
    assert _counts(tmp_path) == {f"counter_{parent}.db": 4.0, f"counter_{child}.db": 4.0}


def test_nothing_changes_outside_multiprocess_mode():
    from hvs_api import metric_values

    assert metric_values.install() is False


# A metric's identity as prometheus_client gives it to a value: type, gauge mode, sample name, labels.
_SERIES = [
    ("counter", "", "hvs_demo_total", ("label",), ("a",)),
    ("counter", "", "hvs_demo_total", ("label",), ("b",)),
    ("gauge", "livesum", "hvs_demo_in_progress", (), ()),
    ("gauge", "max", "hvs_demo_version", (), ()),
    ("histogram", "", "hvs_demo_seconds_bucket", ("le",), ("0.5",)),
    ("histogram", "", "hvs_demo_seconds_sum", (), ()),
]
_WRITES = st.lists(
    st.tuples(
        st.integers(0, len(_SERIES) - 1),
        st.sampled_from(["inc", "set"]),
        st.floats(-1e6, 1e6, allow_nan=False),
        st.one_of(st.none(), st.floats(1.0, 2e9)),
    ),
    max_size=30,
)


def _written(value_class, directory: str, writes, env: pytest.MonkeyPatch) -> tuple[dict, list]:
    """Every file's (key, value, timestamp) after ``writes``, and each value's get()."""
    env.setenv("PROMETHEUS_MULTIPROC_DIR", directory)
    made = {}
    for index, operation, amount, timestamp in writes:
        typ, mode, name, labelnames, labelvalues = _SERIES[index]
        if index not in made:
            made[index] = value_class(typ, name.rsplit("_", 1)[0], name, labelnames, labelvalues, "help", mode)
        if operation == "inc":
            made[index].inc(amount)
        else:
            made[index].set(amount, timestamp)
    got = [made[index].get() for index in sorted(made)]
    for value in made.values():
        value._file.close()  # the maps, before the directory goes (both classes keep them there)
    files = {
        path.name: [tuple(entry[:3]) for entry in MmapedDict.read_all_values_from_file(str(path))]
        for path in sorted(Path(directory).glob("*.db"))
    }
    return files, got


@settings(max_examples=60, deadline=None)
@given(writes=_WRITES)
def test_worker_values_write_the_files_prometheus_clients_own_value_writes(writes):
    from prometheus_client import values

    from hvs_api import metric_values

    with pytest.MonkeyPatch.context() as env, tempfile.TemporaryDirectory() as theirs:
        with tempfile.TemporaryDirectory() as ours:
            expected = _written(values.MultiProcessValue(), theirs, writes, env)
            assert _written(metric_values.worker_value_class(), ours, writes, env) == expected
