"""How inference time and peak memory grow with resolution: VVT (linear attention) against peers whose
attention is quadratic in the number of tokens.

Time: batch 1, fp32, eager, the models interleaved at each size (median of ``--rounds``). Peak memory:
the rise of the process's resident-set high-water mark during one forward, in a fresh process per model
and size (CPU, Linux), or CUDA max allocated on a GPU.

    python benchmarks/vvt_scaling.py --name cpu_vvt_scaling

Writes results/<name>.json and results/<name>.png (time and memory against pixels per side).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from lemevit.bench import build_runner, measure_interleaved
from lemevit.io import atomic_path

RESULTS = Path(__file__).parent / "results"


def model_kwargs(name: str) -> dict:
    """Plain ViTs need ``dynamic_img_size`` to take other sizes than 224; hierarchical models take any."""
    return {"dynamic_img_size": True} if name.startswith(("deit", "vit")) else {}


def peak_memory_mib(name: str, size: int, device: str) -> float:
    """Peak memory growth of one forward, measured in a child process so that each figure is clean.

    On CPU: the rise of the resident set's high-water mark (VmHWM, reset before the forward through
    /proc/self/clear_refs) over the resident set just before it; on CUDA: max allocated.
    """
    code = (
        "import re, timm, torch, lemevit\n"
        f"m = timm.create_model({name!r}, **{model_kwargs(name)!r}).eval().to({device!r})\n"
        f"x = torch.randn(1, 3, {size}, {size}, device={device!r})\n"
        "status = lambda key: int(re.search(key + r':\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "if x.is_cuda: torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()\n"
        "else: open('/proc/self/clear_refs', 'w').write('5'); base = status('VmRSS')\n"
        "with torch.inference_mode(): m(x)\n"
        "print((torch.cuda.max_memory_allocated() - base) / 2**20 if x.is_cuda else (status('VmHWM') - base) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["vvt_tiny", "pvt_v2_b1", "deit_small_patch16_224"])
    p.add_argument("--sizes", nargs="+", type=int, default=[224, 448, 896, 1344])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--name", required=True)
    p.add_argument("--replot", action="store_true", help="only redraw results/<name>.png from its JSON")
    args = p.parse_args()
    if args.replot:
        record = json.loads((RESULTS / f"{args.name}.json").read_text())
        plot(record, record["setting"]["sizes"], RESULTS / f"{args.name}.png")
        return

    record = {"setting": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "time_s": {m: {} for m in args.models}, "peak_mib": {m: {} for m in args.models}}
    for size in args.sizes:
        runners = {name: build_runner(name, 1, size, args.device, model_kwargs=model_kwargs(name))
                   for name in args.models}
        results = measure_interleaved(runners, 1, size, rounds=args.rounds, warmup=1)
        for name, m in results.items():
            record["time_s"][name][str(size)] = m.median
            record["peak_mib"][name][str(size)] = peak = peak_memory_mib(name, size, args.device)
            print(f"{name:28s} {size:5d}px  {m.median:8.3f} s  {peak:9.1f} MiB", flush=True)

    first, last = args.sizes[0], args.sizes[-1]
    token_ratio = (last / first) ** 2
    record["growth"] = {name: {"time": t[str(last)] / t[str(first)], "token_ratio": token_ratio}
                        for name, t in record["time_s"].items()}
    for name, g in record["growth"].items():
        print(f"{name}: time x{g['time']:.1f} from {first} to {last} px (tokens x{token_ratio:.0f})")

    RESULTS.mkdir(exist_ok=True)
    with atomic_path(RESULTS / f"{args.name}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    plot(record, args.sizes, RESULTS / f"{args.name}.png")


def plot(record: dict, sizes: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "time_s", "time per image (s)"), (axes[1], "peak_mib", "peak memory (MiB)")):
        for name, values in record[key].items():
            ax.plot(sizes, [values[str(s)] for s in sizes], marker="o", label=name)
        ax.set_xlabel("image side (px)")
        ax.set_ylabel(label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"Scaling with resolution, batch 1, {record['setting']['device']}, torch {record['torch']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


if __name__ == "__main__":
    main()
