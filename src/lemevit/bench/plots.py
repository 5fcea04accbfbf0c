"""Pictures of a benchmark record: speed against cost (the LeMeViT paper's comparison figure) and time and
memory against resolution (the VVT paper's scaling curve)."""
from __future__ import annotations

from pathlib import Path

from lemevit.io import atomic_path

__all__ = ["is_ours", "plot_scaling", "plot_throughput_vs_cost"]

_OUR_PREFIXES = ("lemevit_", "lvt", "vvt_")


def is_ours(name: str) -> bool:
    return name.startswith(_OUR_PREFIXES)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")


def _measured(record: dict, measure: str) -> list[dict]:
    return [r for r in record["rows"] if r["measure"] == measure and r["img_per_s"] is not None]


def plot_throughput_vs_cost(record: dict, path: str | Path) -> bool:
    """Throughput against GMACs and against parameters, one point per model, for the first measured
    setting (dtype, size, batch) of the first mode; ours in colour. False when nothing was measured."""
    mode = record["setting"]["modes"][0]
    rows = [r for r in _measured(record, mode) if r["gmacs"] is not None]
    if not rows:
        return False
    first = rows[0]
    rows = [r for r in rows if (r["dtype"], r["img_size"], r["batch_size"]) ==
            (first["dtype"], first["img_size"], first["batch_size"])]
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, key, scale, label in ((axes[0], "gmacs", 1.0, "GMACs per image"),
                                  (axes[1], "params", 1e-6, "parameters (M)")):
        for r in rows:
            ours = is_ours(r["model"])
            ax.scatter(r[key] * scale, r["img_per_s"], s=60 if ours else 36, marker="*" if ours else "o",
                       color="tab:red" if ours else "tab:gray", zorder=3)
            ax.annotate(r["model"], (r[key] * scale, r["img_per_s"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color="tab:red" if ours else "black")
        ax.set_xlabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"{mode} throughput (img/s)")
    env = record["environment"]
    where = env["gpu"] or f"{env['cpu']} ({env['cpu_capability']}), {env['threads']} threads"
    fig.suptitle(f"{mode}, batch {first['batch_size']}, {first['img_size']} px, {first['dtype']}"
                 f"{', channels_last' if first['channels_last'] else ''}{', compiled' if first['compile'] else ''}"
                 f" on {where}", fontsize=10)
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)
    return True


def plot_scaling(record: dict, path: str | Path) -> bool:
    """Time per image and peak memory against image side, per model, for the first mode, dtype and batch
    size; log-log, so linear growth in pixels has slope 2. False unless two or more sizes were measured."""
    mode = record["setting"]["modes"][0]
    rows = _measured(record, mode)
    if not rows:
        return False
    first = rows[0]
    rows = [r for r in rows if (r["dtype"], r["batch_size"]) == (first["dtype"], first["batch_size"])]
    sizes = sorted({r["img_size"] for r in rows})
    if len(sizes) < 2:
        return False
    import matplotlib.ticker

    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    models = list(dict.fromkeys(r["model"] for r in rows))
    for name in models:
        mine = sorted((r for r in rows if r["model"] == name), key=lambda r: r["img_size"])
        style = {"linewidth": 2.2 if is_ours(name) else 1.2, "marker": "o", "label": name}
        axes[0].plot([r["img_size"] for r in mine], [r["ms_median"] / r["batch_size"] for r in mine], **style)
        with_memory = [r for r in mine if r["peak_mib"] is not None]
        if with_memory:
            axes[1].plot([r["img_size"] for r in with_memory], [r["peak_mib"] for r in with_memory], **style)
    for ax, label in ((axes[0], "time per image (ms)"), (axes[1], "peak memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("image side (px)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{mode}, batch {first['batch_size']}, {first['dtype']}, {first['device']}", fontsize=10)
    fig.tight_layout()
    _save(fig, Path(path))
    plt.close(fig)
    return True
