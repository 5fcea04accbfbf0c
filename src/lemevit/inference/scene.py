"""Whole-scene prediction of the dense tasks: the sliding window over one scene (segmentation) or a stack of
co-registered scenes (the dates of a change pair) of any size, read and written strip by strip.

GeoTIFF scenes are read and written through rasterio windows, so that neither the scene nor its class map is
held in memory whole; the class map, a Cloud-Optimized GeoTIFF, keeps the scene's CRS and transform, and so do
the probabilities written beside it when asked.

A scene may be a local file, a VRT mosaic or a URL (``https://``, ``/vsicurl/``: GDAL reads the byte ranges of
the blocks it needs). The pixels its nodata value, alpha band or mask mark, and those with a NaN or infinite value
in a band (a floating-point scene's, declared as nodata or not), are not predicted: the map gives them its nodata
value, and the windows holding none of the others are not run.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from lemevit.errors import ConfigError, DataError
from lemevit.inference.sliding_window import blended_strips, window_starts
from lemevit.io import atomic_path
from lemevit.io.bands import BandScene
from lemevit.io.paths import (
    check_distinct_names,
    check_outputs_spare_inputs,
    check_writable_folder,
    is_remote,
    scene_source,
    source_name,
)
from lemevit.io.raster import OUTPUT_EXTENSIONS, ClassMapWriter, CogWriter, SceneStack, gdal_cache, read_by_gdal
from lemevit.viz import preview_step

__all__ = ["ProbabilityOutput", "ScenePrediction", "predict_scene", "preview_path", "probabilities_path",
           "scene_outputs", "vector_path"]

# GDAL's block cache per open scene.
_GDAL_CACHE_MB = 16


def preview_path(output: str | Path) -> Path:
    """Where the colour preview of the map ``output`` is written: ``<stem>_preview.png`` beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}_preview.png")


def probabilities_path(output: str | Path) -> Path:
    """Where the probabilities of the map ``output`` are written: ``<stem>_probabilities.tif`` beside it."""
    output = Path(output)
    return output.with_name(f"{output.stem}_probabilities.tif")


def vector_path(output: str | Path, vector: str) -> Path:
    """Where the polygons of the map ``output`` are written: ``vector`` itself, a file, or for a format
    (``geojson``, ``gpkg``) ``<stem>.geojson|.gpkg`` beside the map."""
    return Path(output).with_suffix(f".{vector}") if vector in ("geojson", "gpkg") else Path(vector)


def scene_outputs(scenes: Sequence[Path | str], output: Path, argument: str = "output",
                  inputs: Sequence[Path | str] | None = None,
                  companions: Callable[[Path], Sequence[Path]] = lambda map_path: [preview_path(map_path)]
                  ) -> list[Path]:
    """Where each scene's map goes: one scene to a named file; several (or a folder) to ``output/<stem>.tif|.png``,
    .tif for a scene GDAL reads (a TIFF, a VRT, a URL, named after the last component of its path), .png for the
    others. Names that would collide, and outputs (maps and the ``companions`` of each, by
    default its preview) that would replace one of the ``inputs`` (default: the scenes), are refused."""
    if len(scenes) == 1 and output.suffix and not output.is_dir():
        if output.suffix.lower() not in OUTPUT_EXTENSIONS:
            raise ConfigError(argument, f"the map of one scene is written as {', '.join(OUTPUT_EXTENSIONS)}, got "
                                        f"{output}")
        targets = [output]
        check_writable_folder(output.parent, argument)
    else:
        if output.suffix.lower() in OUTPUT_EXTENSIONS or (output.exists() and not output.is_dir()):
            raise ConfigError(argument, f"{len(scenes)} scenes need a folder, got the file {output}")
        check_distinct_names(scenes, argument)
        check_writable_folder(output, argument)
        nameless = [s for s in scenes if not Path(source_name(s)).stem]
        if nameless:
            raise ConfigError(argument, f"{nameless[0]} has no file name to name its map after: predict it alone, "
                                        "to a named OUT.tif")
        targets = [output / (Path(source_name(s)).stem + (".tif" if read_by_gdal(s) else ".png")) for s in scenes]
    files = [f for s in inputs or scenes for f in (s.files() if isinstance(s, BandScene) else [s])]
    check_outputs_spare_inputs(files, targets + [p for t in targets for p in companions(t)], argument)
    return targets


