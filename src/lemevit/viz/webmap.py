"""A look at a prediction in a web browser: one HTML page holding everything it shows (Leaflet, the scene, the
prediction), so that it opens from disk, is mailed or archived as one file, and makes no network request.

The map is in the scene's pixels (Leaflet's ``CRS.Simple``, one unit a pixel, ``y`` pointing down as ``-lat``), which
suits plain images and georeferenced scenes alike and needs no tiles from a server. The scene is a base layer (or
several: the dates of a change pair) and the prediction an overlay the layer control switches on and off: a raster
(class or change map, see :func:`value_overlay`) or polygons (oriented boxes, see :class:`Polygon`).

Leaflet 1.9.4 is vendored from the npm registry in ``webmap_assets/`` (BSD-2-Clause, its LICENSE beside it and
repeated in every page). The page reports what it drew in the attributes of its ``#lemevit-status`` element (the
overlays drawn, the errors seen, the resources fetched other than ``data:`` URIs) for a headless browser to check.
"""
from __future__ import annotations

import base64
import html
import io
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from lemevit.errors import ConfigError
from lemevit.io.atomic import atomic_path
from lemevit.viz import class_colours, display_uint8, preview_step

__all__ = ["PAGE_SIDE", "Polygon", "map_page", "scene_picture", "value_overlay", "webmap_path", "write_detection_page",
           "write_map_page"]

_ASSETS = Path(__file__).with_name("webmap_assets")

#: The longest side, in pixels, of the images a page embeds: enough to look at a scene, light enough to open.
PAGE_SIDE = 2048


def webmap_path(output: str | Path) -> Path:
    """Where the page of the prediction ``output`` (a map, a drawn image) is written: ``<stem>.html`` beside it."""
    return Path(output).with_suffix(".html")


@dataclass(frozen=True)
class Polygon:
    """A shape of a polygon overlay: its corners ``(x, y)`` in the scene's pixels, its colour and the text of its
    popup."""

    corners: Sequence[Sequence[float]]
    colour: Sequence[int]
    label: str


def scene_picture(image: np.ndarray) -> np.ndarray:
    """A ``(H, W, C)`` image of any type → the uint8 RGB picture of it a page embeds, its longest side at most
    :data:`PAGE_SIDE` (as :func:`~lemevit.viz.display_rgb` shows it, every ``step``-th row and column)."""
    step = preview_step(image.shape[0], image.shape[1], PAGE_SIDE)
    return display_uint8(image[::step, ::step])


def value_overlay(values: np.ndarray, colours: Mapping[int, Sequence[int]]) -> np.ndarray:
    """A ``(H, W)`` map of values → ``(H, W, 4)`` RGBA: ``colours[v]`` where the map is ``v``, transparent
    elsewhere (values not shown: no change, no data)."""
    rgba = np.zeros((*values.shape, 4), np.uint8)
    for value, colour in colours.items():
        rgba[values == value] = (*colour, 255)
    return rgba


def _hex(colour: Sequence[int]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in colour)


def _data_uri(image: np.ndarray, lossy: bool) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    # A scene is a photograph: JPEG keeps it about a ninth of a PNG's size (a Potsdam tile: 43 kB against 389 kB).
    # Overlays are flat colours with transparency, which PNG keeps exact and small.
    kind = "jpeg" if lossy else "png"
    Image.fromarray(image).save(buffer, format=kind, **({"quality": 85} if lossy else {}))
    return f"data:image/{kind};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


@cache
def _leaflet() -> tuple[str, str, str]:
    """Leaflet's script, its style sheet with its images as ``data:`` URIs, and its licence."""
    def inline(match: re.Match) -> str:
        image = _ASSETS / match.group(1)
        return f"url(data:image/png;base64,{base64.b64encode(image.read_bytes()).decode('ascii')})"

    css = re.sub(r"url\((images/[\w.-]+\.png)\)", inline, (_ASSETS / "leaflet.css").read_text(encoding="utf-8"))
    return ((_ASSETS / "leaflet.js").read_text(encoding="utf-8"), css,
            (_ASSETS / "LICENSE").read_text(encoding="utf-8"))


