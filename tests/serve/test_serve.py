"""``lemevit serve`` in a subprocess on 127.0.0.1: its answers are ``predict``'s, bad requests get one-line 4xx
JSON and leave the worker serving, bodies are bounded, tokens checked, slow requests cut at the timeout, a burst of
clients answered, and SIGTERM answers the request in flight before the server exits 0."""
from __future__ import annotations

import concurrent.futures
import functools
import http.client
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sample_data import make_scenes, make_tiles

from lemevit.cli import main

pytest.importorskip("litserve")
rasterio = pytest.importorskip("rasterio")

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``lemevit serve ARGS`` on a free port of 127.0.0.1, its output in ``log``."""

    def __init__(self, args: list[str], log: Path):
        self.port, self.log = _free_port(), log
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(log, "w") as out:
            self.process = subprocess.Popen([sys.executable, "-m", "lemevit.cli", "serve", *args, "--port",
                                             str(self.port)], stdout=out, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, seconds: float = 600) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert self.process.poll() is None, f"the server exited: {self.log.read_text()[-3000:]}"
            try:
                if self.request("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the server was not ready in {seconds} s: {self.log.read_text()[-3000:]}")

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 120) -> tuple[int, dict, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def predict(self, body: bytes, content_type: str = "image/png", **headers) -> tuple[int, dict, bytes]:
        return self.request("POST", "/predict", body, {"Content-Type": content_type, **headers})

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def multipart(parts: dict[str, bytes]) -> tuple[bytes, str]:
    boundary = "lemevit-test-boundary"
    body = b""
    for name, content in parts.items():
        body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{name}.png\"\r\n"
                 "Content-Type: image/png\r\n\r\n").encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _error(body: bytes) -> str:
    error = json.loads(body)["error"]
    assert "\n" not in error and "Traceback" not in error
    return error


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="PNG")
    return out.getvalue()


def _pairs(root: Path, pairs: int = 4, size: int = 48) -> Path:
    """A change data set whose change is a square of inverted pixels."""
    rng = np.random.default_rng(0)
    for folder in ("A", "B", "label"):
        (root / folder).mkdir(parents=True)
    for i in range(pairs):
        a = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        b, label = a.copy(), np.zeros((size, size), np.uint8)
        b[8:24, 8:24], label[8:24, 8:24] = 255 - b[8:24, 8:24], 255
        for folder, image in (("A", a), ("B", b), ("label", label)):
            Image.fromarray(image).save(root / folder / f"p{i}.png")
    return root


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A classifier, a segmentation model and a change model, each trained one epoch on tiny data."""
    root = tmp_path_factory.mktemp("serve")
    common = ["--model", "resnet10t", "--img-size", "32", "--epochs", "1", "--num-workers", "0"]
    scenes = make_scenes(root / "scenes")
    assert main(["train", "--data", str(scenes), "--output", str(root / "cls"), "--batch-size", "4", "--split",
                 "0.75", *common]) == 0
    tiles = make_tiles(root / "tiles")
    assert main(["train", "--task", "segmentation", "--data", str(tiles), "--output", str(root / "seg"), "--head",
                 "segformer", "--decoder-channels", "16", "--batch-size", "2", "--split", "0.67", *common]) == 0
    pairs = _pairs(root / "pairs")
    assert main(["train", "--task", "change", "--data", str(pairs), "--output", str(root / "chg"), "--head",
                 "siamunet", "--batch-size", "4", "--split", "0.75", *common]) == 0
    return {"root": root, "scenes": scenes, "tiles": tiles, "pairs": pairs}