@dataclass(frozen=True)
class ProbabilityOutput:
    """The probabilities :func:`predict_scene` writes beside its map: a Cloud-Optimized GeoTIFF at ``path``, a
    band per name, of ``dtype`` (one of :data:`~lemevit.io.raster.PROBABILITY_DTYPES`: uint8 0..255 for 0..1, or
    float16), with overviews by averaging. ``bands`` picks them from the ``(K, rows, width)`` probabilities
    (default: every class). Pixels of no data are NaN in float16, the file's declared nodata; in uint8, whose 256
    values are all probabilities, 0 (the map tells them)."""

    path: Path
    names: Sequence[str]
    dtype: str = "uint8"
    bands: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def nodata(self) -> float | None:
        return math.nan if self.dtype == "float16" else None

    def values(self, probs: torch.Tensor, valid: np.ndarray | None = None) -> np.ndarray:
        """The stored values of the probabilities of a strip, ``valid`` its pixels with data (None: all)."""
        picked = probs if self.bands is None else self.bands(probs)
        stored = picked.mul(255).round_().to(torch.uint8).numpy() if self.dtype == "uint8" else picked.numpy()
        return stored if valid is None else np.where(valid, stored, self.nodata or 0).astype(stored.dtype)


@dataclass
class ScenePrediction:
    """What :func:`predict_scene` wrote and saw: the map's size, its windows, the pixels of each map value, for a
    preview the map and each scene downsampled by ``preview_step`` (every ``step``-th row and column), and the
    pixels of no data (the scenes' nodata, mask or alpha, and NaN or infinite values), given the map's nodata."""

    output: Path
    height: int
    width: int
    windows: int
    value_pixels: np.ndarray
    preview_step: int
    small_map: np.ndarray
    small_scenes: list[np.ndarray]
    no_data_pixels: int = 0


