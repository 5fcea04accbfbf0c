"""Scenes GDAL reads wherever they are: a VRT mosaic, and a COG over HTTP read by byte ranges, predicted as the same
scene from a local file is; and how their maps are named."""
from __future__ import annotations

import http.server
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from lemevit.errors import ConfigError
from lemevit.inference.scene import predict_scene, scene_outputs
from lemevit.inference.sliding_window import softmax_predictor
from lemevit.io.paths import list_images, source_name

rasterio = pytest.importorskip("rasterio")
from rasterio.shutil import copy as copy_raster  # noqa: E402
from rasterio.transform import Affine  # noqa: E402

PALETTE = ((255, 255, 255), (0, 0, 255), (0, 255, 0), (255, 0, 0))
HEIGHT, WIDTH = 700, 600
TRANSFORM = Affine(0.5, 0, 368000, 0, -0.5, 5810000)


def write(path, bands: np.ndarray, **options) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1], count=len(bands),
                       dtype=bands.dtype.name, crs="EPSG:32633", transform=TRANSFORM, photometric="RGB",
                       **options) as ds:
        ds.write(bands)


def scene() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (3, HEIGHT, WIDTH)).astype(np.uint8)


def predict_map(source, out: Path) -> np.ndarray:
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 4, 3, padding=1).eval()  # neighbours count: a seam of the mosaic would show
    predict_scene(softmax_predictor(model), [source], out, [128.0] * 3, [64.0] * 3, PALETTE, window=256, stride=192,
                  progress=False, nodata=255)
    with rasterio.open(out) as ds:
        assert ds.crs.to_string() == "EPSG:32633" and ds.transform == TRANSFORM
        return ds.read(1)