@pytest.fixture(scope="module")
def servers(models):
    """The three servers, started together: the classifier with a token, batching, a 1 MiB body bound and URLs
    allowed; the segmentation model with a timeout a loaded machine stays within; the change model with 2 s."""
    root = models["root"]
    (root / "token").write_text(TOKEN + "\n")
    started = {
        "cls": Server(["--checkpoint", str(root / "cls" / "best.ckpt"), "--token-file", str(root / "token"),
                       "--max-batch-size", "4", "--batch-timeout", "0.05", "--max-body-mb", "1", "--allow-urls"],
                      root / "cls.log"),
        "seg": Server(["--checkpoint", str(root / "seg" / "best.ckpt"), "--timeout", "300"], root / "seg.log"),
        "chg": Server(["--checkpoint", str(root / "chg" / "best.ckpt"), "--timeout", "2"], root / "chg.log"),
    }
    try:
        for server in started.values():
            server.wait_ready()
        yield started
    finally:
        for server in started.values():
            server.stop()


def _authorized(**headers) -> dict:
    return {"Authorization": f"Bearer {TOKEN}", **headers}


def test_classification_answers_are_predict_s_and_the_token_is_required(models, servers, tmp_path):
    server = servers["cls"]
    images = sorted(models["scenes"].rglob("*_0.png"))
    assert main(["predict", "--checkpoint", str(models["root"] / "cls" / "best.ckpt"), *map(str, images),
                 "--output", str(tmp_path / "top.json")]) == 0
    expected = json.loads((tmp_path / "top.json").read_text())
    for image, row in zip(images, expected, strict=True):
        status, headers, body = server.predict(image.read_bytes(), **_authorized())
        assert status == 200, body
        top_k = json.loads(body)["top_k"]
        assert [t["class"] for t in top_k] == [t["class"] for t in row["top"]]
        assert [t["probability"] for t in top_k] == pytest.approx([t["prob"] for t in row["top"]], abs=1e-5)

    image = images[0].read_bytes()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        status, _, body = server.predict(image, **headers)
        assert status == 401 and "Bearer" in _error(body)
    assert server.request("GET", "/info")[0] == 401
    assert server.request("GET", "/health")[0] == 200  # probes carry no token
    status, _, body = server.request("GET", "/info", headers=_authorized())
    card = json.loads(body)["model"]
    assert (card["task"], card["classes"], card["bands"], card["runtime"]) == \
        ("classification", ["Farmland", "Forest", "Port"], 3, "torch")


def test_bad_requests_get_one_line_4xx_and_the_worker_serves_on(models, servers):
    server = servers["cls"]
    good = sorted(models["scenes"].rglob("*.png"))[0].read_bytes()
    grey = _png(np.zeros((40, 40), np.uint8))
    cases = [(good[:200], "image/png", 400, "truncated"), (grey, "image/png", 400, "band"),
             (b"not an image", "image/png", 415, "PNG, JPEG, TIFF"), (good, "text/plain", 415, "Content-Type"),
             (*multipart({"picture": good}), 400, "'image' is missing"), (b"", "image/png", 400, "empty")]
    for body, kind, expected, said in cases:
        status, _, answer = server.predict(body, kind, **_authorized())
        assert (status, said in _error(answer)) == (expected, True), (said, answer)
    status, _, answer = server.predict(*multipart({"image": good}), **_authorized())
    assert status == 200 and json.loads(answer)["top_k"]
    status, _, answer = server.predict(good, **_authorized())
    assert status == 200 and json.loads(answer)["top_k"]


