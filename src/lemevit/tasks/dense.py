"""What the tasks that predict whole images by the sliding window share (segmentation, change detection):
window and stride options, and running the model over whole tiles and scenes."""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch.utils.data import Dataset

from lemevit.config.options import EvalOptions, InferenceOptions, Options, PredictOptions, RunConfig, option
from lemevit.data.transforms import check_scale_range
from lemevit.errors import ConfigError
from lemevit.inference.scene import (
    ProbabilityOutput,
    ScenePrediction,
    preview_path,
    probabilities_path,
    scene_outputs,
    vector_path,
)
from lemevit.inference.sliding_window import default_stride, softmax_predictor
from lemevit.io.bands import BandScene
from lemevit.io.images import TIFF_EXTENSIONS, optional_rasterio
from lemevit.io.lock import OutputLock
from lemevit.io.raster import GEO_HINT, PROBABILITY_DTYPES
from lemevit.io.vector import check_vector_output, check_vector_scenes, write_map_vectors
from lemevit.tasks.base import BaseTask
from lemevit.viz.webmap import scene_picture, value_overlay, webmap_path, write_map_page

__all__ = ["CropTrainingConfig", "SceneJobs", "SlidingWindowTask", "WindowEvalOptions", "WindowPredictOptions",
           "check_window", "first_item"]


def check_window(options: Options) -> None:
    """A positive ``window`` and ``stride``, the stride no larger than the window."""
    window, stride = options.window, options.stride
    if window is not None:
        options.check_positive("window")
    if stride is not None:
        options.check_positive("stride")
        if window is not None and stride > window:
            raise ConfigError("stride", f"{stride} is larger than the window ({window}): pixels between windows "
                                        "would never be predicted")


@dataclass(kw_only=True)
class CropTrainingConfig(RunConfig):
    """A run of a task that trains on random crops and validates whole images by the sliding window."""

    window: int | None = option(None, "sliding window of the validation (default img_size)")
    stride: int | None = option(None, "its stride (default 3/4 of the window)")
    flip: bool = option(True, "random flips of the crops")
    rotate90: bool = option(True, "random 90-degree rotations of the crops")
    scale_range: list[float] | None = option(None, "scale jitter: each crop is cut from the data resized by a factor "
                                                   "drawn uniformly in LOW..HIGH (mmsegmentation's recipes: 0.5 2.0)",
                                             nargs=2, metavar=("LOW", "HIGH"))
    photometric: bool = option(False, "random brightness, contrast, saturation and hue of the crops, each date of a "
                                      "pair its own (mmsegmentation's PhotoMetricDistortion; 3-band 8-bit images)")

    def __post_init__(self):
        super().__post_init__()
        check_window(self)
        check_scale_range(self.scale_range)


@dataclass(kw_only=True)
class WindowEvalOptions(EvalOptions):
    window: int | None = option(None, "sliding window (default: the run's)")
    stride: int | None = option(None, "its stride (default: 3/4 of the window given, else the run's)")

    def __post_init__(self):
        super().__post_init__()
        check_window(self)


