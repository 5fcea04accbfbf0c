"""Image files read one by one for prediction, with unreadable ones reported instead of stopping the run when
asked."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from torch.utils.data._utils.collate import default_collate

from lemevit.io.images import ImageReadError

__all__ = ["BadFile", "PredictionFiles", "collate_readable"]


class BadFile:
    """An input that could not be read, in place of its item: ``path`` and ``reason``."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason


class PredictionFiles(Dataset):
    """``(index, load(path))`` for each of ``paths``. With ``skip_bad`` a file that ``load`` cannot read (an
    :class:`~lemevit.io.images.ImageReadError`) gives a :class:`BadFile` instead of stopping."""

    def __init__(self, paths: Sequence[Path], load: Callable[[Path], Any], skip_bad: bool = False):
        self.paths, self.load, self.skip_bad = [Path(p) for p in paths], load, skip_bad

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        path = self.paths[index]
        try:
            return index, self.load(path)
        except ImageReadError as e:
            if not self.skip_bad:
                raise
            return index, BadFile(path, e.reason or str(e))


def collate_readable(batch: list[tuple[int, Any]]) -> tuple[list[int], Any, list[tuple[int, BadFile]]]:
    """``(indices, collated items, bad files)``: the readable items of a batch stacked as usual, the bad ones
    apart (``collated items`` is None when none could be read)."""
    good = [(i, item) for i, item in batch if not isinstance(item, BadFile)]
    bad = [(i, item) for i, item in batch if isinstance(item, BadFile)]
    return [i for i, _ in good], default_collate([item for _, item in good]) if good else None, bad