def test_bodies_over_the_bound_are_refused_with_413_before_they_are_read(servers):
    server = servers["cls"]
    # Declared too large: refused on the header alone (nothing of the body is sent).
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.putrequest("POST", "/predict")
    for name, value in (("Content-Type", "image/png"), ("Content-Length", str(10 ** 9)),
                        ("Authorization", f"Bearer {TOKEN}")):
        connection.putheader(name, value)
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 413 and "--max-body-mb" in _error(response.read())
    connection.close()
    # Undeclared (chunked): counted as it arrives, refused once past the bound.
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\nAuthorization: Bearer "
                     f"{TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"\x89PNG\r\n\x1a\n" + bytes(256 * 1024 - 8)
        try:
            for _ in range(6):  # 1.5 MiB against a bound of 1 MiB
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server may close the connection once it has answered
            pass
        answer = b""
        while data := sock.recv(65536):
            answer += data
            if b"\r\n\r\n" in answer and answer.rstrip().endswith(b"}"):
                break
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_a_burst_of_clients_is_answered_as_one_client_is(models, servers):
    server = servers["cls"]
    images = sorted(models["scenes"].rglob("*.png"))[:4]
    alone = [json.loads(server.predict(i.read_bytes(), **_authorized())[2])["top_k"] for i in images]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda k: server.predict(images[k % 4].read_bytes(), **_authorized()), range(16)))
    for k, (status, _, body) in enumerate(answers):
        assert status == 200, body
        top_k = json.loads(body)["top_k"]
        assert [t["class"] for t in top_k] == [t["class"] for t in alone[k % 4]]
        assert [t["probability"] for t in top_k] == pytest.approx([t["probability"] for t in alone[k % 4]], abs=1e-5)


def test_urls_and_stac_items_are_read_when_allowed(models, servers):
    server = servers["cls"]
    scenes = models["scenes"]
    image = sorted(scenes.rglob("*.png"))[0]
    relative = image.relative_to(scenes).as_posix()
    (scenes / "item.json").write_text(json.dumps({"type": "Feature", "assets": {
        "visual": {"href": relative, "type": "image/png"}, "metadata": {"href": "meta.xml", "type": "text/xml"}}}))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(scenes))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{files.server_address[1]}"
        expected = json.loads(server.predict(image.read_bytes(), **_authorized())[2])
        for source in ({"url": f"{base}/{relative}"}, {"stac_item": f"{base}/item.json"},
                       {"stac_item": f"{base}/item.json", "asset": "visual"}):
            status, _, body = server.predict(json.dumps(source).encode(), "application/json", **_authorized())
            assert status == 200, body
            assert json.loads(body) == expected
        status, _, body = server.predict(json.dumps({"url": f"file://{image}"}).encode(), "application/json",
                                         **_authorized())
        assert status == 400 and "only http and https" in _error(body)
    finally:
        files.shutdown()
        files.server_close()


def _geotiff(path: Path, pixels: np.ndarray) -> Path:
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", height=pixels.shape[0], width=pixels.shape[1], count=3,
                       dtype="uint8", crs="EPSG:32632", transform=from_origin(500000, 5400000, 0.5, 0.5)) as out:
        out.write(pixels.transpose(2, 0, 1))
    return path


def test_segmentation_maps_are_predict_s_as_png_geotiff_or_statistics(models, servers, tmp_path):
    server = servers["seg"]
    checkpoint = str(models["root"] / "seg" / "best.ckpt")
    tile = models["tiles"] / "img_dir" / "tile1.png"
    scene = _geotiff(tmp_path / "scene.tif", np.asarray(Image.open(tile)))
    assert main(["predict", "--checkpoint", checkpoint, str(tile), "--output", str(tmp_path / "map.png")]) == 0
    assert main(["predict", "--checkpoint", checkpoint, str(scene), "--output", str(tmp_path / "map.tif")]) == 0
    expected = np.asarray(Image.open(tmp_path / "map.png"))

    status, headers, body = server.predict(tile.read_bytes())
    assert (status, headers["content-type"]) == (200, "image/png")
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), expected)

    status, headers, body = server.predict(scene.read_bytes(), "image/tiff")
    assert (status, headers["content-type"]) == (200, "image/tiff")
    (tmp_path / "served.tif").write_bytes(body)
    with rasterio.open(tmp_path / "served.tif") as served, rasterio.open(tmp_path / "map.tif") as predicted:
        assert served.crs == predicted.crs and served.transform == predicted.transform
        assert np.array_equal(served.read(), predicted.read())
        assert served.crs.to_epsg() == 32632

    status, _, body = server.predict(tile.read_bytes(), Accept="application/json")
    statistics = json.loads(body)
    counts = np.bincount(expected.ravel(), minlength=6)[:6].tolist()
    assert list(statistics["class_pixels"].values()) == counts and (statistics["width"], statistics["height"]) == \
        (64, 64)

    status, _, body = server.predict(tile.read_bytes(), Accept="text/html")
    assert status == 406 and "image/tiff, image/png, application/json" in _error(body)
    status, _, body = server.predict(b'{"url": "http://127.0.0.1:1/x.png"}', "application/json")
    assert status == 403 and "--allow-urls" in _error(body)


