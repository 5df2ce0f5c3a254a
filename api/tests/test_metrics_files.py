"""Folding a dead worker's metric files into the archive (hvs_api.metrics_files)."""

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from hvs_api.metrics_files import ARCHIVE, fold_dead_worker


def write_counter(path, value: float) -> None:
    values = MmapedDict(str(path))
    try:
        values.write_value(mmap_key("hvs_demo_total", "hvs_demo_total", [], [], None), value, 0.0)
    finally:
        values.close()


def archived(directory) -> list[float]:
    return [value for _, value, *_ in MmapedDict.read_all_values_from_file(str(directory / f"counter_{ARCHIVE}.db"))]


def test_a_dead_workers_counts_move_to_the_archive_and_add_up(tmp_path):
    write_counter(tmp_path / "counter_101.db", 3)
    write_counter(tmp_path / "counter_102.db", 4)
    assert fold_dead_worker(tmp_path, 101) == 1
    assert fold_dead_worker(tmp_path, 102) == 1
    assert archived(tmp_path) == [7.0]
    assert sorted(p.name for p in tmp_path.glob("*.db")) == [f"counter_{ARCHIVE}.db"]


def test_a_file_the_worker_died_creating_is_dropped_without_error(tmp_path):
    """A worker killed as it starts can leave an empty file; the master's fold must not fail on it."""
    write_counter(tmp_path / "counter_101.db", 3)
    fold_dead_worker(tmp_path, 101)
    (tmp_path / "counter_102.db").touch()
    assert fold_dead_worker(tmp_path, 102) == 1
    assert archived(tmp_path) == [3.0]
    assert not (tmp_path / "counter_102.db").exists()
