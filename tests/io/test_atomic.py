"""Atomic writes: all or nothing, the umask's permissions, and the temporaries of killed processes removed."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from lemevit.io import atomic_folder, atomic_path, remove_stale_temporaries
from lemevit.io.atomic import _prefix


def test_a_failed_write_keeps_the_previous_content_and_leaves_nothing_behind(tmp_path):
    path = tmp_path / "out" / "metrics.json"
    with atomic_path(path) as tmp:
        tmp.write_text("first")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert path.read_text() == "first" and [p.name for p in path.parent.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_results_get_the_permissions_the_umask_gives(tmp_path, umask):
    previous = os.umask(umask)
    try:
        with atomic_path(tmp_path / "x.csv") as tmp:
            tmp.write_text("a")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "x.csv").stat().st_mode) == 0o666 & ~umask


def test_temporaries_of_dead_processes_are_removed_and_those_of_live_ones_kept(tmp_path):
    target = tmp_path / "best.ckpt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"{_prefix(target)}{dead.pid}.abc123.ckpt"
    live = tmp_path / f"{_prefix(target)}{os.getpid()}.def456.ckpt"
    other = tmp_path / f"{_prefix(tmp_path / 'last.ckpt')}{dead.pid}.ghi789.ckpt"
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    assert remove_stale_temporaries(target) == [stale]
    assert live.exists() and other.exists()
    with atomic_path(tmp_path / "last.ckpt") as tmp:  # a write into a place clears that place's leftovers
        tmp.write_bytes(b"whole")
    assert not other.exists() and live.exists()


def test_a_folder_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "oscd"
    with atomic_folder(path) as tmp:
        (tmp / "A").mkdir()
        (tmp / "A" / "city.tif").write_text("first")
    with pytest.raises(RuntimeError), atomic_folder(path) as tmp:
        (tmp / "A").mkdir()
        (tmp / "A" / "city.tif").write_text("half")
        raise RuntimeError("killed")
    assert (path / "A" / "city.tif").read_text() == "first" and [p.name for p in tmp_path.iterdir()] == ["oscd"]
    # The folder a killed process was filling is removed by the next fill; a live process's is kept.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale, live = (tmp_path / f"{_prefix(path)}{pid}.x.partial" for pid in (dead.pid, os.getpid()))
    for folder in (stale, live):
        (folder / "A").mkdir(parents=True)
    with atomic_folder(path) as tmp:
        (tmp / "B").mkdir()
    assert [p.name for p in path.iterdir()] == ["B"] and not stale.exists() and live.exists()
