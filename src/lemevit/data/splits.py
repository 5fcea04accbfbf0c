"""Splits of a data set into training, validation (and test) items, and the versioned file a run keeps them in.

Every task's items are small dataclasses of relative POSIX paths (and labels): a classification ``Sample``, a
segmentation ``TilePair``, a change ``ChangePair``, a detection ``LabelledImage``. A run stores its split as
``split.json`` with the absolute data root, so that ``eval`` and ``--resume`` find the data from any working
directory, and the task's description of the labels (``meta``: class names, a label scheme).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from lemevit.errors import ConfigError, DataError
from lemevit.io import atomic_path

__all__ = ["SPLIT_FORMAT", "SPLIT_VERSION", "SUBSETS", "Split", "hashed_split", "load_split", "missing_files",
           "save_split", "split_items"]

SPLIT_FORMAT = "lemevit-split"
SPLIT_VERSION = 2
SUBSETS = ("train", "val", "test")

Item = TypeVar("Item")


def _rank(seed: int, key: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{key}".encode()).digest()


def hashed_split(items: Iterable[Item], train_fraction: float, seed: int, key: Callable[[Item], str],
                 group: Callable[[Item], Any] | None = None, argument: str = "split") -> dict[str, list[Item]]:
    """Split ``items`` into ``"train"`` and ``"val"``, with ``train_fraction`` of each group in training.

    Each group (a class, say; all items are one group without ``group``) is shuffled by ranking its items on a
    seeded hash of ``key(item)``: the result does not depend on the order the items come in, one group's
    assignment does not depend on another's, and adding an item moves at most one of those already there.
    Every group keeps at least one training item, and one validation item when it has two or more. The subsets
    come sorted by key.
    """
    if isinstance(train_fraction, bool) or not isinstance(train_fraction, (int, float)) \
            or not 0.0 < train_fraction < 1.0:
        raise ConfigError(argument, f"the fraction of the data used for training must be strictly between 0 and 1 "
                                    f"to hold some out; got {train_fraction!r}")
    groups: dict[Any, list[Item]] = defaultdict(list)
    for item in items:
        groups[group(item) if group else 0].append(item)
    if not groups:
        raise DataError("cannot split an empty data set")
    splits: dict[str, list[Item]] = {"train": [], "val": []}
    for members in groups.values():
        members = sorted(members, key=lambda item: _rank(seed, key(item)))
        n = len(members)
        n_val = min(max(n - round(n * train_fraction), 1), n - 1) if n >= 2 else 0
        splits["val"] += members[:n_val]
        splits["train"] += members[n_val:]
    for subset in splits.values():
        subset.sort(key=key)
    return splits


def split_items(items: Iterable[Item], train_fraction: float, seed: int, key: Callable[[Item], str],
                group: Callable[[Item], Any] | None = None, what: str = "items") -> dict[str, list[Item]]:
    """:func:`hashed_split`, or with ``train_fraction`` 1.0 every item in training and in validation alike (to
    overfit a few items, or to validate on the training data of a tiny set)."""
    items = list(items)
    if train_fraction == 1.0:
        return {"train": items, "val": list(items)}
    if len(items) < 2:
        raise DataError(f"{len(items)} {what}: a held-out split needs two at least (or `split` 1.0 to validate on "
                        "the training data)")
    return hashed_split(items, train_fraction, seed, key, group)


@dataclass
class Split:
    """The items of each subset (``"train"``, ``"val"``, optional ``"test"``) of the data set under ``root``,
    with the task's description of the labels in ``meta``."""

    root: Path
    subsets: dict[str, list]
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.root = Path(self.root)
        for subset in ("train", "val"):
            if not self.subsets.get(subset):
                raise DataError(f"the split of {self.root} has no {subset} items (subsets: "
                                f"{ {k: len(v) for k, v in self.subsets.items()} })")

    @property
    def evaluation(self) -> list:
        """What a run is evaluated on: its test items when it has them, else its validation items."""
        return self.subsets.get("test") or self.subsets["val"]

    def all_items(self) -> list:
        """Every item of every subset once (a validation set equal to the training set counts once)."""
        seen, items = set(), []
        for members in self.subsets.values():
            for item in members:
                if item not in seen:
                    seen.add(item)
                    items.append(item)
        return items


def _check_entry(entry: Any, entry_type: type, where: str) -> Any:
    hints = typing.get_type_hints(entry_type)
    names = [f.name for f in dataclasses.fields(entry_type)]
    if not isinstance(entry, dict) or sorted(entry) != sorted(names):
        raise DataError(f"{where}: expected an object with the keys {names}, got {entry!r}")
    for name in names:
        kind = hints[name]
        value = entry[name]
        wrong = not isinstance(value, kind) or (kind is int and isinstance(value, bool))
        if kind in (str, int, float, bool) and wrong:
            raise DataError(f"{where}: {name!r} must be a {kind.__name__}, got {value!r}")
    return entry_type(**entry)


def save_split(path: str | Path, task: str, split: Split) -> None:
    """Write ``split`` of a ``task`` run as JSON, atomically (the root made absolute)."""
    doc = {"format": SPLIT_FORMAT, "version": SPLIT_VERSION, "task": task, "root": str(Path(split.root).resolve()),
           "meta": split.meta,
           "splits": {name: [dataclasses.asdict(item) for item in items] for name, items in split.subsets.items()}}
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")


def load_split(path: str | Path, task: str, entry_type: type, root: str | Path | None = None,
               validate_meta: Callable[[dict, str], dict] | None = None) -> Split:
    """Read a file written by :func:`save_split` for ``task``, whose items are ``entry_type`` dataclasses.

    ``root`` replaces the stored data root (the data moved); the root must exist. ``validate_meta`` checks and
    may convert the stored ``meta``. Anything malformed is a :class:`~lemevit.errors.DataError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"split file {path} does not exist")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"split file {path} is not valid JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != SPLIT_FORMAT:
        raise DataError(f'split file {path} is not a lemevit split (expected "format": "{SPLIT_FORMAT}")')
    if doc.get("version") != SPLIT_VERSION:
        raise DataError(f"split file {path} has version {doc.get('version')!r}; this lemevit reads version "
                        f"{SPLIT_VERSION}")
    if doc.get("task") != task:
        raise DataError(f"split file {path} is a split of a {doc.get('task')!r} run, not of a {task!r} one")
    raw, stored_root = doc.get("splits"), doc.get("root")
    if not isinstance(raw, dict) or not isinstance(stored_root, str):
        raise DataError(f'split file {path}: "root" must be a string and "splits" an object of subsets')
    subsets = {}
    for name, entries in raw.items():
        if not isinstance(entries, list):
            raise DataError(f'split file {path}: subset "{name}" must be a list')
        subsets[name] = [_check_entry(e, entry_type, f'split file {path}, subset "{name}", entry {i}')
                         for i, e in enumerate(entries)]
    data_root = Path(root) if root is not None else Path(stored_root)
    if not data_root.is_dir():
        raise DataError(f"the data folder {data_root} of {path} is not there (moved?); give its new place with --data")
    meta = doc.get("meta") or {}
    if validate_meta is not None:
        meta = validate_meta(meta, str(path))
    return Split(data_root, subsets, meta)


def missing_files(root: Path, paths: Sequence[str]) -> list[Path]:
    """The files of ``paths`` (relative to ``root``) that are not there."""
    return [root / p for p in paths if not (root / p).is_file()]
