"""Whole-scene prediction of the dense tasks: the sliding window over one scene (segmentation) or a stack of
co-registered scenes (the dates of a change pair) of any size, read and written strip by strip.

GeoTIFF scenes are read and written through rasterio windows, so that neither the scene nor its class map is
held in memory whole; the class map, a Cloud-Optimized GeoTIFF, keeps the scene's CRS and transform, and so do
the probabilities written beside it when asked.
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
from lemevit.io.paths import check_distinct_names, check_outputs_spare_inputs, check_writable_folder
from lemevit.io.raster import OUTPUT_EXTENSIONS, ClassMapWriter, CogWriter, SceneStack, gdal_cache

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


def scene_outputs(scenes: Sequence[Path], output: Path, argument: str = "output",
                  inputs: Sequence[Path] | None = None,
                  companions: Callable[[Path], Sequence[Path]] = lambda map_path: [preview_path(map_path)]
                  ) -> list[Path]:
    """Where each scene's map goes: one scene to a named file; several (or a folder) to ``output/<stem>.tif|.png``,
    keeping the scene's format. Names that would collide, and outputs (maps and the ``companions`` of each, by
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
        targets = [output / (s.stem + (".tif" if s.suffix.lower() in (".tif", ".tiff") else ".png")) for s in scenes]
    check_outputs_spare_inputs(inputs or scenes, targets + [p for t in targets for p in companions(t)], argument)
    return targets


@dataclass(frozen=True)
class ProbabilityOutput:
    """The probabilities :func:`predict_scene` writes beside its map: a Cloud-Optimized GeoTIFF at ``path``, a
    band per name, of ``dtype`` (one of :data:`~lemevit.io.raster.PROBABILITY_DTYPES`: uint8 0..255 for 0..1, or
    float16), with overviews by averaging. ``bands`` picks them from the ``(K, rows, width)`` probabilities
    (default: every class)."""

    path: Path
    names: Sequence[str]
    dtype: str = "uint8"
    bands: Callable[[torch.Tensor], torch.Tensor] | None = None

    def values(self, probs: torch.Tensor) -> np.ndarray:
        """The stored values of the probabilities of a strip."""
        picked = probs if self.bands is None else self.bands(probs)
        if self.dtype == "uint8":
            return picked.mul(255).round_().to(torch.uint8).numpy()
        return picked.numpy()


@dataclass
class ScenePrediction:
    """What :func:`predict_scene` wrote and saw: the map's size, its windows, the pixels of each map value, and,
    for a preview, the map and each scene downsampled by ``preview_step`` (every ``step``-th row and column)."""

    output: Path
    height: int
    width: int
    windows: int
    value_pixels: np.ndarray
    preview_step: int
    small_map: np.ndarray
    small_scenes: list[np.ndarray]


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
            dates of a change pair).
        mean, std: per band of the stacked input, in the scenes' own value scale.
        palette: an RGB colour per map value: the GeoTIFF's colour table.
        to_map: ``(K, rows, width)`` probabilities → ``(rows, width)`` uint8 map values (default: the most probable
            class).
        preview_side: the longest side of the downsampled map and scenes kept for a preview.
        expected_dtype: the data type the model was trained on; a scene of another type is refused, since its
            values would be normalised on the wrong scale.
        value_names: ``{value: name}`` of the map values, the GeoTIFF's band description (``0=name, 1=...``).
        nodata: the value the GeoTIFF declares as no data, one no class takes.
        probabilities: also write the probabilities, a GeoTIFF whatever ``output`` is.

    A GeoTIFF scene gives a GeoTIFF with the same CRS and transform. Memory: one strip of ``window`` rows (the
    probabilities of every class and the scene's bands, over the full width) plus a batch of windows, for any
    scene height; a PNG output also holds the map, one byte a pixel. The map is written after the probabilities:
    a map that exists is complete with them.
    """
    paths, output = [Path(s) for s in scenes], Path(output)
    if output.suffix.lower() not in OUTPUT_EXTENSIONS:
        raise ConfigError("output", f"must end in {', '.join(OUTPUT_EXTENSIONS)}, got {output}")
    for path in paths:
        if not path.is_file():
            raise DataError(f"scene {path} does not exist" if not path.exists() else f"scene {path} is not a file")
    if not 1 <= len(palette) <= 256:
        raise ConfigError("palette", f"maps are written as 8-bit images: at most 256 values, got {len(palette)}")
    to_map = to_map or (lambda probs: probs.argmax(dim=0).to(torch.uint8))
    mean_t = torch.tensor(mean, dtype=torch.float32)[:, None, None]
    std_t = torch.tensor(std, dtype=torch.float32)[:, None, None]
    with gdal_cache(_GDAL_CACHE_MB * len(paths)):
        source = SceneStack(paths)
        try:
            if source.bands != len(mean):
                raise DataError(f"{' and '.join(map(str, paths))}: {source.bands} band(s), the model expects "
                                f"{len(mean)}")
            if expected_dtype is not None:
                odd = [(p, d) for p, d in zip(paths, source.dtypes, strict=True) if d != expected_dtype]
                if odd:
                    raise DataError(f"{odd[0][0]} holds {odd[0][1]} values, the model was trained on {expected_dtype} "
                                    f"images: its values would be normalised on the wrong scale; convert it to "
                                    f"{expected_dtype} first")
            height, width = source.height, source.width
            step = max(1, math.ceil(max(height, width) / preview_side))
            small_shape = (math.ceil(height / step), math.ceil(width / step))
            small_map = np.zeros(small_shape, np.uint8)
            small_scenes = [np.zeros((*small_shape, s.bands), s.dtype) for s in source.scenes]
            counts = np.zeros(256, np.int64)
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

            def normalise(batch: torch.Tensor) -> torch.Tensor:
                return batch.float().sub_(mean_t).div_(std_t)

            with ExitStack() as outputs:
                # The contexts close in reverse order: the probabilities are in place before the map is renamed.
                tmp = outputs.enter_context(atomic_path(output))
                writer = outputs.enter_context(ClassMapWriter(output, tmp, source, palette, value_names, nodata))
                if probabilities is not None:
                    probability_writer = outputs.enter_context(CogWriter(
                        probabilities.path, outputs.enter_context(atomic_path(probabilities.path)), source,
                        len(probabilities.names), probabilities.dtype, "average", probabilities.names))
                bar = outputs.enter_context(tqdm(total=windows, desc=f"predicting {paths[0].name}", unit="window",
                                                 disable=not progress))
                for top, probs in blended_strips(read_rows, height, width, predict, window, stride, batch_size,
                                                 bar.update, normalise):
                    values = to_map(probs).numpy()
                    writer.write(top, values)
                    if probabilities is not None:
                        probability_writer.write(top, probabilities.values(probs))
                    counts += np.bincount(values.ravel(), minlength=256)
                    # The preview keeps the rows and columns whose index is a multiple of the step.
                    first = -top % step
                    kept = values[first::step, ::step]
                    small_map[(top + first) // step:(top + first) // step + len(kept)] = kept
        finally:
            source.close()
    return ScenePrediction(output, height, width, windows, counts, step, small_map, small_scenes)
