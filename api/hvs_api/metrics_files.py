"""Keeping gunicorn's multiprocess metrics directory small without losing a count.

prometheus_client gives every worker its own files (``counter_<pid>.db``, ...) and adds them
all up at each scrape. A dead worker's counter and histogram files must stay, or its counts
would vanish, so a server that replaces workers (crashes, ``max_requests``, restarts) piles up
files and every scrape reads more of them: a prototype's scrape grew from 2 ms to 10 ms after
100 restarts.

So when a worker exits, the master folds its counter, histogram and max-gauge values into one
archive file per kind (``counter_archive.db``, ...) and deletes its files. A scrape and a fold
exclude each other through a lock file, so a scrape sees the dead worker's values either in
its own file or in the archive, never in both and never in neither: counts stay exact and
never go down. Live-gauge files are simply deleted, as prometheus_client's
``mark_process_dead`` does. Other gauge modes are left alone (the API uses none).
"""

import fcntl
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import mark_process_dead

ARCHIVE = "archive"
LOCK_FILE = "compaction.lock"  # Not *.db: the collector ignores it.
# prometheus_client's files start with 4 bytes of used length and 4 of padding.
_HEADER_BYTES = 8

# File kind -> how two processes' values of one series combine.
FOLDABLE: dict[str, Callable[[float, float], float]] = {
    "counter": lambda a, b: a + b,
    "histogram": lambda a, b: a + b,
    # Max gauges are the info metrics (value 1); an absent key reads as 0, the identity here.
    "gauge_max": max,
}


@contextmanager
def locked(directory: str | Path, exclusive: bool) -> Iterator[None]:
    """Hold the directory's compaction lock: shared for a scrape, exclusive for a fold."""
    with open(Path(directory) / LOCK_FILE, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fold_dead_worker(directory: str | Path, pid: int) -> int:
    """Move an exited worker's values into the archive files; return how many files went."""
    directory = Path(directory)
    removed = 0
    with locked(directory, exclusive=True):
        mark_process_dead(pid, str(directory))
        for kind, combine in FOLDABLE.items():
            dead = directory / f"{kind}_{pid}.db"
            if not dead.exists():
                continue
            if dead.stat().st_size < _HEADER_BYTES:
                # The worker died while creating the file (a worker killed as it starts):
                # nothing was recorded in it, and reading it would raise.
                dead.unlink()
                removed += 1
                continue
            archive = MmapedDict(str(directory / f"{kind}_{ARCHIVE}.db"))
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(str(dead)):
                    current, _ = archive.read_value(key)
                    archive.write_value(key, combine(current, value), timestamp)
            finally:
                archive.close()
            dead.unlink()
            removed += 1
    return removed


def live_gauge_value(directory: str | Path, pid: int, name: str) -> float:
    """The last value a worker wrote for a "livesum" gauge (0 when it wrote none).

    Read before ``fold_dead_worker`` deletes the worker's live-gauge file: for
    hvs_api_requests_in_progress, the requests the worker was serving when it died.
    """
    path = Path(directory) / f"gauge_livesum_{pid}.db"
    if not path.exists() or path.stat().st_size < _HEADER_BYTES:
        return 0.0
    total = 0.0
    for key, value, _timestamp, _ in MmapedDict.read_all_values_from_file(str(path)):
        if json.loads(key)[1] == name:
            total += value
    return total
