"""Writing files so that an interruption never leaves a half-written or corrupted result."""
from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lemevit.errors import DiskFullError, LemevitError

__all__ = ["atomic_folder", "atomic_path", "remove_stale_temporaries", "scratch_path"]

# A write that failed with less than this free on its device failed for want of space: torch.save ("basic_ios::clear",
# "unexpected pos") and GDAL ("Write failed") do not pass the system's ENOSPC on.
_FULL_BELOW = 2**20
_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40] or "host"


def _prefix(path: Path) -> str:
    return f".{path.name}.{_HOST}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporary files that :func:`atomic_path` left next to ``path`` in processes of this host that
    no longer run (killed by SIGKILL, say); returns them. Temporaries of live processes are left alone."""
    path = Path(path)
    pattern = re.compile(re.escape(_prefix(path)) + r"(\d+)\.[^.]+" + re.escape(path.suffix) + "$")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match and not _alive(int(match.group(1))):
            try:
                os.remove(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename, on error it is
    removed and ``path`` keeps its previous content. A write that fails for want of space raises
    :class:`~lemevit.errors.DiskFullError` naming ``path`` and the space there is.

    The result gets the permissions of a file created by ``open`` (0666 less the umask), not the 0600 of a
    temporary file, so that colleagues on a shared machine can read it. Temporaries that killed processes left
    at this place are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = _temporary(path)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except Exception as e:
        full = _out_of_space(e, path.parent)
        _remove(tmp)
        if full:
            raise DiskFullError(path, shutil.disk_usage(path.parent).free) from e
        raise
    finally:
        _remove(tmp)


@contextmanager
def scratch_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` for an intermediate file of its atomic write (the tiled GeoTIFF a
    Cloud-Optimized GeoTIFF is copied from), removed on leaving whatever happens. It is named as
    :func:`atomic_path`'s temporaries, so that one a killed process left is removed as theirs are."""
    tmp = _temporary(Path(path))
    try:
        yield Path(tmp)
    finally:
        _remove(tmp)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a new empty folder next to ``path`` to fill; on success it takes the place of ``path`` (a folder
    there before is removed), on error it is removed and ``path`` stays as it was. A reader therefore finds at
    ``path`` a folder that was filled to the end or none. Folders that killed processes of this host left at
    this place are removed first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(_prefix(path)) + r"(\d+)\.[^.]+\.partial$")
    for entry in os.scandir(path.parent):
        match = pattern.match(entry.name)
        if match and entry.is_dir(follow_symlinks=False) and not _alive(int(match.group(1))):
            shutil.rmtree(entry.path, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_prefix(path)}{os.getpid()}.", suffix=".partial", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            # Moved aside first: a folder cannot be renamed over a folder that is not empty.
            old = Path(tempfile.mkdtemp(prefix=f"{_prefix(path)}{os.getpid()}.", suffix=".partial", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except Exception as e:
        if _out_of_space(e, path.parent):
            raise DiskFullError(path, shutil.disk_usage(path.parent).free) from e
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove(tmp: str) -> None:
    if os.path.exists(tmp):
        os.remove(tmp)


def _out_of_space(error: Exception, folder: Path) -> bool:
    """Whether ``error``, met while writing into ``folder``, came from a full device (or quota)."""
    if isinstance(error, LemevitError):  # already said, by an atomic write within this one
        return False
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        cause = cause.__cause__ or cause.__context__
    return isinstance(error, (OSError, RuntimeError)) and shutil.disk_usage(folder).free < _FULL_BELOW


def _temporary(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f"{_prefix(path)}{os.getpid()}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    return tmp