@dataclass(kw_only=True)
class WindowPredictOptions(PredictOptions):
    window: int | None = option(None, "sliding window (default: the run's)")
    stride: int | None = option(None, "its stride (default: 3/4 of the window given, else the run's)")
    preview: bool = option(True, "write OUT_preview.png beside each map, downsampled for a look")
    overwrite: bool = option(False, "predict again the scenes whose outputs exist (by default they are kept, so that "
                                    "a predict that was stopped resumes where it was)")
    probabilities: bool = option(False, "also write OUT_probabilities.tif beside each map, a Cloud-Optimized GeoTIFF "
                                        "of the probabilities: a band per class (segmentation), the change "
                                        "probability (change)")
    probabilities_dtype: str = option("uint8", "their values: uint8 (0..255 for 0..1) or float16",
                                      choices=PROBABILITY_DTYPES)
    vector: str | None = option(None, "also polygonise each map (a GeoTIFF of a georeferenced scene): OUT.geojson "
                                      "(RFC 7946: WGS84 longitude/latitude) or OUT.gpkg (GeoPackage in the scene's "
                                      "CRS) for one scene, or geojson or gpkg for <map stem>.geojson|.gpkg beside each "
                                      "map", metavar="OUT.geojson|OUT.gpkg|geojson|gpkg")
    html: bool = option(False, "also write OUT.html beside each map: one self-contained page (it needs no network) "
                               "showing the scene with the map as a layer to switch on and off")
    min_area: float = option(0.0, "with --vector, drop the polygons smaller than this, in m²")
    simplify: float = option(0.0, "with --vector, simplify the polygons to this tolerance, in map units (0: the "
                                  "pixel edges)")
    # A scene of band files: a folder of *_B02.tif, a Sentinel-2 SAFE, a STAC Item (see lemevit.io.bands).
    bands: list[str] = option([], "of a scene of band files (a folder of *_B02.tif, a Sentinel-2 SAFE, a STAC Item), "
                                  "the bands the model takes, in order, by band (B04), asset key, name or common name "
                                  "(red) (default: the bands the model was trained on, else an Item's visual asset)",
                              metavar="NAME")
    resolution: float | None = option(None, "of a scene of band files, the pixel side of the grid its bands are "
                                            "resampled onto, in its CRS's units (default: the finest chosen band's)")
    reflectance_scale: float | None = option(None, "for a model trained on reflectance, the scale of the scenes' "
                                                   "values (reflectance = value * scale + offset; Sentinel-2: "
                                                   "0.0001) where the product says none")
    reflectance_offset: float | None = option(None, "with `reflectance_scale`, the offset (Sentinel-2 from "
                                                    "processing baseline 04.00: -0.1) (default 0)")

    def __post_init__(self):
        super().__post_init__()
        check_window(self)
        self.check_non_negative("min_area", "simplify")
        for name in ("resolution", "reflectance_scale"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(name, f"must be positive, got {value!r}")
        if self.reflectance_offset is not None and self.reflectance_scale is None:
            raise ConfigError("reflectance_offset", "goes with `reflectance_scale`: give both")
        if self.vector is None:
            for name in ("min_area", "simplify"):
                if getattr(self, name):
                    raise ConfigError(name, "applies to the polygons of `vector`: give it too")


class SceneJobs(Dataset):
    """``(index, *job)``: the scene-by-scene work of ``predict`` (a scene and its output), shared out over the
    devices."""

    def __init__(self, jobs: list[tuple]):
        self.jobs = jobs

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, index: int) -> tuple:
        return (index, *self.jobs[index])


def first_item(batch: list):
    """The one item of a batch of scene jobs, uncollated."""
    return batch[0]


