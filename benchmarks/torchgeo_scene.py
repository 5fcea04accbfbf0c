"""A whole scene segmented the way torchgeo documents it, against ``lemevit predict``: the same network, window and
stride, Mpx/s and peak memory of each, and their maps compared where their windows agree.

    python benchmarks/torchgeo_scene.py --checkpoint RUN/best.ckpt                       # a 3968 x 3968 scene
    python benchmarks/torchgeo_scene.py --checkpoint RUN/best.ckpt --size 2048 --repeats 1

torchgeo (0.8): a ``RasterDataset`` over the scene, a ``GridGeoSampler`` of windows of ``--window`` pixels every
``--stride``, a ``DataLoader`` (``stack_samples``) of ``--batch-size`` windows, the network, and each window's most
probable class written by hand into a class map of the whole scene (a later window overwrites the overlap, as its
tutorials stitch), then saved as a GeoTIFF with the scene's CRS and transform. The network is the checkpoint's own
module (``lemevit.engine.eval_predict.load_task``), given the windows normalised as the run normalises them.
lemevit: ``lemevit predict --window W --stride S --batch-size B`` through ``lemevit.cli.main``: the blended
sliding window, strip by strip, written as a Cloud-Optimized GeoTIFF (overviews and colour table included); with
``--arms lemevit lemevit-onnxruntime lemevit-bf16`` also ``lemevit predict --runtime onnxruntime`` (the same network
exported to ONNX, checked against PyTorch, run by onnxruntime; its export is made once before the timed runs, on one
window, and reused from beside the checkpoint, as a user's second predict reuses it) and ``lemevit predict
--precision bf16`` (autocast to bfloat16, which CPUs with AVX512-BF16 or AMX run natively).

Each prediction runs in a child process of its own, so that its peak resident memory (VmHWM) is its own; the two
alternate (ABBA...), ``--repeats`` times each, and the best of each is kept. Throughput counts the prediction
alone, from the first read to the map on disk (not the imports nor the loading of the checkpoint).

The maps are compared over the pixels that one window covers in both pipelines, the same window in both: there
each gives that window's most probable class. The default size, 3968 = 512 + 9 x 384, is the size nearest the
4000 px of issue 34 on which lemevit's grid (from the north-west corner, its last windows flush with the edges)
has no partial step: 10 x 10 windows. torchgeo's (laid from the south-west corner, its last windows running past
the edge) has 11 x 11 there, since the scene's bounds in metres of 5 cm pixels come out a hair past nine strides in
floating point; at 1280 = 512 + 2 x 384 both grids are the same 9 windows.
The scene is the Potsdam tile shipped with the package mirrored to ``--size`` (``scene_throughput.mirrored_scene``).
Writes results/torchgeo_scene.json.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scene_throughput import mirrored_scene

from lemevit.bench import machine_description
from lemevit.io import atomic_path

HERE = Path(__file__).parent
SUMMARY = re.compile(r"([\d.]+) Mpx in ([\d.]+) s \(([\d.]+) Mpx/s; the network (\d+)% of the time\)")
#: lemevit predict's arms: the flags each adds to the same command.
ARMS = {"lemevit": [], "lemevit-onnxruntime": ["--runtime", "onnxruntime"],
        "lemevit-int8": ["--runtime", "onnxruntime-int8"], "lemevit-bf16": ["--precision", "bf16"]}


def _status_mib(key: str) -> float:
    return int(re.search(key + r":\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def torchgeo_windows(scene: Path, window: int, stride: int) -> list[tuple[int, int]]:
    """(top, left) of the windows torchgeo's GridGeoSampler gives over ``scene``, in its pixels."""
    from torchgeo.datasets import RasterDataset
    from torchgeo.samplers import GridGeoSampler

    dataset = RasterDataset(paths=[str(scene)])
    xs, ys, _ = dataset.bounds
    return [(round((ys.stop - y.stop) / dataset.res[1]), round((x.start - xs.start) / dataset.res[0]))
            for x, y, _ in GridGeoSampler(dataset, size=window, stride=stride)]


