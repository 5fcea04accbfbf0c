"""What a scene's nodata border saves: ``lemevit predict`` of one scene twice, once with its border declared as no data
(GDAL's nodata value 0) and once with the same pixels and no declaration, for each segmentation or detection checkpoint
given. Windows holding only no data are not run, so the time follows the valid area.

    python benchmarks/nodata_scene.py --checkpoint segmentation=RUN/best.ckpt detection=RUN2/best.ckpt

The scene is the shipped Potsdam tile mirrored into a --size x --size 3-band GeoTIFF whose outer --border pixels on
every side are 0 (a scene's collar after reprojection), written once into --work. Writes results/nodata_scene.json.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
from pathlib import Path

import torch
from scene_throughput import mirrored_scene

from lemevit.bench import machine_description
from lemevit.cli import main as lemevit
from lemevit.io import atomic_path

HERE = Path(__file__).parent
SUMMARY = re.compile(r"([\d.]+) Mpx in ([\d.]+) s")


def predict_seconds(checkpoint: str, scene: Path, output: Path, extra: list[str]) -> float:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = lemevit(["predict", "--checkpoint", checkpoint, str(scene), "--output", str(output), *extra])
    found = SUMMARY.search(printed.getvalue())
    if code != 0 or found is None:
        raise SystemExit(f"lemevit predict of {checkpoint} failed (exit {code}): {printed.getvalue()}")
    return float(found.group(2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True, metavar="TASK=PATH",
                   help="segmentation or detection checkpoints (or model files), each named for the record")
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--border", type=int, default=640, help="pixels of no data along each edge")
    p.add_argument("--work", type=Path, default=HERE / "runs" / "nodata_scene")
    args = p.parse_args()
    scenes = {declared: mirrored_scene(args.work / f"scene_{'nodata' if declared else 'plain'}.tif", args.size,
                                       border=args.border, declare_nodata=declared) for declared in (True, False)}
    results = {}
    for entry in args.checkpoint:
        name, _, checkpoint = entry.partition("=")
        seconds = {}
        for declared, scene in scenes.items():
            # A segmentation map is one file, kept by a rerun unless --overwrite; detection writes into a folder.
            dense = name != "detection"
            output = args.work / name / (scene.stem + (".tif" if dense else ""))
            seconds["nodata declared" if declared else "no nodata"] = predict_seconds(
                checkpoint, scene, output, ["--overwrite"] if dense else [])
        results[name] = {"checkpoint": checkpoint, "seconds": seconds,
                         "speed-up": round(seconds["no nodata"] / seconds["nodata declared"], 2)}
        print(f"{name}: {seconds} -> {results[name]['speed-up']}x")
    valid = (args.size - 2 * args.border) ** 2 / args.size ** 2
    record = {
        "what": "lemevit predict of one scene with a nodata border, declared and not declared; seconds from "
                "predict's summary line",
        "command": f"python benchmarks/nodata_scene.py --checkpoint {' '.join(args.checkpoint)} --size {args.size} "
                   f"--border {args.border}",
        "scene": f"{args.size}x{args.size}, {args.border} px of no data along each edge ({valid:.0%} valid)",
        "results": results, "threads": torch.get_num_threads(), "load_average_at_end": os.getloadavg(),
        "torch": torch.__version__, "machine": machine_description(),
    }
    output = HERE / "results" / "nodata_scene.json"
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