class SlidingWindowTask(BaseTask):
    """A task that scores and predicts whole images by the blended sliding window: ``window`` defaults to the
    training crop size, ``stride`` to three quarters of the window (the published 512 / 384)."""

    batches_whole_images = True
    prediction_collate = staticmethod(first_item)
    #: What one prediction job is, as the summary counts them.
    item_noun: ClassVar[str] = "scene"

    #: Seconds spent running the network on windows (and moving them to and from its device), summed.
    model_seconds: float = 0.0

    def set_window(self, window: int | None, stride: int | None) -> None:
        self.window = window or self.hparams.img_size
        self.stride = stride or default_stride(self.window)

    def configure_inference(self, options: InferenceOptions) -> None:
        super().configure_inference(options)
        if options.window is not None:
            # A stride not given follows the window given, not the run's window.
            self.set_window(options.window, options.stride)
        elif options.stride is not None:
            if options.stride > self.window:
                raise ConfigError("stride", f"{options.stride} is larger than the run's window ({self.window})")
            self.stride = options.stride
        self.write_preview = getattr(options, "preview", False)
        self.overwrite = getattr(options, "overwrite", False)
        self.skip_bad = getattr(options, "skip_bad", False)
        self.write_probabilities = getattr(options, "probabilities", False)
        self.probabilities_dtype = getattr(options, "probabilities_dtype", "uint8")
        self.vector = getattr(options, "vector", None)
        self.write_html = getattr(options, "html", False)
        self.min_area, self.simplify = getattr(options, "min_area", 0.0), getattr(options, "simplify", 0.0)
        self.band_choice = {name: getattr(options, name, None) for name in
                            ("bands", "resolution", "reflectance_scale", "reflectance_offset")}

    def scene_bands(self, scene: Path | str | BandScene) -> Path | str | BandScene:
        """A scene as the model reads it: of a scene of band files, the bands it takes, in its order, scaled as
        it was trained (``bands``, else the bands it records, else an Item's visual asset); another scene as it
        is, which takes none of the band options."""
        choice = self.band_choice
        if not isinstance(scene, BandScene):
            given = [name for name, value in choice.items() if value]
            if given:
                raise ConfigError(given[0], f"applies to scenes of band files (a folder of *_B02.tif, a SAFE, a "
                                            f"STAC Item); {scene} is one image file")
            return scene
        hp = self.hparams
        return scene.select(choice["bands"] or (), trained=hp.get("band_names"), reflectance=hp.get("reflectance",
                                                                                                      False),
                            scale=choice["reflectance_scale"], offset=choice["reflectance_offset"],
                            resolution=choice["resolution"])

    def companion_outputs(self, output: Path) -> list[Path]:
        """The files written beside the map ``output``, as asked: its preview, probabilities, polygons and page."""
        return ([preview_path(output)] if self.write_preview else []) + \
            ([probabilities_path(output)] if self.write_probabilities else []) + \
            ([vector_path(output, self.vector)] if self.vector else []) + \
            ([webmap_path(output)] if self.write_html else [])

    def map_outputs(self, scenes: list[Path], output: Path, inputs: list[Path] | None = None) -> list[Path]:
        """:func:`~lemevit.inference.scene.scene_outputs` with the companions asked for, which must be writable:
        probabilities need rasterio; polygons GeoTIFF maps of georeferenced ``scenes`` (a pair's first date), and one
        file of them one scene."""
        targets = scene_outputs(scenes, output, inputs=inputs, companions=self.companion_outputs)
        if self.write_probabilities and optional_rasterio() is None:
            raise ConfigError("probabilities", f"they are written as GeoTIFF: {GEO_HINT}")
        if self.vector:
            if len(targets) > 1 and self.vector not in ("geojson", "gpkg"):
                raise ConfigError("vector", f"{len(targets)} maps: give the format, geojson or gpkg, to write the "
                                            f"polygons of each beside it, not the file {self.vector}")
            check_vector_output(vector_path(targets[0], self.vector), "vector")
            plain = [t for t in targets if t.suffix.lower() not in TIFF_EXTENSIONS]
            if plain:
                raise ConfigError("vector", f"polygons are read from GeoTIFF maps of georeferenced scenes, but "
                                            f"{plain[0]} is a PNG")
            check_vector_scenes(scenes, "vector")
        return targets

    def probability_output(self, output: Path, names: Sequence[str],
                           bands: Callable[[torch.Tensor], torch.Tensor] | None = None) -> ProbabilityOutput | None:
        """The probabilities to write beside the map ``output``, when asked."""
        if not self.write_probabilities:
            return None
        return ProbabilityOutput(probabilities_path(output), names, self.probabilities_dtype, bands)

    def write_vectors(self, output: Path, names: Mapping[int, str]) -> tuple[Path, int] | None:
        """Polygonise the regions of the values ``names`` of the map ``output`` into the file asked for (with the
        mean probability of each when the probabilities were written); returns it and its number of polygons."""
        if not self.vector:
            return None
        target = vector_path(output, self.vector)
        probabilities = probabilities_path(output) if self.write_probabilities else None
        return target, write_map_vectors(output, target, names, self.min_area, self.simplify, probabilities)

    def write_page(self, output: Path, result: ScenePrediction, layer: str, colours: Mapping[int, Sequence[int]],
                   names: Mapping[int, str], scenes: Sequence[str]) -> str | None:
        """With ``html``, the page of the map ``output`` (see :mod:`lemevit.viz.webmap`): the downsampled scenes of
        ``result`` as base layers named ``scenes``, and over them the overlay ``layer``, the map's values
        ``colours`` in their colour (the others transparent), with a legend of their ``names``; returns its path."""
        if not self.write_html:
            return None
        colours = {value: tuple(colour) for value, colour in colours.items()}
        pictures = {name: scene_picture(small) for name, small in zip(scenes, result.small_scenes, strict=True)}
        page = write_map_page(webmap_path(output), output.name, (result.height, result.width), pictures,
                              {layer: value_overlay(result.small_map, colours)},
                              legend=[(names[value], colour) for value, colour in colours.items()])
        return str(page)

    @staticmethod
    def no_data_left_out(record: dict) -> str:
        """``, N pixels of no data (P %) left out``: what a scene's record says of its pixels of no data (its nodata
        value, mask or alpha, NaN or infinite values), which the map gives its nodata value; empty without any."""
        pixels = record.get("no_data_pixels", 0)
        if not pixels:
            return ""
        return f", {pixels:,} pixels of no data ({pixels / (record['height'] * record['width']):.1%}) left out"

    @staticmethod
    def companions_written(record: dict) -> str:
        """`` (preview P, probabilities Q, N polygons in V, page H)``: what a scene's record says was written beside
        its map."""
        parts = [f"preview {record['preview']}"] if record["preview"] else []
        if record["probabilities"]:
            parts.append(f"probabilities {record['probabilities']}")
        if record["vector"]:
            parts.append(f"{record['vector'][1]:,} polygons in {record['vector'][0]}")
        if record.get("html"):
            parts.append(f"page {record['html']}")
        return f" ({', '.join(parts)})" if parts else ""

    @classmethod
    def interrupted_prediction(cls, output: Path) -> str:
        return (f"the maps written to {output} are complete (each is written whole); run the same command again to "
                "predict the others (it keeps those)")

    def written(self, output: Path) -> bool:
        """Whether the map ``output`` and every file asked for beside it (preview, probabilities, polygons, page)
        are there. Outputs are written atomically, so one that exists is complete."""
        return output.is_file() and all(p.is_file() for p in self.companion_outputs(output))

    def pending_jobs(self, jobs: list[tuple], options: WindowPredictOptions) -> SceneJobs:
        """The jobs (their output last) still to do: every job with ``overwrite``, else those whose outputs are not
        all there yet."""
        self._kept = []
        self._prediction_seconds = 0.0
        if options.overwrite:
            return SceneJobs(jobs)
        pending = []
        for job in jobs:
            output = Path(job[-1])
            if self.written(output):
                self._kept.append(output)
            else:
                pending.append(job)
        return SceneJobs(pending)

    def predict_claimed(self, index: int, output: Path, predict: Callable[[], dict]) -> None:
        """Record ``predict()``, which writes the map ``output``, unless another process predicting into the same
        folder is writing that map (it is left to it) or wrote it since this prediction began (it is kept): each
        map is locked while it is written (:class:`~lemevit.io.lock.OutputLock`), so that predicts run together
        share the scenes out instead of each predicting all of them."""
        lock = OutputLock(output)
        holder = lock.try_acquire()
        if holder is not None:
            self._records.append((index, {"output": str(output), "elsewhere": f"process {holder[1]} on {holder[0]}"}))
            return
        try:
            if not self.overwrite and self.written(output):
                self._records.append((index, {"output": str(output), "kept": True}))
                return
            self._records.append((index, predict()))
        finally:
            lock.release()

    def on_predict_epoch_start(self) -> None:
        super().on_predict_epoch_start()
        self._started = time.perf_counter()

    def on_predict_epoch_end(self) -> None:
        super().on_predict_epoch_end()
        # After the gather, which waits for every process: the wall-clock time of the whole prediction.
        self._prediction_seconds = time.perf_counter() - self._started

    def prediction_summary(self, records: list[dict]) -> str:
        """One line: the scenes predicted and kept, their pixels, the time and the throughput, and the share of the
        time the network took (over every process: the rest is reading, normalising, blending and writing)."""
        done = [r for r in records if "height" in r]
        pixels = sum(r["height"] * r["width"] for r in done) / 1e6
        seconds = self._prediction_seconds
        kept = f", {len(self._kept)} kept from an earlier run (--overwrite predicts them again)" if self._kept else ""
        meanwhile = sum("kept" in r for r in records)
        if meanwhile:
            kept += f", {meanwhile} written meanwhile by another predict"
        elsewhere = [r["elsewhere"] for r in records if "elsewhere" in r]
        if elsewhere:
            kept += f", {len(elsewhere)} left to another predict writing them ({', '.join(sorted(set(elsewhere)))})"
        rate = ""
        if done and seconds > 0:
            share = sum(r["model_seconds"] for r in done) / (seconds * self.trainer.world_size)
            rate = f" ({pixels / seconds:.2f} Mpx/s; the network {share:.0%} of the time)"
        return f"{len(done)} {self.item_noun}(s) predicted{kept}: {pixels:.1f} Mpx in {seconds:.1f} s{rate}"

    def predict_map(self, scenes: Sequence[Path | str], output: Path) -> dict:
        """Write the map of one input (the scene of a segmentation, the dates of a change pair) to ``output``, with
        the companions asked for; returns what ``predict`` reports of it (its size, its values' pixels, the files
        written). ``predict`` and ``serve`` both make their maps through it."""
        raise NotImplementedError

    def window_predictor(self, network: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
        """Windows ``(B, C, h, w)`` → class probabilities on the CPU: ``network``'s softmax, or the probabilities of
        the ONNX graph when eval or predict run on onnxruntime. The time spent in it adds to ``model_seconds``."""
        predict = softmax_predictor(network) if self.runtime_network is None else self.runtime_network

        def timed(windows: torch.Tensor) -> torch.Tensor:
            started = time.perf_counter()
            probabilities = predict(windows)
            self.model_seconds += time.perf_counter() - started
            return probabilities

        return timed

    def evaluation_dataset(self, root: Path, items: list) -> Dataset:
        raise NotImplementedError