def predict_torchgeo(checkpoint: Path, scene: Path, output: Path, window: int, stride: int, batch_size: int,
                     workers: int) -> dict:
    import rasterio
    from rasterio.transform import from_origin
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    from lemevit.engine.eval_predict import load_task

    task = load_task(checkpoint)
    network = task.model
    mean = torch.tensor(task.hparams.mean)[None, :, None, None]
    std = torch.tensor(task.hparams.std)[None, :, None, None]
    base = _status_mib("VmRSS")
    started = time.perf_counter()
    network_seconds = 0.0

    dataset = RasterDataset(paths=[str(scene)])
    sampler = GridGeoSampler(dataset, size=window, stride=stride)
    loader = DataLoader(dataset, sampler=sampler, batch_size=batch_size, collate_fn=stack_samples,
                        num_workers=workers)
    xs, ys, _ = dataset.bounds
    xres, yres = dataset.res
    height, width = round((ys.stop - ys.start) / yres), round((xs.stop - xs.start) / xres)
    classes = np.zeros((height, width), np.uint8)
    with torch.inference_mode():
        for batch in loader:
            tick = time.perf_counter()
            predicted = network((batch["image"] - mean) / std).argmax(dim=1).to(torch.uint8).numpy()
            network_seconds += time.perf_counter() - tick
            for (x, y, _), chip in zip(batch["bounds"], predicted, strict=True):
                # Windows of the last row and column run past the scene's edges (torchgeo pads them with zeros).
                top, left = round((ys.stop - y.stop) / yres), round((x.start - xs.start) / xres)
                r0, c0, r1, c1 = max(top, 0), max(left, 0), min(top + window, height), min(left + window, width)
                classes[r0:r1, c0:c1] = chip[r0 - top:r1 - top, c0 - left:c1 - left]
    with rasterio.open(output, "w", driver="GTiff", height=height, width=width, count=1, dtype="uint8",
                       crs=dataset.crs, transform=from_origin(xs.start, ys.stop, xres, yres), tiled=True,
                       compress="deflate") as dst:
        dst.write(classes, 1)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "mpx_per_s": height * width / 1e6 / seconds, "network_share": network_seconds / seconds,
            "windows": len(sampler), "rss_before_mib": base, "peak_rss_mib": _status_mib("VmHWM")}


def predict_lemevit(checkpoint: Path, scene: Path, output: Path, window: int, stride: int, batch_size: int,
                    workers: int, arm: str = "lemevit") -> dict:
    import rasterio

    from lemevit.cli import main as lemevit
    from lemevit.inference.sliding_window import window_starts

    base = _status_mib("VmRSS")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = lemevit(["predict", "--checkpoint", str(checkpoint), str(scene), "--output", str(output),
                        "--window", str(window), "--stride", str(stride), "--batch-size", str(batch_size),
                        "--num-workers", str(workers), *ARMS[arm], "--overwrite"])
    found = SUMMARY.search(printed.getvalue())
    if code != 0 or found is None:
        raise SystemExit(f"lemevit predict failed (exit {code}): {printed.getvalue()}")
    _, seconds, _, share = found.groups()
    with rasterio.open(scene) as src:
        height, width = src.height, src.width
    windows = len(window_starts(height, window, stride)) * len(window_starts(width, window, stride))
    # predict prints Mpx/s to two decimals: the rate comes from its seconds and the scene's pixels instead
    return {"seconds": float(seconds), "mpx_per_s": height * width / 1e6 / float(seconds),
            "network_share": int(share) / 100, "windows": windows, "rss_before_mib": base,
            "peak_rss_mib": _status_mib("VmHWM")}