def _script_json(value) -> str:
    # Inside <script>, "</script" would close the element and "<!--" change how the rest is parsed: no "<" is left
    # as it is, JSON reads "\u003c" as one.
    return json.dumps(value, separators=(",", ":")).replace("<", "\\u003c")


# Set up before Leaflet, so that an error while it loads is seen too.
_WATCH = """
const lemevitErrors = [];
addEventListener("error", (e) => lemevitErrors.push(e.message || "failed to load " + (e.target.src || e.target.href)),
                 true);
addEventListener("unhandledrejection", (e) => lemevitErrors.push(String(e.reason)));
const lemevitConsoleError = console.error;
console.error = (...args) => { lemevitErrors.push(args.join(" ")); lemevitConsoleError(...args); };
"""

# In a block, so that its names (status, map, ...) stay out of the window's.
_PAGE_SCRIPT = """{
const data = JSON.parse(document.getElementById("lemevit-data").textContent);
const status = document.getElementById("lemevit-status");
const drawn = new Set();
function report() {
  status.dataset.overlays = JSON.stringify([...drawn].sort());
  status.dataset.errors = JSON.stringify(lemevitErrors);
  status.dataset.fetched = JSON.stringify(performance.getEntriesByType("resource").map((r) => r.name)
                                          .filter((name) => !name.startsWith("data:")));
}
const [height, width] = data.size;
const bounds = [[-height, 0], [0, width]];
// Zoomed out far enough to see the whole of any scene; in to 16 screen pixels a scene pixel.
const map = L.map("map", {crs: L.CRS.Simple, attributionControl: false, zoomSnap: 0.25,
                          minZoom: -Math.ceil(Math.log2(Math.max(height, width))), maxZoom: 4});
const bases = {};
data.bases.forEach((base, i) => {
  bases[base.name] = L.imageOverlay(base.image, bounds);
  if (i === 0) bases[base.name].addTo(map);
});
const overlays = {};
for (const overlay of data.overlays) {
  const layer = L.imageOverlay(overlay.image, bounds, {opacity: 0.6, className: "lemevit-values"});
  layer.on("load", () => { drawn.add(overlay.name); report(); });
  layer.on("remove", () => { drawn.delete(overlay.name); report(); });
  overlays[overlay.name] = layer.addTo(map);
}
if (data.polygons) {
  const group = L.featureGroup(data.polygons.shapes.map((shape) => {
    const text = document.createElement("span");
    text.textContent = shape.label;  // a class name is text, never markup
    return L.polygon(shape.corners.map(([x, y]) => [-y, x]), {color: shape.colour, weight: 2, fillOpacity: 0.15})
      .bindPopup(text);
  }));
  group.on("add", () => { drawn.add(data.polygons.name); report(); });
  group.on("remove", () => { drawn.delete(data.polygons.name); report(); });
  overlays[data.polygons.name] = group.addTo(map);
}
L.control.layers(bases, overlays, {collapsed: false}).addTo(map);
if (data.legend.length) {
  const legend = L.control({position: "bottomright"});
  legend.onAdd = () => {
    const box = L.DomUtil.create("div", "lemevit-legend");
    for (const [name, colour] of data.legend) {
      const row = L.DomUtil.create("div", "", box);
      L.DomUtil.create("i", "", row).style.background = colour;
      row.append(name);
    }
    return box;
  };
  legend.addTo(map);
}
map.fitBounds(bounds);
report();
addEventListener("load", report);
}"""

_STYLE = """
html, body, #map { height: 100%; margin: 0; background: #222; }
.lemevit-values { image-rendering: pixelated; }  /* zoomed in, a map's pixels stay the classes' flat squares */
.lemevit-legend { background: rgba(255, 255, 255, 0.9); padding: 6px 8px; border-radius: 4px; font: 12px sans-serif;
                  max-height: 50vh; overflow-y: auto; }
.lemevit-legend i { display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: middle; }
"""


