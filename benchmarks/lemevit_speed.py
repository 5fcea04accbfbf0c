"""LeMeViT inference speed against timm's PVTv2, measured interleaved in one run.

Pairs (ours, peer): lemevit_tiny vs pvt_v2_b1 and lemevit_small vs pvt_v2_b2, as in the LeMeViT paper.
Writes the figures to benchmarks/results/<name>.json and prints a Markdown table.

    python benchmarks/lemevit_speed.py --batch-size 16 --name cpu_b16_fp32_eager
    python benchmarks/lemevit_speed.py --batch-size 1 --pairs lemevit_tiny:pvt_v2_b1 --name cpu_b1_fp32_eager
    python benchmarks/lemevit_speed.py --batch-size 16 --compile --freezing --name cpu_b16_fp32_compiled
    python benchmarks/lemevit_speed.py --device cuda --batch-size 256 --dtype fp16 --channels-last --name gpu
"""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import torch

from lemevit.bench import build_runner, measure_interleaved
from lemevit.io import atomic_path

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="+", default=["lemevit_tiny:pvt_v2_b1", "lemevit_small:pvt_v2_b2"],
                   help="ours:peer pairs")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--freezing", action="store_true", help="inductor weight freezing (with --compile)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--name", required=True, help="results file stem")
    args = p.parse_args()

    pairs = [tuple(pair.split(":")) for pair in args.pairs]
    names = list(dict.fromkeys(n for pair in pairs for n in pair))
    runners = {n: build_runner(n, args.batch_size, args.img_size, args.device, args.dtype, args.channels_last,
                               args.compile, args.freezing) for n in names}
    results = measure_interleaved(runners, args.batch_size, args.img_size, args.rounds, args.warmup)

    record = {
        "setting": vars(args) | {"pairs": args.pairs},
        "environment": {
            "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": platform.processor(),
            "machine": platform.machine(), "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
            "malloc_env": {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")},
        },
        "models": {n: {"img_per_s": m.throughput, "median_s": m.median, "p10_s": m.quantile(0.1),
                       "p90_s": m.quantile(0.9), "seconds": m.seconds} for n, m in results.items()},
        "ratios": {},
    }
    print(f"\n{args.name}: batch {args.batch_size}, {args.img_size}px, {args.dtype}, "
          f"{'compiled' if args.compile else 'eager'}, {args.device}")
    print("| ours | img/s | peer | img/s | ratio (median) | p10-p90 |\n|---|---|---|---|---|---|")
    for ours, peer in pairs:
        med, lo, hi = results[ours].ratio_to(results[peer])
        record["ratios"][f"{ours}/{peer}"] = {"median": med, "p10": lo, "p90": hi}
        print(f"| {ours} | {results[ours].throughput:.1f} | {peer} | {results[peer].throughput:.1f} "
              f"| {med:.3f} | {lo:.2f}-{hi:.2f} |")
    RESULTS.mkdir(exist_ok=True)
    with atomic_path(RESULTS / f"{args.name}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
