"""An exclusive lock on a folder that one process writes into (a run directory)."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from lemevit.errors import RunError

__all__ = ["FolderLock"]

LOCK_NAME = ".lemevit.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """Held while a process writes into ``folder``: a file created exclusively, naming the host and process.

    A second process asking for it gets a :class:`~lemevit.errors.RunError` naming the holder. The lock of a
    process that died without releasing it (SIGKILL, a crash) is taken over when that process ran on this host;
    a lock from another host is never taken over (remove the file when that run is known to be gone).
    """

    def __init__(self, folder: str | Path, what: str = "folder"):
        self.folder, self.what = Path(folder), what
        self.path = self.folder / LOCK_NAME
        self._held = False

    def _holder(self) -> tuple[str, int] | None:
        try:
            host, pid = self.path.read_text().split()
            return host, int(pid)
        except (OSError, ValueError):
            return None

    def acquire(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        me = f"{socket.gethostname()} {os.getpid()}"
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and holder[0] == socket.gethostname() and not _alive(holder[1]):
                    self.path.unlink(missing_ok=True)  # a dead process's lock
                    continue
                if holder is None:
                    continue  # being written right now, or emptied: look again
                raise RunError(f"{self.folder} is in use by process {holder[1]} on {holder[0]} (another run writing "
                               f"there); wait for it to end or choose another {self.what}") from None
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self._held = True
            return
        raise RunError(f"cannot lock {self.folder}: {self.path} keeps changing; is another run starting there?")

    def release(self) -> None:
        if self._held and self._holder() == (socket.gethostname(), os.getpid()):
            self.path.unlink(missing_ok=True)
        self._held = False

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
