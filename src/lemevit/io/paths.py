"""Which files a command reads and where it writes: input listing as ``train`` lists images, and the checks
that keep outputs from replacing inputs or each other."""
from __future__ import annotations

import glob
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from lemevit.data.images import IMAGE_EXTENSIONS
from lemevit.errors import ConfigError, DataError

__all__ = ["check_distinct_names", "check_outputs_spare_inputs", "check_writable_folder", "is_listed_image",
           "list_images"]


def is_listed_image(name: str) -> bool:
    """Whether a file name is an image lemevit reads: an image extension (any case), not hidden (``.*``, which
    also leaves out macOS's ``._*`` companions)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _walk(folder: Path) -> list[Path]:
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .ipynb_checkpoints, .git, ...
        found += [Path(parent) / f for f in sorted(files) if is_listed_image(f)]
    return found


def list_images(inputs: Sequence[str | Path], argument: str = "inputs") -> list[Path]:
    """Image files from files, folders (searched recursively) and glob patterns, in the order given (each
    folder and pattern sorted), each file once. Folders are listed as ``train`` lists a data set: hidden files
    and folders and files without an image extension are left out. A named file is taken as it is."""
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            paths += _walk(path)
        elif path.is_file():
            paths.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
            files = [p for p in matches if p.is_file() and is_listed_image(p.name)]
            folders = [p for p in matches if p.is_dir()]
            if not files and not folders:
                raise DataError(f"{item}: no such file or folder, and no image matches it as a pattern")
            paths += files + [f for folder in folders for f in _walk(folder)]
    if not paths:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found in {', '.join(map(str, inputs))}")
    seen: set[Path] = set()
    unique = []
    for p in paths:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def check_distinct_names(paths: Sequence[Path], argument: str = "output") -> None:
    """Refuse inputs whose outputs would be named alike (``a/scene.png`` and ``b/scene.png`` both give
    ``scene``)."""
    counts = Counter(p.stem for p in paths)
    repeated = sorted(stem for stem, n in counts.items() if n > 1)
    if repeated:
        shown = ", ".join(str(p) for p in paths if p.stem in repeated[:3])
        raise ConfigError(argument, f"inputs named alike ({shown}) would write the same outputs; predict them "
                                    "into separate output folders")


def check_outputs_spare_inputs(inputs: Iterable[Path], outputs: Iterable[Path], argument: str = "output") -> None:
    """Refuse an output that is one of the inputs (the same file, however it is spelt or linked)."""
    resolved = {}
    for path in inputs:
        resolved[Path(path).resolve()] = Path(path)
    for output in outputs:
        target = Path(output).resolve()
        if target in resolved:
            raise ConfigError(argument, f"{output} would overwrite the input {resolved[target]}; choose another "
                                        "output")


def check_writable_folder(folder: str | Path, argument: str = "output") -> Path:
    """Create ``folder`` (and its parents) if needed and make sure files can be written in it, before any work is
    done; a ConfigError names ``argument`` otherwise (a parent that is a file, a read-only place)."""
    folder = Path(folder)
    for parent in (folder, *folder.parents):
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(argument, f"{parent} is a file, so {folder} cannot be a folder")
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".lemevit-write-test-", delete=True)
        probe.close()
    except OSError as e:
        raise ConfigError(argument, f"cannot write into {folder}: {e.strerror or e}") from None
    return folder
