"""How a gunicorn worker writes its metric values: into prometheus_client's multiprocess files,
as prometheus_client's own multiprocess value does, in about half the time per write.

Under gunicorn every metric write goes through a multiprocess value: it takes the process's one
lock, makes sure the process has not forked (a fork must start its own files) and writes two
doubles into a memory-mapped file. A one-record prediction makes about twenty writes, and
prometheus_client's value (``values.MultiProcessValue``) spends most of each one around the
write rather than in it: ``os.getpid()``, a system call of about 0.6 µs; gevent's greenlet lock,
which its patch puts in place of the thread lock (0.8 µs to take and give back, against 0.2);
and four nested Python calls (0.5 µs more).

So the workers' value class is this module's ``WorkerValue``, which keeps the files, keys and
layout of prometheus_client's (``{type}_{pid}.db``, ``{type}_{mode}_{pid}.db`` for gauges,
``mmap_dict.MmapedDict`` and ``mmap_key``): its collector, the dead worker's fold
(hvs_api.metrics_files) and ``mark_process_dead`` read them as they read prometheus_client's.
A test holds the files it writes to those of prometheus_client's value for the same writes.

- The process id is read once, and again in the child of every fork (``os.register_at_fork``);
  the first write after a fork opens the child's own files from 0, as prometheus_client's does
  when ``os.getpid`` changes.
- Its lock is a thread lock, as prometheus_client's would be without gevent. No greenlet can
  wait on it: nothing inside it yields (a dict lookup and a memory copy; a file opened, which
  gevent does not make cooperative either). A real thread, if one ever wrote a metric, is kept
  out by it, which a greenlet lock would not do.
- A write packs the two doubles (value, timestamp 0) straight into the map at the key's place,
  which ``MmapedDict`` fixes when the key is first written and keeps when the file grows (it
  maps the grown file again, so the map is read from the file object on every write).

``install()`` must run before the process creates its first metric: two value classes in one
process would keep two maps of the same file. gunicorn.conf.py calls it right after it sets the
metrics directory.
"""

import _thread
import os
import struct

from prometheus_client.mmap_dict import MmapedDict, mmap_key

_pid = [os.getpid()]
_installed = [False]
_pack = struct.Struct("dd").pack


def _remember_pid() -> None:
    _pid[0] = os.getpid()


os.register_at_fork(after_in_child=_remember_pid)


def worker_value_class():
    """A new value class with its own files, values and lock (prometheus_client's
    ``MultiProcessValue`` builds one per call, too)."""
    files: dict[str, MmapedDict] = {}
    made: list = []
    lock = _thread.allocate_lock()
    opened_by = [_pid[0]]

    def follow_fork() -> None:
        """In a forked child, before its first write: its own files, every value from there."""
        for file in files.values():
            file.close()
        files.clear()
        opened_by[0] = _pid[0]
        for value in made:
            value._open()

    class WorkerValue:
        """A float behind the process's lock, kept in this process's memory-mapped file."""

        _multiprocess = True
        __slots__ = ("_params", "_file", "_position", "_value")

        def __init__(self, typ, metric_name, name, labelnames, labelvalues, help_text, multiprocess_mode="", **kwargs):
            self._params = typ, metric_name, name, labelnames, labelvalues, help_text, multiprocess_mode
            with lock:
                if opened_by[0] != _pid[0]:
                    follow_fork()
                self._open()
                made.append(self)

        def _open(self) -> None:
            typ, metric_name, name, labelnames, labelvalues, help_text, multiprocess_mode = self._params
            prefix = f"{typ}_{multiprocess_mode}" if typ == "gauge" else typ
            file = files.get(prefix)
            if file is None:
                path = os.path.join(os.environ["PROMETHEUS_MULTIPROC_DIR"], f"{prefix}_{opened_by[0]}.db")
                file = files[prefix] = MmapedDict(path)
            key = mmap_key(metric_name, name, labelnames, labelvalues, help_text)
            # read_value adds the key to the file (at 0) when it is new; its place never moves.
            self._value = file.read_value(key)[0]
            self._file, self._position = file, file._positions[key]

        # inc and set each write the map themselves, without a shared helper: a Python call
        # more on every write is what this class exists to save.
        def inc(self, amount) -> None:
            with lock:
                if opened_by[0] != _pid[0]:
                    follow_fork()
                self._value += amount
                position = self._position
                self._file._m[position : position + 16] = _pack(self._value, 0.0)

        def set(self, value, timestamp=None) -> None:
            with lock:
                if opened_by[0] != _pid[0]:
                    follow_fork()
                self._value = value
                position = self._position
                self._file._m[position : position + 16] = _pack(value, timestamp or 0.0)

        def set_exemplar(self, exemplar) -> None:
            """Exemplars are not kept in multiprocess mode (nor by prometheus_client's value)."""

        def get(self):
            with lock:
                if opened_by[0] != _pid[0]:
                    follow_fork()
                return self._value

        def get_exemplar(self):
            return None

    return WorkerValue


def install() -> bool:
    """Make the metrics created from now on write through ``WorkerValue``; False when
    prometheus_client is not in multiprocess mode (nothing to do) or it was done already (gunicorn
    reads its configuration again on SIGHUP, in the same process)."""
    from prometheus_client import values

    if _installed[0] or not getattr(values.ValueClass, "_multiprocess", False):
        return False
    values.ValueClass = worker_value_class()
    _installed[0] = True
    return True
