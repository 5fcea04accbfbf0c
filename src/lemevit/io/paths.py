"""Which files a command reads and where it writes: input listing as ``train`` lists images, and the checks
that keep outputs from replacing inputs or each other."""
from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePath, PurePosixPath
from urllib.parse import urlsplit

from lemevit.errors import ConfigError, DataError
from lemevit.io.images import IMAGE_EXTENSIONS

__all__ = ["check_distinct_names", "check_outputs_spare_inputs", "check_writable_folder", "download_whole",
           "http_url", "is_listed_image", "is_remote", "list_images", "scene_source", "source_name"]

_logger = logging.getLogger(__name__)


def is_remote(source: str | Path) -> bool:
    """Whether a scene is a URL (``https://...``) or a path of one of GDAL's virtual file systems (``/vsicurl/``,
    ``/vsis3/``, ...) rather than a local file: GDAL reads it where it is, the ranges it needs."""
    text = str(source)
    return "://" in text or text.startswith("/vsi")


def scene_source(item: str | Path) -> Path | str:
    """A scene as given: a local :class:`~pathlib.Path`, or a remote source kept as its string (a ``Path`` would
    fold the ``//`` of ``https://``)."""
    return str(item) if is_remote(item) else Path(item)


def source_name(source: str | Path) -> str:
    """The file name of a scene: for a remote one, the last component of its URL's path (no query), which may be
    empty (``https://host/``); for a scene of several files (a :class:`~lemevit.io.bands.BandScene`), its
    ``name``."""
    if not isinstance(source, (str, PurePath)):
        return source.name
    if not is_remote(source):
        return Path(source).name
    # /vsicurl/https://host/a/b.tif?x=1 -> https://host/a/b.tif?x=1 -> b.tif; /vsis3/bucket/b.tif -> b.tif
    return PurePosixPath(urlsplit(re.sub(r"^(/vsi\w+/)+", "", str(source))).path).name


def http_url(source: str | Path) -> str | None:
    """The HTTP(S) URL of a remote scene given as one or as GDAL's ``/vsicurl/`` path of one; None for any other
    source."""
    url = re.sub(r"^/vsicurl/", "", str(source))
    return url if re.match(r"https?://", url) else None


def download_whole(source: str | Path, reason: str, timeout: float = 60.0) -> Path:
    """Download the HTTP(S) scene ``source`` whole into a temporary file (the caller removes it), saying so in one
    line with ``reason``: for servers GDAL cannot read by byte ranges."""
    import urllib.error
    import urllib.request

    url = http_url(source)
    if url is None:
        raise DataError(f"cannot read scene {source}: {reason}")
    fd, name = tempfile.mkstemp(prefix="lemevit-scene-", suffix=Path(source_name(source)).suffix)
    _logger.warning("%s: %s; downloading the whole file into %s (removed when done)", source, reason, name)
    try:
        with os.fdopen(fd, "wb") as file, urllib.request.urlopen(url, timeout=timeout) as response:
            shutil.copyfileobj(response, file, 1 << 20)
    except (OSError, urllib.error.URLError) as e:
        os.remove(name)
        raise DataError(f"cannot download scene {source}: {getattr(e, 'reason', None) or e}") from None
    return Path(name)


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


def list_images(inputs: Sequence[str | Path], argument: str = "inputs") -> list[Path | str]:
    """Image files from files, folders (searched recursively) and glob patterns, in the order given (each
    folder and pattern sorted), each file once. Folders are listed as ``train`` lists a data set: hidden files
    and folders and files without an image extension are left out. A named file is taken as it is (a ``.vrt``
    mosaic too), and so is a remote source (:func:`is_remote`), as a string, unchecked: GDAL tells when it opens
    it."""
    paths: list[Path | str] = []
    for item in inputs:
        path = Path(item)
        if is_remote(item):
            paths.append(str(item))
        elif path.is_dir():
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
    seen: set[Path | str] = set()
    unique = []
    for p in paths:
        key = p if isinstance(p, str) else p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def check_distinct_names(paths: Sequence[Path | str], argument: str = "output") -> None:
    """Refuse inputs whose outputs would be named alike (``a/scene.png`` and ``b/scene.png`` both give
    ``scene``; URLs by the last component of their path)."""
    stems = [PurePosixPath(source_name(p)).stem for p in paths]
    counts = Counter(stems)
    repeated = sorted(stem for stem, n in counts.items() if n > 1)
    if repeated:
        shown = ", ".join(str(p) for p, stem in zip(paths, stems, strict=True) if stem in repeated[:3])
        raise ConfigError(argument, f"inputs named alike ({shown}) would write the same outputs; predict them "
                                    "into separate output folders")


def check_outputs_spare_inputs(inputs: Iterable[Path], outputs: Iterable[Path], argument: str = "output") -> None:
    """Refuse an output that is one of the inputs (the same file, however it is spelt or linked); remote inputs
    cannot be."""
    resolved = {}
    for path in inputs:
        if not is_remote(path):
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
