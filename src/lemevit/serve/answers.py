"""What ``serve`` answers for each task, computed by the code ``predict`` runs: a request is answered as
``lemevit predict`` at its defaults answers one input, the request's image written to a file first.

Why a file rather than bytes in memory: every reader ``predict`` uses takes a path (PIL and rasterio open by name,
a GeoTIFF is read window by window so that a large scene is never held whole, and its georeference comes from the
file), so the one code path stays one; the body is streamed to disk as it arrives, bounded, and removed after the
answer.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from lemevit.config.options import PredictOptions
from lemevit.errors import ConfigError, DataError, LemevitError
from lemevit.io.raster import read_by_gdal
from lemevit.tasks.base import BaseTask

__all__ = ["ANSWERS", "Request", "RequestTimedOut", "TaskAnswers", "answers_for", "refusal"]

JSON = "application/json"
GEOJSON = "application/geo+json"
TIFF = "image/tiff"
PNG = "image/png"


class RequestTimedOut(Exception):
    """The request's deadline passed while the worker was on it: the work stops at the next forward pass."""


@dataclass
class Request:
    """One request as a worker gets it: the local file of each image part (``{"image": PATH}``, ``{"a": PATH,
    "b": PATH}``), the media type asked for (None: the task's default for the input), a folder of its own for
    what is written, and the time (``time.time()``) after which nobody waits for the answer."""

    inputs: dict[str, str]
    accept: str | None
    folder: str
    deadline: float

    def check_deadline(self) -> None:
        if time.time() > self.deadline:
            raise RequestTimedOut


def refusal(status: int, error: str) -> dict:
    """An answer refusing a request: its HTTP status and one line saying why."""
    return {"status": status, "error": " ".join(error.split())}


def _json(content: Any) -> dict:
    return {"status": 200, "json": content}


class _Deadlines:
    """Raises :class:`RequestTimedOut` from the next forward pass of the network once the deadline of the request
    being answered has passed: a timed-out request frees its worker at the next window rather than at its end."""

    def __init__(self, module: BaseTask):
        self.deadline: float | None = None
        for network in (module.model, module.runtime_network):
            if isinstance(network, torch.nn.Module):
                network.register_forward_pre_hook(self._check)

    def _check(self, *_) -> None:
        if self.deadline is not None and time.time() > self.deadline:
            raise RequestTimedOut

    @contextmanager
    def of(self, request: Request):
        self.deadline = request.deadline
        try:
            yield
        finally:
            self.deadline = None


class TaskAnswers:
    """How ``serve`` answers the requests of one task: the image parts a request carries, the media types it can
    answer with, the ``predict`` options it answers as, and the answers of a batch of requests."""

    task: ClassVar[str]
    #: The image parts of a request (multipart field names); a request of one image may also be its bare body.
    parts: ClassVar[tuple[str, ...]] = ("image",)
    #: The media types of the answers, the first the default.
    media_types: ClassVar[tuple[str, ...]]

    def predict_options(self, task: type[BaseTask], **common) -> PredictOptions:
        """The options of ``lemevit predict`` of one input at its defaults (``common``: checkpoint, runtime,
        accelerator), whose inference settings (window, stride, batch) ``serve`` takes."""
        raise NotImplementedError

    def setup(self, module: BaseTask, options: PredictOptions) -> None:
        self.module, self.options = module, options
        self.deadlines = _Deadlines(module)

    def answer(self, requests: Sequence[Request]) -> list[dict]:
        """The answer to each request: ``{"status": 200, "json": ...}``, ``{"status": 200, "file": PATH,
        "media_type": ...}`` or a :func:`refusal`. One bad request spoils no other."""
        return [self._guarded(request, lambda r=request: self.answer_one(r)) for request in requests]

    def answer_one(self, request: Request) -> dict:
        raise NotImplementedError

    def _guarded(self, request: Request, work) -> dict:
        """``work()`` for ``request`` until its deadline (504 past it); its input errors turned into 400s that name
        the uploaded file, not where the server keeps it."""
        try:
            request.check_deadline()
            with self.deadlines.of(request):
                return work()
        except RequestTimedOut:
            return refusal(504, "the request ran past the server's --timeout")
        except LemevitError as e:
            message = str(e)
            for path in request.inputs.values():
                message = message.replace(path, f"the uploaded {Path(path).name}")
            return refusal(400, message)


class ClassificationAnswers(TaskAnswers):
    """``{"top_k": [{"class": NAME, "probability": P}, ...]}``: the classes and probabilities of ``predict``'s
    JSON (its ``--topk``, 5). Requests batched together run through the network as one batch."""

    task = "classification"
    media_types = (JSON,)

    def predict_options(self, task, **common):
        return task.predict_options(output="top.json", inputs=["request"], **common)

    def answer(self, requests: Sequence[Request]) -> list[dict]:
        answers: list[dict | None] = [None] * len(requests)
        images = []
        for i, request in enumerate(requests):
            loaded = self._guarded(request, lambda r=request: {"image": self.module.load_image(
                Path(r.inputs["image"]))})
            if "image" in loaded:
                images.append((i, loaded["image"]))
            else:
                answers[i] = loaded
        if images:
            with torch.inference_mode():
                probs = self.module.probabilities(torch.stack([x for _, x in images]).to(self.module.device))
            for (i, _), p in zip(images, probs, strict=True):
                top = self.module.top_classes(p, self.options.topk)
                answers[i] = _json({"top_k": [{"class": t["class"], "probability": t["prob"]} for t in top]})
        return answers


