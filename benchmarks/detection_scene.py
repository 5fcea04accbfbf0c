"""Oriented detection over a whole scene with ``lemevit predict``: the time of each stage (reading, backbone, FPN,
RPN head, proposals, RoI Align, box head, box NMS, merging the windows, writing), as predict's summary line reports
it, for each checkpoint given, e.g. one barely trained and one trained (an untrained detector scores every
proposal near the threshold and floods NMS, which a trained one does not).

    python benchmarks/detection_scene.py --checkpoint early=RUN/epoch1.ckpt trained=RUN/best.ckpt --label after
    python benchmarks/detection_scene.py --untrained 256 1024 --label after

--untrained WINDOW builds the detector `lemevit train --task detection --img-size WINDOW` starts from (LeMeViT-Tiny,
the 15 DOTA classes, every other setting at its default) with random weights (torch.manual_seed(0): the same weights
for every version of the code), by the code measured, and predicts with it as checkpoint ``untrained<WINDOW>``.

The scene is the largest shipped DOTA sample (P0168, 2304x1792) mirrored about its edges into a --size x --size
3-band GeoTIFF (scene_throughput.py's), written once into --work. Each checkpoint predicts it once. The figures are
merged into results/detection_scene.json under --label, so that runs of two versions of the code sit side by side.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import time
from pathlib import Path

import torch
from scene_throughput import mirrored_scene

from lemevit.bench import machine_description
from lemevit.cli import main as lemevit
from lemevit.data.detection import DOTA_V1_CLASSES
from lemevit.io import atomic_path
from lemevit.io.checkpoint import TASK_KEY
from lemevit.tasks.detection import DetectionTask

HERE = Path(__file__).parent
SHARED = HERE.parent.parent / "shared" / "data" / "dota_v1_samples" / "images" / "P0168.png"
SUMMARY = re.compile(r"([\d.]+) Mpx in ([\d.]+) s \(([\d.]+) Mpx/s\); by stage: (.*)")
STAGE = re.compile(r"(?:^|, )([a-z ()]+) ([\d.]+) s \(\d+%\)")
OBJECTS = re.compile(r": (\d+) objects")


def predict_once(checkpoint: Path, scene: Path, output: Path, extra: list[str]) -> dict:
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = lemevit(["predict", "--checkpoint", str(checkpoint), str(scene), "--output", str(output), *extra])
    wall = time.perf_counter() - start
    found, objects = SUMMARY.search(printed.getvalue()), OBJECTS.search(printed.getvalue())
    if code != 0 or found is None or objects is None:
        raise SystemExit(f"lemevit predict of {checkpoint} failed (exit {code}): {printed.getvalue()}")
    mpx, seconds, rate, stages = found.groups()
    return {"objects": int(objects.group(1)), "mpx": float(mpx), "seconds": float(seconds), "mpx_per_s": float(rate),
            "wall_seconds": round(wall, 1),
            "stage_seconds": {name: float(value) for name, value in STAGE.findall(stages)}}


def untrained_detector(path: Path, window: int) -> Path:
    """The checkpoint of the default detector for ``window`` px windows with random weights (seed 0)."""
    torch.manual_seed(0)
    module = DetectionTask("lemevit_tiny", num_classes=len(DOTA_V1_CLASSES), class_names=list(DOTA_V1_CLASSES),
                           img_size=window)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": dict(module.hparams),
                TASK_KEY: DetectionTask.name}, path)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="*", default=[], metavar="NAME=PATH",
                   help="detection runs' checkpoints (or model files), each with a name for the record")
    p.add_argument("--untrained", type=int, nargs="*", default=[], metavar="WINDOW",
                   help="also the default detector for these window sides with random weights (see above)")
    p.add_argument("--size", type=int, default=4000)
    p.add_argument("--label", required=True, help="what the code measured is (before, after, ...)")
    p.add_argument("--source", type=Path, default=SHARED, help="the image mirrored into the scene")
    p.add_argument("--predict-options", default="", help="more options for lemevit predict, quoted")
    p.add_argument("--work", type=Path, default=HERE / "runs" / "detection_scene")
    args = p.parse_args()
    load_at_start = os.getloadavg()
    scene = mirrored_scene(args.work / f"dota_mirrored_{args.size}.tif", args.size, args.source)
    checkpoints = list(args.checkpoint)
    for window in args.untrained:
        path = untrained_detector(args.work / args.label / f"untrained{window}.ckpt", window)
        checkpoints.append(f"untrained{window}={path}")
    results = {}
    for entry in checkpoints:
        name, _, path = entry.partition("=")
        results[name] = {"checkpoint": path, **predict_once(Path(path), scene, args.work / args.label / name,
                                                            args.predict_options.split())}
        print(f"{name}: {results[name]['seconds']:.1f} s, {results[name]['objects']} objects; "
              f"{results[name]['stage_seconds']}")
    output = HERE / "results" / "detection_scene.json"
    record = json.loads(output.read_text()) if output.is_file() else {}
    # The commit of the code measured: the checkout lemevit was imported from (PYTHONPATH).
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(lemevit.__code__.co_filename).parent)
    record[args.label] = {
        "what": "lemevit predict of a mirrored DOTA GeoTIFF by oriented detection; seconds per stage from predict's "
                "summary line",
        "command": f"python benchmarks/detection_scene.py --checkpoint {' '.join(args.checkpoint)} --untrained "
                   f"{' '.join(map(str, args.untrained))} --size {args.size} --label {args.label}"
                   + (f" --predict-options '{args.predict_options}'" if args.predict_options else ""),
        "commit": commit.stdout.strip(), "load_average_at_start": load_at_start,
        "scene": f"{args.size}x{args.size}", "results": results,
        "threads": torch.get_num_threads(), "load_average_at_end": os.getloadavg(), "torch": torch.__version__,
        "machine": machine_description(),
    }
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