def test_change_answers_are_predict_s_and_a_slow_request_gets_504_and_frees_the_worker(models, servers, tmp_path):
    server = servers["chg"]
    a, b = models["pairs"] / "A" / "p0.png", models["pairs"] / "B" / "p0.png"
    assert main(["predict", "--checkpoint", str(models["root"] / "chg" / "best.ckpt"), "--pair", str(a), str(b),
                 "--output", str(tmp_path / "change.png")]) == 0
    status, _, body = server.predict(*multipart({"a": a.read_bytes(), "b": b.read_bytes()}))
    assert status == 200, body
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(body))), np.asarray(Image.open(tmp_path / "change.png")))

    status, _, body = server.predict(*multipart({"a": a.read_bytes()}))
    assert status == 400 and "'b' is missing" in _error(body)
    status, _, body = server.predict(a.read_bytes())
    assert status == 400 and "parts a and b" in _error(body)

    big = _png(np.random.default_rng(0).integers(0, 255, (1500, 1500, 3), dtype=np.uint8))
    started = time.monotonic()
    status, _, body = server.predict(*multipart({"a": big, "b": big}))
    assert status == 504 and "--timeout" in _error(body)
    assert time.monotonic() - started < 10
    status, _, body = server.predict(*multipart({"a": a.read_bytes(), "b": b.read_bytes()}))
    assert status == 200, body


def test_sigterm_answers_the_request_in_flight_then_exits_0(servers, tmp_path):
    server = servers["seg"]
    scene = _png(np.random.default_rng(1).integers(0, 255, (960, 960, 3), dtype=np.uint8))  # 1600 windows
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(server.predict, scene)
        time.sleep(1.0)
        assert not answer.done(), "the request was answered before SIGTERM: make it larger"
        server.process.send_signal(signal.SIGTERM)
        status, headers, body = answer.result(timeout=300)
    assert (status, headers["content-type"]) == (200, "image/png")
    assert np.asarray(Image.open(io.BytesIO(body))).shape == (960, 960)
    assert server.process.wait(60) == 0


@pytest.mark.parametrize("args, said", [
    (["--host", "192.168.1.10"], "--host: LitServe binds 127.0.0.1, 0.0.0.0, ::"),
    (["--timeout", "0"], "--timeout: must be positive"),
    (["--batch-timeout", "5", "--timeout", "2"], "--batch-timeout: must be 0 or more and less than the timeout"),
    (["--token-file", "no-such-token-file"], "--token-file: cannot read no-such-token-file"),
    (["--checkpoint", "no-such.ckpt"], "no-such.ckpt does not exist")])
def test_bad_options_are_refused_in_one_line_before_anything_starts(args, said, capsys):
    assert main(["serve", "--checkpoint", "run.ckpt", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and said in err[0], err


def _untrained(tmp_path: Path, name: str, **hparams) -> Path:
    """A model of the task ``name`` with its random weights saved as a run checkpoint (training a detector or a
    panoptic model costs too much here; the answers need not be good to be compared)."""
    import torch

    from lemevit.io.checkpoint import TASK_KEY
    from lemevit.tasks import get_task

    torch.manual_seed(0)
    module = get_task(name)(**hparams)
    checkpoint = tmp_path / f"{name}.ckpt"
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams), TASK_KEY: name},
               checkpoint)
    return checkpoint


