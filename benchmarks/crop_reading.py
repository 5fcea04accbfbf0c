"""What reading a random training crop costs, with and without the decoded-tile cache (RegionReader), on the
LoveDA sample's 1024² PNG tiles: PNG cannot be read by window, so without the cache every crop decodes its
whole image and mask.

    python benchmarks/crop_reading.py                  # writes results/crop_reading.json

Reads ../shared/data/loveda_seg_samples (the package's demo_data copy when that is absent).
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from segmentation_overfit import HERE, data_folder

from lemevit.data.segmentation import SegmentationCrops, scan_pairs
from lemevit.io import atomic_path
from lemevit.labels import PRESETS


def milliseconds_per_crop(crops: SegmentationCrops) -> float:
    start = time.perf_counter()
    for i in range(len(crops)):
        crops[i]
    return (time.perf_counter() - start) / len(crops) * 1000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--crops-per-tile", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="alternate the two settings this many times")
    args = p.parse_args()
    root = data_folder("loveda")
    pairs = scan_pairs(root)
    times: dict[str, list[float]] = {"no_cache": [], "cache_512_mib": []}
    for _ in range(args.repeats):
        for name, budget in (("no_cache", 0), ("cache_512_mib", 512 * 2**20)):
            crops = SegmentationCrops(root, pairs, PRESETS["loveda"], args.img_size, mean=[0, 0, 0], std=[1, 1, 1],
                                      crops_per_tile=args.crops_per_tile, class_balance=1.0, augment_seed=0,
                                      cache_bytes=budget)
            times[name].append(milliseconds_per_crop(crops))
    record = {"data": str(root), "tiles": len(pairs), "setting": vars(args),
              "ms_per_crop": {k: min(v) for k, v in times.items()}, "all_runs_ms_per_crop": times,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu"}
    print(json.dumps(record, indent=1))
    with atomic_path(HERE / "results" / "crop_reading.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
