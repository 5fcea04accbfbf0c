"""Whole-scene segmentation throughput of ``lemevit predict`` on a large GeoTIFF, per runtime, and the pipeline's
efficiency: the share of the end-to-end time spent in the network (the rest is reading, normalising, blending and
writing), both as predict's summary line reports them.

    python benchmarks/scene_throughput.py --checkpoint RUN/best.ckpt                 # 4000², torch and onnxruntime
    python benchmarks/scene_throughput.py --checkpoint RUN/best.ckpt --size 2000 --runtimes torch

The scene is the Potsdam sample tile shipped with the package mirrored into a --size x --size 3-band GeoTIFF (UTM
32N, 5 cm pixels), written once into --work. The runtimes run one after the other, each predicting the scene
--repeats times (--overwrite); the best repeat is kept. Writes results/scene_throughput.json.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lemevit.bench import machine_description
from lemevit.cli import main as lemevit
from lemevit.io import atomic_path

HERE = Path(__file__).parent
TILE = Path(str(files("lemevit") / "demo_data" / "potsdam_seg" / "img_dir" / "2_10_0_0_512_512.png"))
SUMMARY = re.compile(r"([\d.]+) Mpx in ([\d.]+) s \(([\d.]+) Mpx/s; the network (\d+)% of the time\)")


def mirrored_scene(path: Path, size: int, source: Path = TILE, border: int = 0, declare_nodata: bool = False) -> Path:
    """``source`` (by default the shipped Potsdam tile) mirrored about its edges into a ``size`` x ``size``
    georeferenced GeoTIFF at ``path`` (kept when it exists). ``border`` pixels along each edge are 0, the others
    1..255 then, and ``declare_nodata`` declares 0 as nodata: the same pixels with and without a nodata border."""
    import rasterio
    from rasterio.transform import from_origin

    if path.is_file():
        return path
    tile = np.asarray(Image.open(source).convert("RGB"))
    if border:
        tile = tile.clip(1, 255)
    block = np.concatenate([np.concatenate([tile, tile[:, ::-1]], 1),
                            np.concatenate([tile[::-1], tile[::-1, ::-1]], 1)], 0)
    reps = -(-size // block.shape[0]), -(-size // block.shape[1])
    scene = np.tile(block, (*reps, 1))[:size, :size].transpose(2, 0, 1).copy()
    if border:
        scene[:, :border] = scene[:, -border:] = scene[:, :, :border] = scene[:, :, -border:] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, rasterio.open(
            tmp, "w", driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32632",
            transform=from_origin(364000, 5810000, 0.05, 0.05), tiled=True, blockxsize=512, blockysize=512,
            nodata=0 if declare_nodata else None) as dst:
        dst.write(scene)
    return path


def predict_once(checkpoint: Path, scene: Path, output: Path, runtime: str) -> dict:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = lemevit(["predict", "--checkpoint", str(checkpoint), str(scene), "--output", str(output),
                        "--runtime", runtime, "--overwrite"])
    found = SUMMARY.search(printed.getvalue())
    if code != 0 or found is None:
        raise SystemExit(f"lemevit predict --runtime {runtime} failed (exit {code}): {printed.getvalue()}")
    mpx, seconds, rate, share = found.groups()
    return {"mpx": float(mpx), "seconds": float(seconds), "mpx_per_s": float(rate), "network_share": int(share) / 100}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a segmentation run's best.ckpt or model file")
    p.add_argument("--size", type=int, default=4000)
    p.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--work", type=Path, default=HERE / "runs" / "scene_throughput")
    args = p.parse_args()

    scene = mirrored_scene(args.work / f"potsdam_mirrored_{args.size}.tif", args.size)
    results = {}
    for runtime in args.runtimes:
        repeats = [predict_once(args.checkpoint, scene, args.work / runtime, runtime) for _ in range(args.repeats)]
        results[runtime] = {**max(repeats, key=lambda r: r["mpx_per_s"]), "repeats": repeats}
        print(f"{runtime}: {results[runtime]['mpx_per_s']:.2f} Mpx/s, the network "
              f"{results[runtime]['network_share']:.0%} of the time")
    record = {
        "what": "lemevit predict of one mirrored Potsdam GeoTIFF (3 bands, uint8), blended sliding window; Mpx/s "
                "and the network's share of the end-to-end time from predict's summary line",
        "command": f"python benchmarks/scene_throughput.py --checkpoint {args.checkpoint} --size {args.size}",
        "scene": f"{args.size}x{args.size}", "results": results, "threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(), "torch": torch.__version__,
        "machine": machine_description(),
    }
    output = HERE / "results" / "scene_throughput.json"
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
