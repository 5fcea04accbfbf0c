"""Reading one image file into an ``(H, W, C)`` array in its own data type.

Photographic formats (JPEG, PNG, BMP) go through PIL; TIFF goes through rasterio when it is installed
(any number of bands, any data type) and through PIL otherwise (8- and 16-bit, at most 4 bands).

Band conventions:

- grayscale gives ``C = 1``; palette and CMYK/YCbCr images are converted to RGB (``C = 3``);
- the alpha channel of a JPEG/PNG/BMP is dropped: in these formats it is a transparency mask, not a
  measurement, and keeping it would make a folder of mixed RGB/RGBA files look like two band counts;
- TIFF bands are returned exactly as stored, all of them (a 4th TIFF band is usually near-infrared,
  and rasterio cannot tell such a band from alpha reliably), so the two TIFF readers agree;
- 16-bit PNG stays ``uint16``. PIL decodes 16-bit grayscale PNG losslessly but 16-bit colour PNG only
  to 8 bits, so the latter is read with rasterio and is an error without it.

A JPEG, PNG or BMP is returned as it is shown: turned as its EXIF orientation says (a camera's or a drone's
picture taken upright is stored sideways with orientation 6), as every viewer and labelling tool shows it, so that
an image and a mask drawn over it agree. TIFF bands are read as stored (GDAL does not apply orientation).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from lemevit.errors import DataError

__all__ = ["IMAGE_EXTENSIONS", "TIFF_EXTENSIONS", "ImageReadError", "declared_nodata", "optional_rasterio",
           "read_image", "shown_size"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})
TIFF_EXTENSIONS = frozenset({".tif", ".tiff"})
_GEO_HINT = 'install rasterio to read it: pip install "lemevit[geo]"'

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types (IHDR byte 25) that PIL decodes to 8 bits when the bit depth is 16.
_PNG_COLOUR_TYPES_PIL_REDUCES = {2: "RGB", 4: "grayscale+alpha", 6: "RGBA"}

# EXIF orientations that turn the picture by a quarter (or transpose it): height and width swap.
_ORIENTATIONS_SWAPPING_SIDES = frozenset({5, 6, 7, 8})
_EXIF_ORIENTATION = 0x0112

# PIL modes whose pixels ``np.asarray`` gives losslessly; the value is the data type it gives.
_PIL_DIRECT_MODES = {"L": np.uint8, "RGB": np.uint8, "I;16": np.uint16, "I;16L": np.uint16,
                     "I;16B": np.uint16, "I;16N": np.uint16, "I": np.int32, "F": np.float32}


class ImageReadError(DataError):
    """An image file that cannot be read; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str | None = None):
        # One argument is the whole message: that is how pickling and DataLoader workers rebuild it.
        self.path = str(path) if reason is not None else None
        self.reason = reason
        super().__init__(f"cannot read image {path}: {reason}" if reason is not None else str(path))


def optional_rasterio():
    """The rasterio module, or None when the optional ``[geo]`` dependency is not installed."""
    try:
        import rasterio
    except ImportError:
        return None
    return rasterio


def _read_rasterio(path: Path, rasterio) -> np.ndarray:
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            # Plain TIFF/PNG files carry no georeference; that is normal here, not worth a warning.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as ds:
                data = ds.read()
    except Exception as e:  # noqa: BLE001 - GDAL reports corrupt, truncated and unsupported files alike
        reason = f"{type(e).__name__}: {e}"
        if e.__cause__ is not None:  # rasterio's own message often only points at GDAL's, chained here
            reason += f" ({e.__cause__})"
        raise ImageReadError(path, reason) from e
    if np.iscomplexobj(data):
        raise ImageReadError(path, f"complex data type {data.dtype} is not an image")
    return np.ascontiguousarray(np.moveaxis(data, 0, -1))


