"""Whole-scene segmentation by a sliding window, in strips of rows so that memory stays bounded.

Windows of ``window`` pixels are placed every ``stride`` pixels (the last row and column of windows flush
with the scene's edge; a scene smaller than a window is padded). Their class probabilities are blended
with a separable Hann weight, ``sin²(π (i + ½) / window)``, which falls smoothly towards the window's
edges, where a network sees the least context, but is never zero, so every pixel gets a weighted mean.

The scene is processed one row of windows at a time: only a ``window``-high accumulator of probabilities
for the full width lives in memory, and the rows that no later window touches are handed on (argmax and
write, or compared with the ground truth) before the next row of windows is read. GeoTIFF scenes are read
and written through rasterio windows, so that neither the scene nor its class map is held in memory
whole; the class map keeps the scene's CRS and transform.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lemevit.data.images import _TIFF_EXTENSIONS, _rasterio, read_image
from lemevit.io import atomic_path

__all__ = ["blend_weight", "blended_strips", "predict_scene", "sliding_window_probs", "window_starts"]

_GEO_HINT = 'install rasterio for GeoTIFF output: pip install "lemevit[geo]"'
# GDAL's block cache otherwise grows to 5 % of the machine's memory with the blocks of the scene.
_GDAL_CACHE_MB = 16
_PREVIEW_MAX_SIDE = 2048
_OUTPUT_EXTENSIONS = (".tif", ".tiff", ".png")


def _glibc_malloc_trim() -> Callable[[], object]:
    """glibc's ``malloc_trim``, or a no-op where the C library is not glibc."""
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return lambda *_: None


# glibc serves the strip's buffers (tens of MiB each, freed and reallocated every row of windows) from a heap
# that fragments, so that the resident memory creeps up by a strip's worth per row. Handing the free pages
# back after each strip keeps it flat (the remedy Dask applies to its workers).
_release_free_memory = functools.partial(_glibc_malloc_trim(), 0)