def test_a_vrt_mosaic_is_predicted_as_the_scene_it_assembles(tmp_path):
    bands, half = scene(), WIDTH // 2
    write(tmp_path / "whole.tif", bands)
    write(tmp_path / "left.tif", bands[:, :, :half])
    write(tmp_path / "right.tif", np.ascontiguousarray(bands[:, :, half:]))
    sources = "".join(
        f'<VRTRasterBand dataType="Byte" band="{band}">' + "".join(
            f'<SimpleSource><SourceFilename relativeToVRT="1">{name}</SourceFilename><SourceBand>{band}</SourceBand>'
            f'<SrcRect xOff="0" yOff="0" xSize="{half}" ySize="{HEIGHT}"/>'
            f'<DstRect xOff="{x}" yOff="0" xSize="{half}" ySize="{HEIGHT}"/></SimpleSource>'
            for name, x in (("left.tif", 0), ("right.tif", half))) + "</VRTRasterBand>" for band in (1, 2, 3))
    (tmp_path / "mosaic.vrt").write_text(
        f'<VRTDataset rasterXSize="{WIDTH}" rasterYSize="{HEIGHT}"><SRS>EPSG:32633</SRS>'
        f"<GeoTransform>{', '.join(map(str, TRANSFORM.to_gdal()))}</GeoTransform>{sources}</VRTDataset>")
    assert list_images([tmp_path / "mosaic.vrt"]) == [tmp_path / "mosaic.vrt"]
    assert scene_outputs([tmp_path / "mosaic.vrt", tmp_path / "whole.tif"], tmp_path / "maps") == [
        tmp_path / "maps" / "mosaic.tif", tmp_path / "maps" / "whole.tif"]
    np.testing.assert_array_equal(predict_map(tmp_path / "mosaic.vrt", tmp_path / "mosaic_map.tif"),
                                  predict_map(tmp_path / "whole.tif", tmp_path / "whole_map.tif"))


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Files of ``root`` by HEAD and GET, a ``Range: bytes=a-b`` served as 206 Partial Content (which
    SimpleHTTPRequestHandler does not do); every GET is logged as ``(path, range header, bytes sent)``."""

    root: Path
    log: list
    #: Whether ``Range`` is honoured; a server that ignores it sends whole files and does not advertise ranges.
    ranges = True

    def do_HEAD(self):
        self.respond(head=True)

    def do_GET(self):
        self.respond(head=False)

    def respond(self, head: bool):
        path = self.root / self.path.lstrip("/").split("?")[0]
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        ranged = self.headers.get("Range") if self.ranges else None
        start, end = 0, len(data) - 1
        if ranged:
            first, last = re.fullmatch(r"bytes=(\d+)-(\d*)", ranged).groups()
            start, end = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        body = data[start:end + 1]
        self.send_response(206 if ranged else 200)
        if self.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.end_headers()
        if not head:
            self.log.append((self.path, ranged, len(body)))
            self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture()
def server(tmp_path, monkeypatch):
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    handler = type("Handler", (RangeHandler,), {"root": tmp_path / "served", "log": []})
    (tmp_path / "served").mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.log
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("prefix", ["", "/vsicurl/"])
def test_a_cog_over_http_is_read_by_ranges_and_predicted_as_the_local_file(tmp_path, server, prefix):
    url, log = server
    write(tmp_path / "local.tif", scene(), tiled=True, blockxsize=256, blockysize=256)
    copy_raster(tmp_path / "local.tif", tmp_path / "served" / "scene.tif", driver="COG", compress="deflate")
    size = (tmp_path / "served" / "scene.tif").stat().st_size
    source = f"{prefix}{url}/scene.tif?{prefix and 'v'}"  # a query, to tell the two runs' URLs apart for GDAL
    assert list_images([source]) == [source] and source_name(source) == "scene.tif"
    out = scene_outputs([source], tmp_path / "maps")[0]
    assert out == tmp_path / "maps" / "scene.tif"
    np.testing.assert_array_equal(predict_map(source, out), predict_map(tmp_path / "local.tif", tmp_path / "m.tif"))
    scene_gets = [entry for entry in log if entry[0].startswith("/scene.tif")]
    assert scene_gets and all(ranged for _, ranged, _ in scene_gets)
    # No response is the whole file, nor are all of them (the overviews are not read); no sidecar is asked for.
    assert max(sent for _, _, sent in scene_gets) < sum(sent for _, _, sent in scene_gets) < size
    assert len(scene_gets) == len(log)


def test_a_url_without_a_file_name_needs_a_named_map(tmp_path):
    with pytest.raises(ConfigError, match="no file name"):
        scene_outputs(["https://example.com/", tmp_path / "a.tif"], tmp_path / "maps")
    assert scene_outputs(["https://example.com/"], tmp_path / "map.tif") == [tmp_path / "map.tif"]


class WholeFileHandler(RangeHandler):
    """A server that ignores ``Range`` and sends whole files, as some do: GDAL cannot read them by ranges."""

    ranges = False


def test_a_scene_on_a_server_without_ranges_is_downloaded_whole_saying_so(tmp_path, monkeypatch, caplog):
    import tempfile

    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "served").mkdir()
    handler = type("Handler", (WholeFileHandler,), {"root": tmp_path / "served", "log": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    try:
        write(tmp_path / "served" / "scene.tif", scene(), tiled=True, blockxsize=256, blockysize=256)
        source = f"http://127.0.0.1:{httpd.server_address[1]}/scene.tif"
        with caplog.at_level("WARNING"):
            remote = predict_map(source, tmp_path / "remote_map.tif")
    finally:
        httpd.shutdown()
        httpd.server_close()
    np.testing.assert_array_equal(remote, predict_map(tmp_path / "served" / "scene.tif", tmp_path / "m.tif"))
    lines = [r.getMessage() for r in caplog.records if source in r.getMessage()]
    assert len(lines) == 1 and "its server does not send byte ranges; downloading the whole file into" in lines[0]
    assert not list(scratch.iterdir())  # the whole copy is removed
    assert len(handler.log) <= 3  # GDAL's probe and one download, not a request per block