def _pil_to_array(im: Image.Image, path: Path, tiff: bool) -> np.ndarray:
    mode = im.mode
    if tiff:
        # Keep every stored band (see the module docstring); only bilevel needs widening to be useful.
        if mode == "1":
            im = im.convert("L")
        elif mode == "P":
            raise ImageReadError(path, f"palette TIFF: the band values are palette indices; {_GEO_HINT} "
                                       "or convert the file to RGB")
        arr = np.asarray(im)
    elif mode in _PIL_DIRECT_MODES:
        arr = np.asarray(im)
    elif mode in ("1", "LA", "La"):
        arr = np.asarray(im.convert("L"))
    elif mode == "P":
        has_alpha = "transparency" in im.info or im.palette is not None and im.palette.mode == "RGBA"
        arr = np.asarray(im.convert("RGBA" if has_alpha else "RGB"))[..., :3]
    elif mode in ("I;16S", "I;32", "I;32S", "I;32B", "I;32BS"):
        arr = np.asarray(im.convert("I"))
    else:  # RGBA, RGBa, RGBX, PA, CMYK, YCbCr, LAB, HSV: all have an RGB meaning
        arr = np.asarray(im.convert("RGB"))
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise ImageReadError(path, f"PIL gave an array of shape {arr.shape} for mode {mode!r}")
    return np.ascontiguousarray(arr)


def declared_nodata(path: str | Path) -> float | None:
    """The nodata value the file declares (GDAL's, of its first band: a GeoTIFF's tag), or None: it declares none,
    or rasterio, which reads it, is not installed."""
    rasterio = optional_rasterio()
    if rasterio is None or Path(path).suffix.lower() not in TIFF_EXTENSIONS:
        return None
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            return ds.nodata


def shown_size(im: Image.Image) -> tuple[int, int]:
    """``(height, width)`` of a PIL image opened but not decoded, as :func:`read_image` returns it: after its EXIF
    orientation (TIFF as stored)."""
    if im.format != "TIFF" and im.getexif().get(_EXIF_ORIENTATION) in _ORIENTATIONS_SWAPPING_SIDES:
        return im.width, im.height
    return im.height, im.width


def _png_header(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None for a file that is not PNG."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) < 26 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an ``(H, W, C)`` array in the file's own data type.

    ``uint8`` JPEG/PNG/BMP, ``uint16`` PNG/TIFF, float TIFF, ... are returned as stored, a JPEG/PNG/BMP turned as
    its EXIF orientation says (see the module docstring for how grayscale, palette and alpha are handled). Raises
    :class:`ImageReadError` naming the file for a missing, unsupported, corrupt or truncated file.
    """
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ImageReadError(path, f"unsupported extension {path.suffix!r}; expected one of "
                                   f"{', '.join(sorted(IMAGE_EXTENSIONS))}")
    if not path.is_file():
        raise ImageReadError(path, "no such file")
    tiff = ext in TIFF_EXTENSIONS
    rasterio = optional_rasterio()
    if tiff and rasterio is not None:
        return _read_rasterio(path, rasterio)
    try:
        header = _png_header(path)
    except OSError as e:
        raise ImageReadError(path, f"{type(e).__name__}: {e}") from e
    if header is not None and header[0] == 16 and header[1] in _PNG_COLOUR_TYPES_PIL_REDUCES:
        if rasterio is None:
            raise ImageReadError(path, f"16-bit {_PNG_COLOUR_TYPES_PIL_REDUCES[header[1]]} PNG, which PIL "
                                       f"would reduce to 8 bits; {_GEO_HINT}")
        arr = _read_rasterio(path, rasterio)
        # GDAL gives the alpha channel as the last band; PNG alpha is dropped as for 8-bit files.
        return np.ascontiguousarray(arr[..., :1] if header[1] == 4 else arr[..., :3])
    try:
        with Image.open(path) as im:
            if tiff and getattr(im, "n_frames", 1) > 1:
                raise ImageReadError(path, f"multi-page TIFF ({im.n_frames} pages); {_GEO_HINT}")
            im.load()  # decode now: Image.open reads only the header, so truncation would pass unseen
            if not tiff:
                im = ImageOps.exif_transpose(im)
            arr = _pil_to_array(im, path, tiff)
    except ImageReadError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError... for bad files
        reason = f"{type(e).__name__}: {e}"
        if tiff:
            reason += f" (PIL reads only 8/16-bit TIFF with at most 4 bands; {_GEO_HINT})"
        raise ImageReadError(path, reason) from e
    if header is not None and header[0] == 16 and arr.dtype == np.int32:
        # Older Pillow releases (10.0 among them) open 16-bit grey PNG as 32-bit integers ("I"); the values are
        # 16-bit.
        arr = arr.astype(np.uint16)
    return arr
