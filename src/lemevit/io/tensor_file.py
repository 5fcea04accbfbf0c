"""Reading files of tensors (torch checkpoints, safetensors) without running code, and saying what a file that
cannot be read is not.

Every torch file is read with ``torch.load(weights_only=True)``, which allows tensors, numbers, strings and
containers only. When it refuses a file, torch's own message advises loading it in full, which runs whatever the
file pickled: lemevit never does, nor passes that advice on; it says instead whether the file is truncated, holds
objects besides tensors, or is no torch file at all.
"""
from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from lemevit.errors import DataError

__all__ = ["UnreadableTensorFile", "load_safetensors", "load_torch_file"]

_ZIP_MAGIC = b"PK\x03\x04"
# The protocol opcode that starts a pickle of protocol 2 or more: torch's files from before its zip format.
_PICKLE_MAGIC = b"\x80"
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class UnreadableTensorFile(DataError):
    """A file that cannot be read as tensors and plain values; ``reason`` says what it is not (cut short, holding
    code, no torch file)."""

    def __init__(self, path: str | Path, what: str, reason: str):
        self.path, self.what, self.reason = Path(path), what, reason
        super().__init__(f"{path} is not {what} that can be read safely: {reason}")

    def __reduce__(self):  # DataLoader workers re-raise it in the main process
        return type(self), (self.path, self.what, self.reason)


def _what_it_is_not(path: Path, error: Exception) -> str:
    """Why ``path`` could not be loaded as a torch file, in terms of the file (not of torch.load's arguments)."""
    with path.open("rb") as f:
        head = f.read(4)
    if not head:
        return "it is empty"
    if head != _ZIP_MAGIC and head[:1] != _PICKLE_MAGIC:
        return "it is not a torch file (nor a safetensors file)"
    unsafe = _GLOBAL.search(str(error))
    if isinstance(error, pickle.UnpicklingError) and ("weights_only" in str(error) or unsafe):
        found = f" ({unsafe.group(1)})" if unsafe else ""
        return (f"it holds Python objects besides tensors and plain values{found}, which could run code when "
                "loaded, and lemevit loads no code from a file")
    if head == _ZIP_MAGIC:
        return ("it is a torch file that is damaged" if zipfile.is_zipfile(path) else
                "it is truncated: a torch file whose end is missing (an interrupted copy or download?)")
    return "it is a torch file of the old format that is truncated or damaged"


def load_torch_file(path: str | Path, what: str = "a checkpoint", mmap: bool = False) -> Any:
    """The content of the torch file ``path``, tensors and plain values only, loaded on the CPU; a file that cannot
    be read so is an :class:`UnreadableTensorFile` saying that it is not ``what`` and why."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # torch's warnings about a file it then refuses (an unusual pickle protocol) would add lines to the one
            # that says what the file is not.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - torch raises many types for files it cannot read
        if mmap and "mmap can only be used" in str(e):
            # A file not in torch's zip format: read it without mmap to tell what it is.
            return load_torch_file(path, what)
        raise UnreadableTensorFile(path, what, _what_it_is_not(path, e)) from None


def load_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file ``path``; one that cannot be read is a :class:`DataError` naming it."""
    from safetensors.torch import load_file

    path = Path(path)
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path} is not a safetensors file, or it is truncated ({reason})") from None