@torch.inference_mode()
def predict_scene(predict: Callable[[torch.Tensor], torch.Tensor], scenes: Sequence[str | Path], output: str | Path,
                  mean: Sequence[float], std: Sequence[float], palette: Sequence[Sequence[int]],
                  window: int = 512, stride: int = 384, batch_size: int = 8,
                  to_map: Callable[[torch.Tensor], torch.Tensor] | None = None, preview_side: int = 2048,
                  progress: bool = True, expected_dtype: str | None = None,
                  value_names: Mapping[int, str] | None = None, nodata: int | None = None,
                  probabilities: ProbabilityOutput | None = None) -> ScenePrediction:
    """Write the map of a whole scene (any size) to ``output`` (.tif or .png, 8-bit).

    Args:
        predict: ``(B, C, window, window)`` normalised windows → ``(B, K, window, window)`` class probabilities.
        scenes: one scene, or the co-registered scenes whose bands are stacked into the model's input (the
            dates of a change pair): local files, VRTs or URLs, or scenes of band files whose bands were selected
            (:meth:`~lemevit.io.bands.BandScene.select`), read on their finest band's grid. An alpha band is the
            mask of its scene when the model expects the other bands (see :class:`~lemevit.io.raster.SceneStack`).
        mean, std: per band of the stacked input, in the scenes' own value scale.
        palette: an RGB colour per map value: the GeoTIFF's colour table.
        to_map: ``(K, rows, width)`` probabilities → ``(rows, width)`` uint8 map values (default: the most probable
            class).
        preview_side: the longest side of the downsampled map and scenes kept for a preview.
        expected_dtype: the data type the model was trained on; a scene of another type is refused, since its
            values would be normalised on the wrong scale.
        value_names: ``{value: name}`` of the map values, the GeoTIFF's band description (``0=name, 1=...``).
        nodata: the value the GeoTIFF declares as no data, one no class takes; the map's value at the pixels the
            scenes mark as no data or hold a NaN or infinite value at (a pixel of a stack is no data when it is in
            one scene). Needed for such scenes.
        probabilities: also write the probabilities, a GeoTIFF whatever ``output`` is.

    A GeoTIFF scene gives a GeoTIFF with the same CRS and transform. Memory: one strip of ``window`` rows (the
    probabilities of every class and the scene's bands and mask, over the full width) plus a batch of windows, for
    any scene height; a PNG output also holds the map, one byte a pixel. The windows without a pixel with data are
    not run (see :func:`~lemevit.inference.sliding_window.blended_strips`). The map is written after the probabilities:
    a map that exists is complete with them.
    """
    paths = [s if isinstance(s, BandScene) else scene_source(s) for s in scenes]
    output = Path(output)
    if output.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise ConfigError("output", f"must end in {', '.join(OUTPUT_EXTENSIONS)}, got {output}")
    for path in paths:
        if not isinstance(path, BandScene) and not is_remote(path) and not path.is_file():
            raise DataError(f"scene {path} does not exist" if not path.exists() else f"scene {path} is not a file")
    if not 1 <= len(palette) <= 256:
        raise ConfigError("palette", f"maps are written as 8-bit images: at most 256 values, got {len(palette)}")
    to_map = to_map or (lambda probs: probs.argmax(dim=0).to(torch.uint8))
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    with gdal_cache(_GDAL_CACHE_MB * len(paths)):
        source = SceneStack(paths, len(mean))
        try:
            named = " and ".join(str(s.path) for s in source.scenes)
            if source.bands != len(mean):
                alpha = [s for s in source.scenes if s.alpha is not None]
                note = (f" (band {alpha[0].alpha} of {alpha[0].path} is alpha: it is read as the mask when the model "
                        "expects the other bands)") if alpha else ""
                raise DataError(f"{named}: {source.bands} band(s), the model expects {len(mean)}{note}")
            if any(s.mask_declared for s in source.scenes) and nodata is None:
                raise ConfigError("nodata", f"{named} mark pixels as no data: the map needs a nodata value for them")
            if expected_dtype is not None:
                odd = [(s.path, s.dtype) for s in source.scenes if s.dtype != expected_dtype]
                if odd:
                    raise DataError(f"{odd[0][0]} holds {odd[0][1]} values, the model was trained on {expected_dtype} "
                                    f"images: its values would be normalised on the wrong scale; convert it to "
                                    f"{expected_dtype} first")
            height, width = source.height, source.width
            step = preview_step(height, width, preview_side)
            small_shape = (math.ceil(height / step), math.ceil(width / step))
            small_map = np.zeros(small_shape, np.uint8)
            small_scenes = [np.zeros((*small_shape, s.bands), s.dtype) for s in source.scenes]
            counts = np.zeros(256, np.int64)
            no_data = 0
            windows = len(window_starts(height, window, stride)) * len(window_starts(width, window, stride))

            def read_rows(top: int, bottom: int) -> torch.Tensor:
                rows = source.read(top, bottom)
                first = -top % step
                start = 0
                for scene, small in zip(source.scenes, small_scenes, strict=True):
                    kept = rows[start:start + scene.bands, first::step, ::step].transpose(1, 2, 0)
                    small[(top + first) // step:(top + first) // step + len(kept)] = kept
                    start += scene.bands
                return torch.from_numpy(rows)

            # The mask of the rows of the latest windows, by their top: the strip they give is its first rows.
            latest_valid: dict[int, np.ndarray | None] = {}

            def read_valid(top: int, bottom: int) -> torch.Tensor | None:
                latest_valid.clear()
                valid = latest_valid[top] = source.read_valid(top, bottom)
                return None if valid is None else torch.from_numpy(valid)

            def strip_valid(top: int, rows: int) -> np.ndarray | None:
                # A strip of no data given once a later one has been read (see blended_strips) is read again.
                valid = latest_valid[top] if top in latest_valid else source.read_valid(top, top + rows)
                return None if valid is None else valid[:rows]

            def normalise(batch: torch.Tensor) -> torch.Tensor:
                return batch.float().sub_(mean_t).div_(std_t)

            with ExitStack() as outputs:
                # The contexts close in reverse order: the probabilities are in place before the map is renamed.
                tmp = outputs.enter_context(atomic_path(output))
                writer = outputs.enter_context(ClassMapWriter(output, tmp, source, palette, value_names, nodata))
                if probabilities is not None:
                    probability_writer = outputs.enter_context(CogWriter(
                        probabilities.path, outputs.enter_context(atomic_path(probabilities.path)), source,
                        len(probabilities.names), probabilities.dtype, "average", probabilities.names,
                        nodata=probabilities.nodata))
                bar = outputs.enter_context(tqdm(total=windows, desc=f"predicting {source_name(paths[0])}",
                                                 unit="window", disable=not progress))
                for top, probs in blended_strips(read_rows, height, width, predict, window, stride, batch_size,
                                                 bar.update, normalise, read_valid):
                    values = to_map(probs).numpy()
                    valid = strip_valid(top, len(values))
                    if valid is not None and not valid.all():
                        if nodata is None:
                            raise ConfigError("nodata", f"{' and '.join(map(str, paths))} hold NaN or infinite "
                                                        "values: the map needs a nodata value for them")
                        values[~valid] = nodata
                        no_data += int(valid.size - np.count_nonzero(valid))
                    writer.write(top, values)
                    if probabilities is not None:
                        probability_writer.write(top, probabilities.values(probs, valid))
                    counts += np.bincount(values.ravel(), minlength=256)
                    # The preview keeps the rows and columns whose index is a multiple of the step.
                    first = -top % step
                    kept = values[first::step, ::step]
                    small_map[(top + first) // step:(top + first) // step + len(kept)] = kept
        finally:
            source.close()
    return ScenePrediction(output, height, width, windows, counts, step, small_map, small_scenes, no_data)
