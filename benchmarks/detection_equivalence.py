"""Do two versions of the code detect the same boxes with the same weights? ``lemevit eval`` and ``lemevit predict`` of
one checkpoint over a DOTA folder, run once per version (``PYTHONPATH=OTHER_CHECKOUT/src``); the second run compares
its Task-1 lines with the first's, box by box.

    PYTHONPATH=../before/src python benchmarks/detection_equivalence.py --checkpoint RUN/best.ckpt --label before
    python benchmarks/detection_equivalence.py --checkpoint RUN/best.ckpt --label after --compare before

A checkpoint whose run gave its proposal budgets explicitly (``--rpn-proposals``, ``--test-proposals``, as
detection_overfit.py's does) runs with the same budgets under every version. Writes results/detection_equivalence.json.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import subprocess
from pathlib import Path

import numpy as np

from lemevit.cli import main as lemevit
from lemevit.io import atomic_path

HERE = Path(__file__).parent


def task1_detections(folder: Path) -> dict[tuple[str, str], np.ndarray]:
    """``(image, class) -> (n, 9)`` rows of score and corners from the Task-1 files, by decreasing score (then by
    corners, for ties)."""
    found = {}
    for path in sorted(folder.glob("Task1_*.txt")):
        name = path.stem.removeprefix("Task1_")
        for line in path.read_text().splitlines():
            image, *values = line.split()
            found.setdefault((image, name), []).append([float(v) for v in values])
    return {key: np.array(sorted(rows, key=lambda r: (-r[0], *r[1:]))) for key, rows in found.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data", type=Path, required=True, help="a DOTA folder (images/, labelTxt/)")
    p.add_argument("--label", required=True)
    p.add_argument("--compare", help="the label of an earlier run to compare with")
    p.add_argument("--work", type=Path, default=HERE / "runs" / "detection_equivalence")
    args = p.parse_args()
    output = args.work / args.label
    with contextlib.redirect_stdout(io.StringIO()):
        evaluated = lemevit(["eval", "--checkpoint", str(args.checkpoint), "--data", str(args.data), "--output",
                             str(output / "eval"), "--accelerator", "cpu"])
        predicted = lemevit(["predict", "--checkpoint", str(args.checkpoint), str(args.data / "images"), "--output",
                             str(output / "predict"), "--accelerator", "cpu"])
    if evaluated or predicted:
        raise SystemExit(f"lemevit eval or predict failed (exit {evaluated}, {predicted})")
    metrics = json.loads((output / "eval" / "metrics.json").read_text())
    detections = task1_detections(output / "predict")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(lemevit.__code__.co_filename).parent)
    entry = {"checkpoint": str(args.checkpoint), "data": str(args.data), "code_commit": commit.stdout.strip(),
             "map50": metrics["map50"], "boxes": sum(len(rows) for rows in detections.values())}
    if args.compare:
        before = task1_detections(args.work / args.compare / "predict")
        same_keys = before.keys() == detections.keys()
        same_counts = same_keys and all(len(before[k]) == len(detections[k]) for k in before)
        entry["compared_with"] = args.compare
        entry["same_boxes_per_image_and_class"] = same_counts
        if same_counts and before:
            entry["largest_score_difference"] = max(float(np.abs(before[k][:, 0] - detections[k][:, 0]).max())
                                                    for k in before)
            entry["largest_corner_difference_px"] = max(float(np.abs(before[k][:, 1:] - detections[k][:, 1:]).max())
                                                        for k in before)
    record_path = HERE / "results" / "detection_equivalence.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    record[args.label] = entry
    with atomic_path(record_path) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(json.dumps(entry, indent=1))


if __name__ == "__main__":
    main()