def window_starts(length: int, window: int, stride: int) -> list[int]:
    """Offsets of the windows along one axis: every ``stride``, the last one flush with the end."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")
    if isinstance(stride, bool) or not isinstance(stride, int) or not 1 <= stride <= window:
        raise ValueError(f"stride must be an integer from 1 to the window ({window}), got {stride!r}")
    if length <= window:
        return [0]
    return list(range(0, length - window, stride)) + [length - window]


def blend_weight(window: int) -> torch.Tensor:
    """The 1-D Hann weight of a window, sampled between its taps so that no pixel gets weight zero."""
    return torch.sin(math.pi * (torch.arange(window, dtype=torch.float64) + 0.5) / window) ** 2


def blended_strips(read_rows: Callable[[int, int], torch.Tensor], height: int, width: int,
                   predict: Callable[[torch.Tensor], torch.Tensor], window: int, stride: int, batch_size: int = 8,
                   progress: Callable[[int], None] | None = None,
                   normalise: Callable[[torch.Tensor], torch.Tensor] | None = None
                   ) -> Iterator[tuple[int, torch.Tensor]]:
    """Blended class probabilities of a ``height`` × ``width`` scene, strip by strip.

    Args:
        read_rows: ``(top, bottom) -> (C, bottom - top, width)`` rows of the scene.
        predict: ``(B, C, window, window) -> (B, K, window, window)`` probabilities.
        progress: called with the number of windows done after each row of windows.
        normalise: applied to each batch of windows before ``predict``, so that the rows can stay in the
            scene's own data type (a quarter of float32's memory for 8-bit bands). Windows that overhang a
            scene smaller than a window are padded with zeros after it: with the band means.

    Yields ``(top, probs)`` with ``probs`` float32 ``(K, rows, width)``, for consecutive strips that cover
    rows ``0..height`` in order. ``probs`` is a view of the accumulator, valid until the next strip is
    requested: clone it to keep it.
    """
    if height < 1 or width < 1:
        raise ValueError(f"cannot predict an empty scene ({width}x{height})")
    ys, xs = window_starts(height, window, stride), window_starts(width, window, stride)
    weight_1d = blend_weight(window)
    padded_width = max(width, window)
    # Windows form a grid, so the summed weight at (y, x) is a row sum times a column sum.
    row_sum = torch.zeros(max(height, window), dtype=torch.float64)
    col_sum = torch.zeros(padded_width, dtype=torch.float64)
    for y in ys:
        row_sum[y:y + window] += weight_1d
    for x in xs:
        col_sum[x:x + window] += weight_1d
    row_sum, col_sum = row_sum.float(), col_sum[:width].float()
    weight_2d = (weight_1d[:, None] * weight_1d[None, :]).float()
    accumulator = None
    for r, top in enumerate(ys):
        bottom = min(top + window, height)
        rows = read_rows(top, bottom)
        if rows.shape[1:] != (bottom - top, width):
            raise ValueError(f"read_rows gave rows of shape {tuple(rows.shape)}, expected (C, {bottom - top}, {width})")
        for start in range(0, len(xs), batch_size):
            chunk = xs[start:start + batch_size]
            batch = torch.stack([rows[:, :, x:x + window] for x in chunk])
            if normalise is not None:
                batch = normalise(batch)
            if batch.shape[-2:] != (window, window):
                batch = torch.nn.functional.pad(batch, (0, window - batch.shape[-1], 0, window - batch.shape[-2]))
            probs = predict(batch).float()
            del batch
            if accumulator is None:
                accumulator = torch.zeros(probs.shape[1], window, padded_width)
            for x, p in zip(chunk, probs, strict=True):
                accumulator[:, :, x:x + window].addcmul_(p, weight_2d)
            del probs  # one batch's outputs alive at a time
            _release_free_memory()
        del rows
        if progress is not None:
            progress(len(xs))
        done = (ys[r + 1] if r + 1 < len(ys) else height) - top
        # Normalised in place: no later window adds to these rows.
        strip = accumulator[:, :done, :width]
        strip.div_(row_sum[top:top + done, None]).div_(col_sum)
        yield top, strip
        # The rows still to be covered by later windows move to the top of the accumulator.
        keep = window - done
        if keep > done:  # source and destination overlap
            accumulator[:, :keep] = accumulator[:, done:].clone()
        elif keep:
            accumulator[:, :keep] = accumulator[:, done:]
        accumulator[:, keep:] = 0


def _softmax_predictor(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    device = next(model.parameters()).device

    def predict(x: torch.Tensor) -> torch.Tensor:
        return model(x.to(device)).softmax(dim=1).cpu()

    return predict


@torch.inference_mode()
def sliding_window_probs(model: torch.nn.Module, image: torch.Tensor, window: int, stride: int,
                         batch_size: int = 8) -> torch.Tensor:
    """Blended class probabilities ``(K, H, W)`` of one normalised image ``(C, H, W)`` held in memory."""
    strips = blended_strips(lambda top, bottom: image[:, top:bottom], image.shape[1], image.shape[2],
                            _softmax_predictor(model), window, stride, batch_size)
    whole = None
    for top, probs in strips:
        if whole is None:
            whole = probs.new_empty(len(probs), image.shape[1], image.shape[2])
        whole[:, top:top + probs.shape[1]] = probs
    return whole


class _Scene:
    """Rows of a scene file: a TIFF through rasterio windows; other formats (PNG, JPEG), which cannot be
    decoded in parts, from the whole image as :func:`~lemevit.data.read_image` reads it."""

    def __init__(self, path: Path):
        rasterio = _rasterio()
        self.path = path
        self.dataset = None
        self.crs = self.transform = None
        if path.suffix.lower() in _TIFF_EXTENSIONS and rasterio is not None:
            from rasterio.errors import NotGeoreferencedWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                try:
                    self.dataset = rasterio.open(path)
                except Exception as e:  # noqa: BLE001 - GDAL reports all unreadable files alike
                    raise ValueError(f"cannot read scene {path}: {type(e).__name__}: {e}") from e
            self.height, self.width, self.bands = self.dataset.height, self.dataset.width, self.dataset.count
            self.crs, self.transform = self.dataset.crs, self.dataset.transform
        else:
            self.array = read_image(path)
            if not self.array.flags.writeable:  # torch.from_numpy warns about read-only arrays
                self.array = self.array.copy()
            self.height, self.width, self.bands = self.array.shape

    @property
    def georeferenced(self) -> bool:
        """Whether the file places its pixels on the ground (a CRS or a non-identity transform)."""
        return self.crs is not None or (self.transform is not None and not self.transform.is_identity)

    def read(self, top: int, bottom: int) -> np.ndarray:
        """``(C, rows, width)`` in the file's data type."""
        if self.dataset is None:
            return self.array[top:bottom].transpose(2, 0, 1)
        from rasterio.windows import Window

        return self.dataset.read(window=Window(0, top, self.width, bottom - top))

    def close(self) -> None:
        if self.dataset is not None:
            self.dataset.close()


class _ClassMapWriter:
    """Strips of class indices into a GeoTIFF (written in windows, with the scene's georeference and the
    palette as its colour table) or a PNG (assembled in memory: PNG cannot be written in parts)."""

    def __init__(self, path: Path, tmp: Path, scene: _Scene, palette: Sequence[Sequence[int]]):
        self.tmp, self.palette = tmp, palette
        self.dataset = self.array = None
        if path.suffix.lower() not in _TIFF_EXTENSIONS:
            self.array = np.zeros((scene.height, scene.width), np.uint8)
            return
        rasterio = _rasterio()
        if rasterio is None:
            raise ValueError(f"cannot write {path}: {_GEO_HINT}")
        from rasterio.errors import NotGeoreferencedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            self.dataset = rasterio.open(
                tmp, "w", driver="GTiff", height=scene.height, width=scene.width, count=1, dtype="uint8",
                crs=scene.crs, transform=scene.transform, tiled=True, blockxsize=256, blockysize=256,
                compress="deflate")

    def write(self, top: int, classes: np.ndarray) -> None:
        if self.dataset is None:
            self.array[top:top + classes.shape[0]] = classes
            return
        from rasterio.windows import Window

        self.dataset.write(classes[None], window=Window(0, top, classes.shape[1], classes.shape[0]))

    def close(self) -> None:
        if self.dataset is None:
            from PIL import Image

            Image.fromarray(self.array).save(self.tmp, format="PNG")
            return
        self.dataset.write_colormap(1, {i: (*colour, 255) for i, colour in enumerate(self.palette)})
        self.dataset.close()


