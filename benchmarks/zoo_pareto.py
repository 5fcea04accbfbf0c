"""The papers' efficiency claim on remote-sensing scenes: held-out AID top-1 against CPU inference throughput for
our models and the peers of their related work that timm has, every one trained with the same recipe and budget.

    # the zoo's data (AID 150 px + UC Merced, one 51-class label space; see pretrain_zoo.py), and its runs: the
    # zoo's weights and the peers are trained by the same command, one at a time (each resumes when rerun)
    nice -n 19 python benchmarks/pretrain_zoo.py --data /data/zoo --runs /work/zoo-runs --models lvt lemevit_small \
        vvt_tiny lemevit_tiny deit_tiny_patch16_224 resnet18 fastvit_t8 pvt_v2_b1 resnet50 \
        swin_tiny_patch4_window7_224 pvt_v2_b2
    # then, alone on the machine (the throughput is measured here)
    python benchmarks/zoo_pareto.py --data /data/zoo --runs /work/zoo-runs --output benchmarks/results/zoo_pareto

For each model of ``--models``: its score in the record ``pretrain_zoo.py`` committed for it
(``--records``/pretrain_zoo_<model>.json, same epochs, size and held-out folder), or else ``lemevit train`` with
the recipe of ``pretrain_zoo.py`` in ``--runs``/<model> (a run that finished is kept, an interrupted one resumes)
and ``lemevit eval`` of its ``best.ckpt`` on the ``--heldout`` folder of ``--data`` (default ``heldout_aid``: AID's
held-out scenes, scored by class name among all the classes the model learnt); then one ``lemevit benchmark`` of
all of them interleaved (the architectures at random initialisation: throughput does not depend on the weights;
inference, fp32, ``--img-size``, batch ``--bench-batch``; its folder is kept and reused while its setting is the
same and it covers the models). Writes ``zoo_pareto.json``, ``zoo_pareto.md`` (the table, each top-1 with its 95 %
Wilson interval, the Pareto front marked: no other model is both more accurate and faster) and ``zoo_pareto.png``
into ``--output``.

``--recorded-only`` gives a provisional table while the queue trains: the models with a record are scored, every
model's throughput is measured, and the ones not trained yet are listed by throughput alone (out of the front;
dotted lines on the plot):

    python benchmarks/zoo_pareto.py --data /data/zoo --runs /work/zoo-runs --recorded-only \
        --output benchmarks/results/zoo_pareto_provisional

``--train-args`` is appended to the recipe (a later flag wins), for a short proving run:

    python benchmarks/zoo_pareto.py --data TINY --heldout heldout --runs /tmp/pareto --output /tmp/pareto/out \
        --epochs 1 --models lvt resnet18 deit_tiny_patch16_224 --rounds 1 --train-args="--batch-size 4 --num-workers 0"
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
from pathlib import Path

import torch
from pretrain_zoo import RECIPE, epochs_done

from lemevit.bench import machine_description
from lemevit.cli import main as lemevit
from lemevit.engine import training_minutes
from lemevit.io import atomic_path

HERE = Path(__file__).parent

# Ours, and the peers of the LeMeViT / LVT / VVT papers' related work that timm has (two of Swin, EfficientFormer,
# FastViT and NextViT: EfficientFormer's attention biases are fixed to 224 px, and one hierarchical transformer
# and one reparameterised convolutional net cover the two kinds).
MODELS = ("lemevit_tiny", "lemevit_small", "lvt", "vvt_tiny", "pvt_v2_b1", "pvt_v2_b2", "deit_tiny_patch16_224",
          "resnet18", "resnet50", "swin_tiny_patch4_window7_224", "fastvit_t8")


def pareto_front(points: dict[str, tuple[float, float]]) -> set[str]:
    """The names whose (accuracy, throughput) no other point beats in both (at least as good in both, better in
    one)."""
    def beaten(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return b[0] >= a[0] and b[1] >= a[1] and b != a

    return {n for n, p in points.items() if not any(beaten(p, q) for m, q in points.items() if m != n)}


def wilson_interval(rate: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of an accuracy measured on ``n`` images (about ±2.7 points at 76 % on 970):
    a gap between two models' scores well inside it is not a ranking."""
    centre = (rate + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(rate * (1 - rate) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def recorded_score(model: str, args: argparse.Namespace) -> dict | None:
    """The model's score from the record ``pretrain_zoo.py`` wrote of its run (committed, so that a peer trained in
    one session, on one machine, still counts when its run directory is gone), if that run had this setting."""
    path = args.records / f"pretrain_zoo_{model}.json"
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    scored = record["heldout"].get(args.heldout)
    if scored is None or (record["epochs"], record["img_size"]) != (args.epochs, args.img_size) or args.train_args:
        return None
    return {"top1": scored["top1"], "top5": scored["top5"], "num_images": scored["num_images"],
            "train_minutes": record["train_minutes"], "record": path.name}


def train_and_score(model: str, args: argparse.Namespace, train: list[str]) -> dict:
    run = args.runs / model
    last = run / "last.ckpt"
    if not (last.is_file() and epochs_done(last) >= args.epochs):
        resume = ["--resume"] if last.is_file() else []
        assert lemevit(["train", "--data", str(args.data / "train"), "--output", str(run), "--model", model,
                        *train, *resume]) == 0
    evaluation = run / f"{args.heldout}_eval"
    assert lemevit(["eval", "--checkpoint", str(run / "best.ckpt"), "--data", str(args.data / args.heldout),
                    "--output", str(evaluation)]) == 0
    metrics = json.loads((evaluation / "metrics.json").read_text())
    return {"top1": metrics["top1"], "top5": metrics["top5"], "num_images": metrics["num_images"],
            "train_minutes": training_minutes(last)}


def benchmark_argv(models: list[str], args: argparse.Namespace) -> list[str]:
    return ["benchmark", "--models", *models, "--img-sizes", str(args.img_size), "--batch-sizes", str(args.bench_batch),
            "--mode", "inference", "--device", "cpu", "--rounds", str(args.rounds), "--no-memory", "--no-latency"]


def measure(models: list[str], args: argparse.Namespace) -> dict:
    folder = args.runs / "benchmark"
    record = folder / "benchmark.json"
    wanted = {"img_sizes": [args.img_size], "batch_sizes": [args.bench_batch], "rounds": args.rounds}
    setting = json.loads(record.read_text())["setting"] if record.is_file() else {}
    # A measurement of more models at the same setting serves a table of fewer (a provisional one while the queue
    # trains): the models were interleaved, so each one's figure does not depend on which others were measured.
    if not set(models) <= set(setting.get("models", ())) or any(setting.get(k) != v for k, v in wanted.items()):
        assert lemevit([*benchmark_argv(models, args), "--quiet", "--output", str(folder)]) in (0, 1)
    return json.loads(record.read_text())


def plot(table: list[dict], front: set[str], untrained: dict[str, float], machine: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in table:
        ours = row["model"].startswith(("lemevit", "lvt", "vvt"))
        colour = "tab:red" if ours else "tab:blue"
        low, high = row["top1_ci95"]
        ax.vlines(row["img_per_s"], 100 * low, 100 * high, color=colour, lw=0.8, alpha=0.4)
        ax.scatter(row["img_per_s"], 100 * row["top1"], marker="o" if ours else "s", color=colour,
                   edgecolors="black" if row["model"] in front else "none")
        # a label that a close, slightly faster neighbour would cover goes to the left of its point
        crowded = any(1 < other["img_per_s"] / row["img_per_s"] < 1.35 and abs(other["top1"] - row["top1"]) < 0.03
                      for other in table)
        ax.annotate(row["model"].split("_patch")[0], (row["img_per_s"], 100 * row["top1"]), fontsize=8,
                    xytext=(-3 if crowded else 3, 3), textcoords="offset points", ha="right" if crowded else "left")
    on_front = sorted((r for r in table if r["model"] in front), key=lambda r: r["img_per_s"])
    ax.plot([r["img_per_s"] for r in on_front], [100 * r["top1"] for r in on_front], color="gray", lw=0.8, ls="--")
    # labels alternate in height: two models of nearly the same speed would print over each other
    for i, (model, img_per_s) in enumerate(sorted(untrained.items(), key=lambda item: item[1])):
        ax.axvline(img_per_s, color="lightgray", lw=0.8, ls=":", zorder=0)
        ax.annotate(model.split("_patch")[0], (img_per_s, 0.02 + 0.2 * (i % 2)), xycoords=("data", "axes fraction"),
                    fontsize=7, rotation=90, color="gray", xytext=(2, 0), textcoords="offset points")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1, 2, 5)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"CPU inference throughput (img/s, log scale; {machine}, {torch.get_num_threads()} threads)")
    ax.set_ylabel("held-out AID top-1 (%)")
    ax.set_title("same recipe and budget; outlined: the Pareto front; bars: 95 % interval of top-1"
                 + ("\ndotted: throughput of models not trained yet" if untrained else ""), fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="the prepared folder: train/ and the --heldout folder")
    p.add_argument("--heldout", default="heldout_aid", help="the held-out folder of --data that scores (default "
                                                            "heldout_aid)")
    p.add_argument("--runs", type=Path, required=True, help="one run directory per model (outside the repository)")
    p.add_argument("--records", type=Path, default=HERE / "results",
                   help="the records of pretrain_zoo.py (default benchmarks/results): a model recorded there with "
                        "this setting is not trained or scored again")
    p.add_argument("--output", type=Path, required=True, help="folder of the table, the record and the plot")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--img-size", type=int, default=128)
    p.add_argument("--bench-batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--train-args", default="", help="flags appended to the recipe (quoted as one argument)")
    p.add_argument("--recorded-only", action="store_true",
                   help="a provisional table while the queue trains: score only the models with a record, measure "
                        "the throughput of all; the others are listed without accuracy and left out of the front")
    args = p.parse_args()

    train = ["--img-size", str(args.img_size), "--epochs", str(args.epochs), *RECIPE, *shlex.split(args.train_args)]
    scores = {model: recorded_score(model, args) for model in args.models}
    if not args.recorded_only:
        scores = {model: score or train_and_score(model, args, train) for model, score in scores.items()}
    bench = measure(list(args.models), args)
    speed = {r["model"]: r for r in bench["rows"] if r["measure"] == "inference" and r["img_per_s"] is not None}
    table = [{"model": m, **scores[m], "top1_ci95": wilson_interval(scores[m]["top1"], scores[m]["num_images"]),
              "params_m": speed[m]["params"] / 1e6, "gmacs": speed[m]["gmacs"],
              "img_per_s": speed[m]["img_per_s"]} for m in args.models if m in speed and scores[m]]
    untrained = {m: speed[m]["img_per_s"] for m in args.models if m in speed and not scores[m]}
    front = pareto_front({r["model"]: (r["top1"], r["img_per_s"]) for r in table})

    args.output.mkdir(parents=True, exist_ok=True)
    lines = ["| model | params (M) | GMACs | held-out top-1 | 95 % interval | top-5 | CPU img/s | train min | Pareto |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['params_m']:.2f} | {r['gmacs']:.2f} | {r['top1']:.1%} | "
              f"{r['top1_ci95'][0]:.1%}-{r['top1_ci95'][1]:.1%} | {r['top5']:.1%} | "
              f"{r['img_per_s']:.1f} | {r['train_minutes']:.0f} | {'yes' if r['model'] in front else ''} |"
              for r in sorted(table, key=lambda r: -r["img_per_s"])]
    lines += [f"| {m} | {speed[m]['params'] / 1e6:.2f} | {speed[m]['gmacs']:.2f} | not trained yet | | | "
              f"{img_per_s:.1f} | | |" for m, img_per_s in sorted(untrained.items(), key=lambda item: -item[1])]
    record = {
        "command": "lemevit train --data ZOO/train --output RUN --model MODEL " + shlex.join(train),
        "heldout": args.heldout,
        "benchmark": "lemevit " + shlex.join(benchmark_argv(list(args.models), args)),
        "data": str(args.data), "machine": machine_description(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "table": table, "pareto_front": sorted(front),
        "missing_throughput": [m for m in args.models if m not in speed],
        "not_trained": untrained,
    }
    with atomic_path(args.output / "zoo_pareto.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    with atomic_path(args.output / "zoo_pareto.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    plot(table, front, untrained, record["machine"], args.output / "zoo_pareto.png")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