def map_page(title: str, size: tuple[int, int], bases: Mapping[str, np.ndarray],
             overlays: Mapping[str, np.ndarray] | None = None, polygons: Sequence[Polygon] = (),
             polygons_name: str = "boxes", legend: Sequence[tuple[str, Sequence[int]]] = ()) -> str:
    """The HTML of a page showing a scene of ``size`` ``(height, width)`` pixels and a prediction over it.

    Args:
        bases: the scene's pictures by layer name, ``(h, w, 3)`` uint8 RGB at any scale (they are stretched over the
            scene), the first shown; keep them small (see :data:`PAGE_SIDE`): they are embedded in the page.
        overlays: prediction rasters by layer name, ``(h, w, 4)`` uint8 RGBA, drawn semi-transparent.
        polygons: shapes in the scene's pixels, the overlay ``polygons_name`` (no layer when there are none).
        legend: ``(name, RGB)`` rows of a legend.
    """
    overlays = overlays or {}
    if not bases:
        raise ConfigError("bases", "a page shows a scene: give at least one picture of it")
    for name, image in {**bases, **overlays}.items():
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] not in (3, 4):
            raise ConfigError("overlays" if name in overlays else "bases",
                              f"{name!r} must be an (h, w, 3|4) uint8 image, got {image.dtype} {image.shape}")
    data = {
        "size": [int(size[0]), int(size[1])],
        "bases": [{"name": name, "image": _data_uri(image, lossy=True)} for name, image in bases.items()],
        "overlays": [{"name": name, "image": _data_uri(image, lossy=False)} for name, image in overlays.items()],
        "polygons": {"name": polygons_name, "shapes": [
            {"corners": [[round(float(x), 1), round(float(y), 1)] for x, y in p.corners], "colour": _hex(p.colour),
             "label": p.label} for p in polygons]} if polygons else None,
        "legend": [[name, _hex(colour)] for name, colour in legend],
    }
    script, css, licence = _leaflet()
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{css}</style>
<style>{_STYLE}</style>
<script>{_WATCH}</script>
<!-- Leaflet 1.9.4, under this licence:
{html.escape(licence).replace("--", "- -")}-->
<script>{script}</script>
</head>
<body>
<div id="map"></div>
<output id="lemevit-status" hidden></output>
<script type="application/json" id="lemevit-data">{_script_json(data)}</script>
<script>{_PAGE_SCRIPT}</script>
</body>
</html>
"""


def write_map_page(path: str | Path, *args, **kwargs) -> Path:
    """Write :func:`map_page` (the same arguments) to ``path``, atomically; returns ``path``."""
    path = Path(path)
    page = map_page(*args, **kwargs)
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def write_detection_page(path: str | Path, image: np.ndarray, quads: np.ndarray, labels: np.ndarray,
                         scores: np.ndarray, class_names: Sequence[str]) -> Path:
    """Write the page of a detection: the ``(H, W, C)`` ``image`` and its oriented boxes (``(n, 4, 2)`` corners in
    pixels) as the overlay "boxes", each in its class's colour (those of :func:`~lemevit.viz.draw_oriented_boxes`)
    with its class and score in a popup, and a legend of the classes found; returns ``path``."""
    colours = class_colours(len(class_names))
    shapes = [Polygon(quad.tolist(), colours[int(label)], f"{class_names[int(label)]} {score:.2f}")
              for quad, label, score in zip(quads, labels, scores, strict=True)]
    found = sorted({int(label) for label in labels})
    return write_map_page(path, Path(path).stem, image.shape[:2], {"scene": scene_picture(image)}, polygons=shapes,
                          polygons_name="boxes", legend=[(class_names[i], colours[i]) for i in found])
