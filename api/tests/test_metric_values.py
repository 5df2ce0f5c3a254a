"""The workers' metric values (hvs_api.metric_values): each process still writes only its own files."""

import os
import subprocess
import sys
import textwrap

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
