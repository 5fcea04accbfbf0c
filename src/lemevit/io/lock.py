"""Exclusive locks of what one process writes: a folder (a run directory), or one output file (a map that
concurrent predicts share out)."""
from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from lemevit.errors import RunError

__all__ = ["FileLock", "FolderLock", "OutputLock"]

LOCK_NAME = ".lemevit.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FileLock:
    """Held while a process writes what the lock file ``path`` guards: the file created exclusively, naming the host
    and process.

    The lock of a process that died without releasing it (SIGKILL, a crash) is taken over when that process ran on
    this host; a lock from another host is never taken over (remove the file when that process is known to be gone).
    """

    #: A holder that could not be read: the lock file is being written, or keeps changing.
    UNKNOWN = ("an unknown host", 0)

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._held = False

    def _holder(self) -> tuple[str, int] | None:
        try:
            host, pid = self.path.read_text().split()
            return host, int(pid)
        except (OSError, ValueError):
            return None

    def try_acquire(self) -> tuple[str, int] | None:
        """Take the lock; returns None when taken, else its holder ``(host, pid)`` (:attr:`UNKNOWN` when the lock
        file kept changing while it was read)."""
        me = f"{socket.gethostname()} {os.getpid()}"
        for attempt in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and holder[0] == socket.gethostname() and not _alive(holder[1]):
                    self.path.unlink(missing_ok=True)  # a dead process's lock
                    continue
                if holder is None:
                    time.sleep(0.05 * (attempt + 1))  # being written right now, or emptied: look again
                    continue
                return holder
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self._held = True
            return None
        return self.UNKNOWN

    def release(self) -> None:
        if self._held and self._holder() == (socket.gethostname(), os.getpid()):
            self.path.unlink(missing_ok=True)
        self._held = False


class FolderLock(FileLock):
    """The lock of a folder one process writes into (a run directory): a second process asking for it gets a
    :class:`~lemevit.errors.RunError` naming the holder."""

    def __init__(self, folder: str | Path, what: str = "folder"):
        self.folder, self.what = Path(folder), what
        super().__init__(self.folder / LOCK_NAME)

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        holder = self.try_acquire()
        if holder == self.UNKNOWN:
            raise RunError(f"cannot lock {self.folder}: {self.path} keeps changing; is another run starting there?")
        if holder is not None:
            raise RunError(f"{self.folder} is in use by process {holder[1]} on {holder[0]} (another run writing "
                           f"there); wait for it to end or choose another {self.what}")

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class OutputLock(FileLock):
    """The lock of one output file while a process writes it (``.<name>.lock`` beside it), so that processes
    writing into one folder share its files out instead of each writing all of them."""

    def __init__(self, output: str | Path):
        output = Path(output)
        super().__init__(output.parent / f".{output.name}.lock")
