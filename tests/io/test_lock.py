"""The run directory lock: one writer at a time, a dead writer's lock taken over."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from lemevit.errors import RunError
from lemevit.io.lock import LOCK_NAME, FolderLock


def test_a_held_lock_is_refused_naming_its_holder_and_released_on_exit(tmp_path):
    with FolderLock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).is_file()
        with pytest.raises(RunError, match=r"run is in use by process \d+ on"):
            FolderLock(tmp_path / "run").acquire()
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    with FolderLock(tmp_path / "run"):  # free again
        pass


def test_the_lock_of_a_dead_process_is_taken_over_but_not_one_from_another_host(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_NAME).write_text(f"{socket.gethostname()} {dead.pid}")
    with FolderLock(tmp_path):
        pass
    (tmp_path / LOCK_NAME).write_text(f"some-other-host {dead.pid}")
    with pytest.raises(RunError, match="some-other-host"):
        FolderLock(tmp_path).acquire()