def run_child(pipeline: str, args: argparse.Namespace, scene: Path, output: Path) -> dict:
    command = [sys.executable, __file__, "--child", pipeline, "--checkpoint", str(args.checkpoint), "--scene",
               str(scene), "--output", str(output), "--window", str(args.window), "--stride", str(args.stride),
               "--batch-size", str(args.batch_size), "--workers", str(args.workers)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{pipeline} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def single_window_agreement(scene: Path, maps: dict[str, Path], window: int, stride: int) -> dict:
    """The share of the pixels on which both maps agree: over the pixels one window covers in both pipelines, the
    same one in both, and over every pixel."""
    import rasterio

    from lemevit.inference.sliding_window import window_starts

    with rasterio.open(maps["torchgeo"]) as a, rasterio.open(maps["lemevit"]) as b:
        if (a.crs, a.transform, a.shape) != (b.crs, b.transform, b.shape):
            raise SystemExit(f"the maps are not on one grid: {a.crs} {a.transform} {a.shape} against {b.crs} "
                             f"{b.transform} {b.shape}")
        torchgeo_map, lemevit_map = a.read(1), b.read(1)
    height, width = lemevit_map.shape

    def coverage(windows: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
        count, owner = np.zeros((height, width), np.int32), np.full((height, width), -1, np.int64)
        for top, left in windows:
            rows, cols = slice(max(top, 0), top + window), slice(max(left, 0), left + window)
            count[rows, cols] += 1
            owner[rows, cols] = top * width + left
        return count, owner

    lemevit_windows = [(y, x) for y in window_starts(height, window, stride)
                       for x in window_starts(width, window, stride)]
    geo_windows = torchgeo_windows(scene, window, stride)
    count_a, owner_a = coverage(geo_windows)
    count_b, owner_b = coverage(lemevit_windows)
    same = (count_a == 1) & (count_b == 1) & (owner_a == owner_b)
    agree = torchgeo_map == lemevit_map
    return {"single_window_pixels": int(same.sum()), "single_window_share_of_scene": float(same.mean()),
            "agreement_single_window": float(agree[same].mean()) if same.any() else None,
            "agreement_all_pixels": float(agree.mean()),
            "windows": {"torchgeo": len(geo_windows), "lemevit": len(lemevit_windows)}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="a segmentation run's best.ckpt or model file")
    p.add_argument("--size", type=int, default=3968)
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--stride", type=int, default=384)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of both (lemevit's --num-workers)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--work", type=Path, default=HERE / "runs" / "torchgeo_scene")
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=["lemevit"],
                   help="lemevit predict's arms to compare with torchgeo (default: lemevit, the plain command)")
    p.add_argument("--child", choices=("torchgeo", *ARMS), help=argparse.SUPPRESS)
    p.add_argument("--scene", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        given = (args.checkpoint, args.scene, args.output, args.window, args.stride, args.batch_size, args.workers)
        print(json.dumps(predict_torchgeo(*given) if args.child == "torchgeo"
                         else predict_lemevit(*given, arm=args.child)))
        return

    pipelines = ("torchgeo", *args.arms)

    scene = mirrored_scene(args.work / f"potsdam_mirrored_{args.size}.tif", args.size)
    maps = {name: args.work / f"{name}_{args.size}.tif" for name in pipelines}
    small = mirrored_scene(args.work / f"potsdam_mirrored_{args.window}.tif", args.window)
    for name in pipelines[1:]:  # the ONNX export made once, untimed, on one window; reused from beside the checkpoint
        if "--runtime" in ARMS[name]:
            run_child(name, args, small, args.work / f"warm_up_{name}.tif")
    runs: dict[str, list[dict]] = {name: [] for name in pipelines}
    for repeat in range(args.repeats):
        for name in pipelines if repeat % 2 == 0 else pipelines[::-1]:
            runs[name].append(run_child(name, args, scene, maps[name]))
            print(f"{name}: {runs[name][-1]['mpx_per_s']:.3f} Mpx/s, peak {runs[name][-1]['peak_rss_mib']:.0f} MiB")
    best = {name: max(r, key=lambda x: x["mpx_per_s"]) for name, r in runs.items()}
    record = {
        "what": "one scene segmented by torchgeo's documented way (RasterDataset + GridGeoSampler + DataLoader, "
                "windows stitched by hand into a GeoTIFF) and by lemevit predict (blended sliding window, COG), the "
                "same network; each prediction in a child process of its own, alternating; best of the repeats",
        "command": f"python benchmarks/torchgeo_scene.py --checkpoint {args.checkpoint} --size {args.size} "
                   f"--window {args.window} --stride {args.stride} --batch-size {args.batch_size} "
                   f"--workers {args.workers} --repeats {args.repeats} --arms {' '.join(args.arms)}",
        "scene": f"{args.size}x{args.size}, 3 bands, uint8", "window": args.window, "stride": args.stride,
        "batch_size": args.batch_size, "workers": args.workers,
        "dtype": "fp32 (torchgeo and every arm but lemevit-bf16)",
        "best": best, "runs": runs,
        "over_torchgeo_throughput": {name: best[name]["mpx_per_s"] / best["torchgeo"]["mpx_per_s"]
                                     for name in pipelines[1:]},
        "over_torchgeo_peak_rss": {name: best[name]["peak_rss_mib"] / best["torchgeo"]["peak_rss_mib"]
                                   for name in pipelines[1:]},
        "paired_throughput_ratios": {name: [b["seconds"] / a["seconds"] for a, b in
                                            zip(runs[name], runs["torchgeo"], strict=True)] for name in pipelines[1:]},
        "median_mpx_per_s": {name: statistics.median(r["mpx_per_s"] for r in runs[name]) for name in pipelines},
        "maps": {name: single_window_agreement(scene, {"torchgeo": maps["torchgeo"], "lemevit": maps[name]},
                                                args.window, args.stride) for name in pipelines[1:]},
        "checkpoint": str(args.checkpoint), "threads": torch.get_num_threads(),
        "load_average_at_end": os.getloadavg(), "torch": torch.__version__,
        "torchgeo": __import__("torchgeo").__version__, "machine": machine_description(),
    }
    print(json.dumps({k: record[k] for k in ("over_torchgeo_throughput", "paired_throughput_ratios",
                                             "over_torchgeo_peak_rss", "maps")}, indent=1))
    output = HERE / "results" / f"torchgeo_scene_{args.size}.json"
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