class MapAnswers(TaskAnswers):
    """The map ``predict`` writes, as a Cloud-Optimized GeoTIFF (georeferenced when the input was) or a PNG, or
    its statistics as JSON (``Accept: application/json``); by default a GeoTIFF for a TIFF input, else a PNG, as
    ``predict`` names a folder's maps."""

    media_types = (TIFF, PNG, JSON)

    def answer_one(self, request: Request) -> dict:
        scenes = [request.inputs[part] for part in self.parts]
        media_type = request.accept or (TIFF if read_by_gdal(scenes[0]) else PNG)
        output = Path(request.folder) / ("map.tif" if media_type == TIFF else "map.png")
        record = self.module.predict_map(scenes, output)
        if media_type == JSON:
            return _json(self.statistics(record))
        return {"status": 200, "file": str(output), "media_type": media_type}

    def statistics(self, record: dict) -> dict:
        raise NotImplementedError


class SegmentationAnswers(MapAnswers):
    task = "segmentation"

    def predict_options(self, task, **common):
        return task.predict_options(output="map.tif", inputs=["request"], preview=False, **common)

    def statistics(self, record: dict) -> dict:
        names = self.module.label_names()
        return {"width": record["width"], "height": record["height"],
                "class_pixels": dict(zip(names, record["class_pixels"], strict=True))}


class ChangeAnswers(MapAnswers):
    task = "change"
    parts = ("a", "b")

    def predict_options(self, task, **common):
        return task.predict_options(output="map.tif", pair=["a", "b"], preview=False, **common)

    def statistics(self, record: dict) -> dict:
        return {"width": record["width"], "height": record["height"], "changed_pixels": record["changed_pixels"],
                "threshold": self.module.threshold}


class DetectionAnswers(TaskAnswers):
    """The oriented boxes ``predict`` finds: GeoJSON (RFC 7946, WGS84), the features ``predict`` writes, for a
    georeferenced GeoTIFF; else, or with ``Accept: application/json``, ``{"objects": [{"class", "score",
    "corners"}]}`` with the four corners in pixels."""

    task = "detection"
    media_types = (GEOJSON, JSON)

    def predict_options(self, task, **common):
        return task.predict_options(output="boxes", inputs=["request"], **common)

    def answer_one(self, request: Request) -> dict:
        from lemevit.io.vector import write_detection_vectors

        path = Path(request.inputs["image"])
        scene = self.module.open_scene(path)
        try:
            quads, scores, labels = self.module.detect(scene)
        finally:
            scene.close()
        names = self.module.class_names
        if request.accept != JSON:
            vectors = Path(request.folder) / "boxes.geojson"
            if write_detection_vectors(path, quads, labels, scores, names, vectors):
                return {"status": 200, "file": str(vectors), "media_type": GEOJSON}
            if request.accept == GEOJSON:
                raise _not_on_the_ground(path)
        return _json({"objects": [{"class": names[int(label)], "score": float(score),
                                   "corners": np.asarray(quad, np.float64).tolist()}
                                  for quad, score, label in zip(quads, scores, labels, strict=True)]})


class PanopticAnswers(TaskAnswers):
    """The segments ``predict`` finds: GeoJSON (RFC 7946, WGS84) of their polygons, as ``predict --vector geojson``
    writes them, for a georeferenced GeoTIFF; else, or with ``Accept: application/json``, the segments JSON
    ``predict`` writes (COCO's ``segments_info``: category, area, box in pixels, score)."""

    task = "panoptic"
    media_types = (GEOJSON, JSON)

    def predict_options(self, task, **common):
        return task.predict_options(output="panoptic", inputs=["request"], **common)

    def answer_one(self, request: Request) -> dict:
        path = Path(request.inputs["image"])
        record = self.module.predict_image(path, *self.module.load_image(path), Path(request.folder),
                                           None if request.accept == JSON else "geojson")
        if record["vectors"] is not None:
            return {"status": 200, "file": record["vectors"], "media_type": GEOJSON}
        if request.accept == GEOJSON:
            raise _not_on_the_ground(path)
        return _json(record["segments"])


def _not_on_the_ground(path: Path) -> DataError:
    return DataError(f"{path} is not a georeferenced GeoTIFF: what was found in it has no place on the ground; ask "
                     "for application/json (pixel coordinates)")


ANSWERS: dict[str, type[TaskAnswers]] = {a.task: a for a in (ClassificationAnswers, SegmentationAnswers,
                                                                ChangeAnswers, DetectionAnswers, PanopticAnswers)}


def answers_for(task: str) -> TaskAnswers:
    """How ``serve`` answers the requests of a model of ``task``."""
    if task not in ANSWERS:
        raise ConfigError("checkpoint", f"serving a {task} model is not available: lemevit serve answers "
                                        f"{', '.join(ANSWERS)} models")
    return ANSWERS[task]()