def preview_path(output: str | Path) -> Path:
    """Where :func:`predict_scene` writes the colour preview of ``output``."""
    output = Path(output)
    return output.with_name(f"{output.stem}_preview.png")


def _save_preview(classes: np.ndarray, palette: Sequence[Sequence[int]], path: Path) -> None:
    from PIL import Image

    image = Image.fromarray(classes)
    image.putpalette([v for colour in palette for v in colour])  # an 8-bit grayscale image becomes "P"
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


@torch.inference_mode()
def predict_scene(model: torch.nn.Module, scene: str | Path, output: str | Path, mean: Sequence[float],
                  std: Sequence[float], palette: Sequence[Sequence[int]], window: int = 512, stride: int = 384,
                  batch_size: int = 8, preview: bool = True, progress: bool = True) -> dict:
    """Write the class-index map of a whole scene (any size) to ``output`` (.tif or .png, 8-bit).

    Args:
        model: ``(B, C, h, w) -> (B, K, h, w)`` logits, in eval mode.
        mean, std: per band, in the scene's own value scale.
        palette: an RGB colour per class (K of them): the GeoTIFF's colour table and the preview's colours.
        preview: also write ``<output stem>_preview.png``, the classes in colour, downsampled to at most
            2048 pixels a side.

    A GeoTIFF scene gives a GeoTIFF with the same CRS and transform. Memory: one strip of ``window`` rows
    (the probabilities of every class and the scene's bands, over the full width) plus a batch of windows,
    for any scene height; a PNG output also holds the class map, one byte a pixel. Returns ``{"output",
    "preview", "height", "width", "windows", "class_pixels"}``.
    """
    scene, output = Path(scene), Path(output)
    if output.suffix.lower() not in _OUTPUT_EXTENSIONS:
        raise ValueError(f"--output must end in .tif, .tiff or .png, got {output}")
    if not scene.is_file():
        raise FileNotFoundError(f"scene not found: {scene}")
    if not 1 <= len(palette) <= 256:
        raise ValueError(f"class maps are written as 8-bit images: at most 256 classes, got {len(palette)}")
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    rasterio = _rasterio()
    with rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB) if rasterio is not None else contextlib.nullcontext():
        source = _Scene(scene)
        try:
            if source.bands != len(mean):
                raise ValueError(f"scene {scene} has {source.bands} band(s), the model expects {len(mean)}")
            height, width = source.height, source.width
            step = max(1, math.ceil(max(height, width) / _PREVIEW_MAX_SIDE))
            small = np.zeros((math.ceil(height / step), math.ceil(width / step)), np.uint8)
            counts = np.zeros(len(palette), np.int64)
            windows = len(window_starts(height, window, stride)) * len(window_starts(width, window, stride))

            def read_rows(top: int, bottom: int) -> torch.Tensor:
                return torch.from_numpy(source.read(top, bottom))

            def normalise(batch: torch.Tensor) -> torch.Tensor:
                return batch.float().sub_(mean_t).div_(std_t)

            with atomic_path(output) as tmp, tqdm(total=windows, desc=f"predicting {scene.name}", unit="window",
                                                  disable=not progress) as bar:
                writer = _ClassMapWriter(output, tmp, source, palette)
                for top, probs in blended_strips(read_rows, height, width, _softmax_predictor(model), window,
                                                 stride, batch_size, bar.update, normalise):
                    if len(probs) != len(palette):
                        raise ValueError(f"the model gives {len(probs)} classes, the palette has {len(palette)}")
                    classes = probs.argmax(dim=0).to(torch.uint8).numpy()
                    writer.write(top, classes)
                    counts += np.bincount(classes.ravel(), minlength=len(palette))
                    # The preview keeps the rows and columns whose index is a multiple of the step.
                    first = -top % step
                    kept = classes[first::step, ::step]
                    small[(top + first) // step:(top + first) // step + len(kept)] = kept
                writer.close()
        finally:
            source.close()
    written = None
    if preview:
        written = preview_path(output)
        _save_preview(small, palette, written)
    return {"output": str(output), "preview": str(written) if written else None, "height": height, "width": width,
            "windows": windows, "class_pixels": counts.tolist()}
