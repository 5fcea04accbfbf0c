"""The errors lemevit raises for what a user gave it. The command line prints each as one line and exits with
status 2; from Python they are ordinary exceptions (``ConfigError`` and ``DataError`` are ``ValueError``s)."""
from __future__ import annotations

__all__ = ["ConfigError", "DataError", "DiskFullError", "LemevitError", "RunError"]


class LemevitError(Exception):
    """Base of the errors caused by the input rather than by lemevit: a bad option, file or run directory."""


class ConfigError(LemevitError, ValueError):
    """An argument (a config key, a function argument) with a value that cannot be used.

    ``argument`` is its Python name (``img_size``); the command line shows it as the flag (``--img-size``).
    """

    def __init__(self, argument: str, message: str):
        self.argument, self.message = argument, message
        super().__init__(f"{argument}: {message}")

    def __reduce__(self):
        return type(self), (self.argument, self.message)


class DataError(LemevitError, ValueError):
    """A data file or folder that cannot be used; the message names it."""


class RunError(LemevitError):
    """A run directory that cannot be used as asked: it holds another run, is in use, or lacks a file."""


class DiskFullError(LemevitError):
    """A file that could not be written for want of space: ``path``, and ``free``, the bytes free on its device once
    the partial file was removed (the file needs more than that)."""

    def __init__(self, path, free: int):
        self.path, self.free = path, free
        super().__init__(f"no space left on the device to write {path}: it needs more than the "
                         f"{free / 2**20:.1f} MiB free there; free some space or write elsewhere")

    def __reduce__(self):
        return type(self), (self.path, self.free)