def _worker_answers(name: str, checkpoint: Path, scene: Path, folder: Path, accepts) -> list[dict]:
    """What a worker of ``lemevit serve`` answers to requests for ``scene`` asking for each of ``accepts`` (without
    HTTP, which the tests above cover)."""
    from lemevit.engine.eval_predict import load_task
    from lemevit.serve.answers import Request, answers_for
    from lemevit.tasks import get_task

    answers = answers_for(name)
    options = answers.predict_options(get_task(name), checkpoint=str(checkpoint), runtime="torch", accelerator="cpu")
    module = load_task(checkpoint)
    module.configure_inference(options)
    module.show_progress = False
    answers.setup(module, options)
    requests = []
    for k, accept in enumerate(accepts):
        (folder / str(k)).mkdir()
        requests.append(Request({"image": str(scene)}, accept, str(folder / str(k)), time.time() + 600))
    return answers.answer(requests)


def test_detection_answers_are_predict_s_boxes(tmp_path):
    """predict's GeoJSON for a georeferenced GeoTIFF, its DOTA boxes in pixels on request."""
    from lemevit.serve.answers import GEOJSON, JSON

    checkpoint = _untrained(tmp_path, "detection", model="resnet10t", num_classes=2, class_names=["plane", "ship"],
                            img_size=128, fpn_channels=16, rpn_proposals=50, test_proposals=20)
    scene = _geotiff(tmp_path / "scene.tif", np.random.default_rng(0).integers(0, 255, (200, 200, 3), np.uint8))
    assert main(["predict", "--checkpoint", str(checkpoint), str(scene), "--output", str(tmp_path / "boxes")]) == 0
    geojson, pixels = _worker_answers("detection", checkpoint, scene, tmp_path, (None, JSON))
    assert geojson["media_type"] == GEOJSON
    assert Path(geojson["file"]).read_text() == (tmp_path / "boxes" / "scene.geojson").read_text()
    expected = sorted([name, *line.split()] for name in ("plane", "ship")
                      for line in (tmp_path / "boxes" / f"Task1_{name}.txt").read_text().splitlines())
    objects = pixels["json"]["objects"]
    assert objects and len(objects) == len(expected)
    served = sorted([o["class"], scene.stem, f"{o['score']:.4f}", *(f"{v:.1f}" for v in np.ravel(o["corners"]))]
                    for o in objects)
    assert served == expected


def test_panoptic_answers_are_predict_s_segments(tmp_path):
    """predict's polygons of the segments (--vector geojson) for a georeferenced GeoTIFF, its segments JSON on
    request."""
    from lemevit.serve.answers import GEOJSON, JSON

    categories = [{"id": 1, "name": "building", "isthing": 1, "color": [0, 0, 255]},
                  {"id": 2, "name": "low_vegetation", "isthing": 0, "color": [0, 255, 255]}]
    checkpoint = _untrained(tmp_path, "panoptic", model="resnet10t", categories=categories, img_size=64,
                            fpn_channels=16)
    scene = _geotiff(tmp_path / "scene.tif", np.random.default_rng(0).integers(0, 255, (96, 96, 3), np.uint8))
    assert main(["predict", "--checkpoint", str(checkpoint), str(scene), "--output", str(tmp_path / "panoptic"),
                 "--vector", "geojson"]) == 0
    geojson, segments = _worker_answers("panoptic", checkpoint, scene, tmp_path, (None, JSON))
    assert geojson["media_type"] == GEOJSON
    assert Path(geojson["file"]).read_text() == (tmp_path / "panoptic" / "scene_segments.geojson").read_text()
    expected = json.loads((tmp_path / "panoptic" / "scene_segments.json").read_text())
    assert segments["json"]["segments_info"] and segments["json"] == expected
