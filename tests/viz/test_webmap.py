"""The pages `predict --html` writes: one self-contained file (no remote resource), its layers named, and in
headless Chromium the scene and the prediction drawn without an error or a network request."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lemevit.errors import ConfigError
from lemevit.viz.webmap import PAGE_SIDE, Polygon, map_page, scene_picture, value_overlay, write_detection_page

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (.ci/run installs "
                                                              "Debian's chromium package)")


class _Resources(HTMLParser):
    """The URLs a page's elements load (src, href) and those its style sheets name (url(...))."""

    def __init__(self):
        super().__init__()
        self.urls: list[str] = []
        self.tags: list[str] = []
        self._in_style = False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self._in_style = tag == "style"
        self.urls += [value for name, value in attrs if name in ("src", "href", "srcset", "poster", "data")]

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        if self._in_style:
            self.urls += [u.strip("'\"") for u in re.findall(r"url\(([^)]*)\)", data)]


def resources(page: str) -> _Resources:
    parser = _Resources()
    parser.feed(page)
    return parser


def page_data(page: str) -> dict:
    payload = re.search(r'<script type="application/json" id="lemevit-data">(.*?)</script>', page, re.S).group(1)
    return json.loads(payload)


def scene(height: int = 120, width: int = 160) -> np.ndarray:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    image[20:60, 30:90] = (210, 200, 40)
    return image


def classes_page(title: str = "scene.tif") -> str:
    classes = np.zeros((120, 160), np.uint8)
    classes[40:100, 60:140] = 1
    classes[:10] = 255  # no data: transparent
    colours = {0: (0, 0, 255), 1: (255, 0, 0)}
    return map_page(title, (240, 320), {"scene": scene_picture(scene())}, {"classes": value_overlay(classes, colours)},
                    legend=[("water", colours[0]), ("roof", colours[1])])


def test_a_page_holds_everything_it_shows_and_names_its_layers():
    page = classes_page("a <b> & c")
    found = resources(page)
    assert found.urls and all(u.startswith("data:") or u == "#default#VML" for u in found.urls), \
        [u[:60] for u in found.urls if not u.startswith("data:")]
    assert "link" not in found.tags and "iframe" not in found.tags
    assert "<title>a &lt;b&gt; &amp; c</title>" in page
    data = page_data(page)
    assert [b["name"] for b in data["bases"]] == ["scene"] and [o["name"] for o in data["overlays"]] == ["classes"]
    assert data["bases"][0]["image"].startswith("data:image/jpeg;base64,")
    assert data["overlays"][0]["image"].startswith("data:image/png;base64,")
    assert data["legend"] == [["water", "#0000ff"], ["roof", "#ff0000"]] and data["size"] == [240, 320]
    assert "Leaflet 1.9.4" in page and "BSD 2-Clause" in page  # the licence travels with the code
    assert "attributionControl: false" in page


def test_a_class_name_cannot_close_the_page_s_script():
    page = map_page("x", (4, 4), {"scene": np.zeros((4, 4, 3), np.uint8)},
                    polygons=[Polygon([(0, 0), (2, 0), (2, 2)], (1, 2, 3), "</script><script>alert(1)</script>")])
    assert page_data(page)["polygons"]["shapes"][0]["label"] == "</script><script>alert(1)</script>"
    assert page.count("<script") == page.count("</script>") == 4


def test_overlays_colour_the_values_shown_and_leave_the_others_transparent():
    values = np.array([[0, 1], [255, 1]], np.uint8)
    rgba = value_overlay(values, {1: (10, 20, 30)})
    np.testing.assert_array_equal(rgba[..., 3], [[0, 255], [0, 255]])
    np.testing.assert_array_equal(rgba[0, 1], (10, 20, 30, 255))


def test_pictures_are_downsampled_and_bad_layers_refused():
    assert max(scene_picture(np.zeros((3 * PAGE_SIDE, 100, 4), np.uint16)).shape) <= PAGE_SIDE
    with pytest.raises(ConfigError, match="bases: 'scene' must be an"):
        map_page("x", (4, 4), {"scene": np.zeros((4, 4), np.float32)})
    with pytest.raises(ConfigError, match="bases: a page shows a scene"):
        map_page("x", (4, 4), {})


def render(page: Path, tmp_path: Path) -> tuple[dict, np.ndarray]:
    """What ``page`` reports in headless Chromium (the overlays drawn, errors, resources fetched) and a screenshot
    of it at 800x600."""
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
              "--disable-background-networking", "--disable-component-update", "--disable-sync",
              "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=800,600",
              "--virtual-time-budget=10000"]
    dom = subprocess.run([*common, "--dump-dom", page.resolve().as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    status = re.search(r'<output id="lemevit-status"[^>]*>', dom).group(0)
    reported = {key: json.loads(html.unescape(value)) for key, value in re.findall(r'data-(\w+)="([^"]*)"', status)}
    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={shot}", page.resolve().as_uri()], capture_output=True, timeout=120,
                   check=True)
    return reported, np.asarray(Image.open(shot).convert("RGB"))


def assert_drawn(page: Path, tmp_path: Path, overlays: list[str]) -> None:
    reported, shot = render(page, tmp_path)
    assert reported == {"overlays": overlays, "errors": [], "fetched": []}
    assert shot.shape == (600, 800, 3)
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 100  # the scene's pixels, not a flat page


@needs_chromium
def test_chromium_draws_the_class_map_over_the_scene(tmp_path):
    page = tmp_path / "classes.html"
    page.write_text(classes_page())
    assert_drawn(page, tmp_path, ["classes"])


@needs_chromium
def test_chromium_draws_boxes_over_the_scene_and_a_missing_resource_is_an_error(tmp_path):
    quads = np.array([[[30, 20], [90, 20], [90, 60], [30, 60]], [[100, 70], [150, 80], [140, 110], [95, 100]]], float)
    page = write_detection_page(tmp_path / "S1.html", scene(), quads, np.array([0, 2]), np.array([0.9, 0.4]),
                                ["plane", "ship", "storage-tank"])
    assert page_data(page.read_text())["legend"] == [["plane", "#1f77b4"], ["storage-tank", "#ff7f0e"]]
    assert_drawn(page, tmp_path, ["boxes"])

    broken = tmp_path / "broken.html"
    broken.write_text(page.read_text().replace("<body>", '<body><img src="missing.png">'))
    reported, _ = render(broken, tmp_path)
    assert reported["errors"] == [f"failed to load {(tmp_path / 'missing.png').as_uri()}"]

