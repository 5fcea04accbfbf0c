"""What the runtimes change in accuracy: each run evaluated by ``lemevit eval`` on its evaluation split (held out,
or the training tiles of a run of split 1.0) with
``--runtime torch``, ``onnxruntime`` and ``onnxruntime-int8`` (dynamic int8 quantization of the matrix products).

    lemevit demo --output runs/demo                    # the demo's classifier and its held-out split
    lemevit train --task segmentation ...              # e.g. the Potsdam run of benchmarks/README.md
    python benchmarks/int8_accuracy.py runs/demo/run/best.ckpt runs/potsdam/best.ckpt

Writes results/int8_accuracy.json: per run, each runtime's scores (top-1/top-5, or mIoU/OA) and the change of
int8 against torch. The exports are cached beside each checkpoint, as ``eval --runtime`` does.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import onnxruntime
import torch

from lemevit.bench import machine_description
from lemevit.engine import evaluate_checkpoint
from lemevit.io import atomic_path
from lemevit.io.checkpoint import trained_model_task

HERE = Path(__file__).parent
RUNTIMES = ("torch", "onnxruntime", "onnxruntime-int8")
SCORES = {"classification": ("top1", "top5"), "segmentation": ("miou", "oa"), "change": ("f1", "iou")}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path, help="runs' best.ckpt (classification, segmentation, change)")
    args = p.parse_args()

    results = {}
    for checkpoint in args.checkpoints:
        task = trained_model_task(checkpoint)
        scores = {}
        for runtime in RUNTIMES:
            metrics = evaluate_checkpoint(checkpoint, checkpoint.parent / f"eval_{runtime}", progress=False,
                                          runtime=runtime, num_workers=0)
            scores[runtime] = {k: metrics[k] for k in SCORES[task]}
            scores[runtime]["evaluated"] = metrics.get("num_images", metrics.get("num_tiles", metrics.get("num_pairs")))
        first = SCORES[task][0]
        change = scores["onnxruntime-int8"][first] - scores["torch"][first]
        results[str(checkpoint)] = {"task": task, "scores": scores, f"int8_minus_torch_{first}": change}
        print(f"{checkpoint} ({task}): " + ", ".join(f"{r} {first} {s[first]:.4f}" for r, s in scores.items()))
    record = {"what": "lemevit eval of each run on its evaluation split, per runtime", "results": results,
              "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
              "machine": machine_description()}
    output = HERE / "results" / "int8_accuracy.json"
    with atomic_path(output) as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
