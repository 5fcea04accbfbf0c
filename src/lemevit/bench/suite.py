"""A benchmark of several models over a grid of settings, measured side by side.

For every (dtype, image size, mode, batch size) the models are timed interleaved (see
:func:`~lemevit.bench.measure_interleaved`); latency is timed the same way at batch 1. Each model also
gets its parameters, MACs (one counter for all, :data:`~lemevit.bench.cost.MAC_COUNTER`) and, per setting,
its peak memory. A setting that fails for one model (out of memory, an unsupported dtype) is recorded
as an error for that model and the rest goes on.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import gc
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import timm
import torch

import lemevit
from lemevit.bench.cost import MAC_COUNTER, count_macs, count_parameters
from lemevit.bench.machine import cpu_capability, cpu_name
from lemevit.bench.memory import peak_memory_mib
from lemevit.bench.throughput import (
    DTYPES,
    MODES,
    Measurement,
    build_model,
    build_onnxruntime_step,
    build_step,
    check_dtype,
    describe_error,
    measure_interleaved,
)
from lemevit.errors import ConfigError, LemevitError
from lemevit.inference.runtime import RUNTIMES
from lemevit.io import atomic_path

__all__ = ["CSV_COLUMNS", "BenchmarkConfig", "format_table", "run_benchmark", "write_outputs"]

CSV_COLUMNS = ["model", "runtime", "measure", "img_size", "batch_size", "dtype", "device", "channels_last", "compile",
               "params", "gmacs", "img_per_s", "ms_median", "ms_p10", "ms_p90", "peak_mib", "error"]


@dataclass
class BenchmarkConfig:
    """What to measure. ``modes`` holds ``"inference"`` and/or ``"train"``; ``pairs`` are ``"ours:peer"``
    names whose per-round speed ratios are reported."""

    models: list[str]
    img_sizes: list[int] = field(default_factory=lambda: [224])
    batch_sizes: list[int] = field(default_factory=lambda: [16])
    dtypes: list[str] = field(default_factory=lambda: ["fp32"])
    modes: list[str] = field(default_factory=lambda: ["inference"])
    device: str = "auto"
    channels_last: bool = False
    compile: bool = False
    latency: bool = True
    memory: bool = True
    rounds: int = 10
    warmup: int = 2
    pairs: list[str] = field(default_factory=list)
    runtimes: list[str] = field(default_factory=lambda: ["torch"])

    def labels(self) -> dict[str, tuple[str, str]]:
        """Each measured entry's label and its (model, runtime): ``name`` on torch, ``name@onnxruntime``."""
        return {name if runtime == "torch" else f"{name}@{runtime}": (name, runtime)
                for name in dict.fromkeys(self.models) for runtime in self.runtimes}

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("models", "give at least one model name")
        for key in ("img_sizes", "batch_sizes"):
            values = getattr(self, key)
            if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
                raise ConfigError(key, f"expected positive integers, got {values!r}")
        for key, allowed in (("dtypes", DTYPES), ("modes", MODES)):
            bad = [v for v in getattr(self, key) if v not in allowed]
            if bad or not getattr(self, key):
                raise ConfigError(key, f"{bad or 'nothing given'}; expected some of {list(allowed)}")
        if self.rounds < 1 or self.warmup < 0:
            raise ConfigError("rounds", f"must be >= 1 and `warmup` >= 0, got {self.rounds} and {self.warmup}")
        for pair in self.pairs:
            if pair.count(":") != 1 or not all(pair.split(":")):
                raise ConfigError("pairs", f"{pair!r} is not of the form ours:peer")
            absent = [name for name in pair.split(":") if name not in self.labels()]
            if absent:
                raise ConfigError("pairs", f"{pair!r} names {', '.join(absent)}, which `models` and `runtimes` do "
                                           "not measure (onnxruntime entries are NAME@onnxruntime)")
        if self.device == "auto":
            self.device = "cuda" if torch.cuda.is_available() else "cpu"
        kind = torch.device(self.device).type
        if kind == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device", f"{self.device}: no CUDA device is available here; use cpu")
        if kind not in ("cpu", "cuda"):
            raise ConfigError("device", f"{self.device}: expected cpu, cuda, cuda:N or auto")
        bad = [r for r in self.runtimes if r not in RUNTIMES]
        if bad or not self.runtimes:
            raise ConfigError("runtimes", f"{bad or 'nothing given'}; expected some of {list(RUNTIMES)}")
        if any(r.startswith("onnxruntime") for r in self.runtimes) and kind != "cpu":
            raise ConfigError("runtimes", "onnxruntime is measured on the CPU: use `device` cpu")


def _unknown_model_message(name: str) -> str:
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"unknown model {name!r}: neither lemevit's registry nor timm has it (see `lemevit models`){hint}"


def _environment(device: str) -> dict:
    return {
        "lemevit": lemevit.__version__, "torch": torch.__version__, "timm": timm.__version__,
        "cpu": cpu_name(), "cpu_capability": cpu_capability(), "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
    }


def _row(cfg: BenchmarkConfig, model: str, measure: str, img_size: int, batch_size: int, dtype: str,
         cost: dict, runtime: str = "torch") -> dict:
    return {"model": model, "runtime": runtime, "measure": measure, "img_size": img_size, "batch_size": batch_size,
            "dtype": dtype, "device": cfg.device, "channels_last": cfg.channels_last, "compile": cfg.compile,
            "params": cost.get("params"), "gmacs": cost.get("macs", {}).get(img_size, 0) / 1e9 or None,
            "img_per_s": None, "ms_median": None, "ms_p10": None, "ms_p90": None, "peak_mib": None,
            "error": None, "seconds": []}


def _fill(row: dict, m: Measurement) -> None:
    row.update(img_per_s=m.throughput, ms_median=1e3 * m.median, ms_p10=1e3 * m.quantile(0.1),
               ms_p90=1e3 * m.quantile(0.9), seconds=list(m.seconds))


def _measure_setting(cfg: BenchmarkConfig, labels: dict[str, tuple[str, str]], measure: str, mode: str,
                     img_size: int, batch_size: int, dtype: str, costs: dict, progress: bool
                     ) -> tuple[list[dict], dict]:
    rows = {label: _row(cfg, label, measure, img_size, batch_size, dtype, costs[name], runtime)
            for label, (name, runtime) in labels.items()}
    errors: dict[str, str] = {}
    runners = {}
    with tempfile.TemporaryDirectory(prefix="lemevit-benchmark-") as exports:
        for label, (name, runtime) in labels.items():
            try:
                if runtime.startswith("onnxruntime"):
                    if mode != "inference" or dtype != "fp32" or cfg.channels_last or cfg.compile:
                        errors[label] = "onnxruntime is measured in fp32 inference only"
                        continue
                    runners[label] = build_onnxruntime_step(name, batch_size, img_size, exports,
                                                            int8=runtime == "onnxruntime-int8")
                else:
                    runners[label] = build_step(name, batch_size, img_size, cfg.device, dtype, cfg.channels_last,
                                                cfg.compile, freezing=cfg.device == "cpu", mode=mode)
            except (RuntimeError, ValueError, TypeError, AssertionError, LemevitError,
                    torch.OutOfMemoryError) as e:
                errors[label] = describe_error(e, batch_size, img_size)
        results = measure_interleaved(runners, batch_size, img_size, cfg.rounds, cfg.warmup, progress, errors)
        del runners
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    for label, m in results.items():
        _fill(rows[label], m)
        name, runtime = labels[label]
        if cfg.memory and measure != "latency" and runtime == "torch":
            try:
                rows[label]["peak_mib"] = peak_memory_mib(name, img_size, batch_size, cfg.device, dtype,
                                                          cfg.channels_last, mode)
            except RuntimeError as e:
                rows[label]["error"] = f"peak memory: {describe_error(e, batch_size, img_size)}"
    for label, message in errors.items():
        rows[label]["error"] = message
    return list(rows.values()), results


def _ratios(cfg: BenchmarkConfig, setting: dict, results: dict[str, Measurement]) -> list[dict]:
    out = []
    for pair in cfg.pairs:
        ours, peer = pair.split(":")
        if ours in results and peer in results:
            median, p10, p90 = results[ours].ratio_to(results[peer])
            out.append({"ours": ours, "peer": peer, **setting, "median": median, "p10": p10, "p90": p90})
    return out


def run_benchmark(cfg: BenchmarkConfig, progress: bool = True, log=print) -> dict:
    """Measure every model of ``cfg`` in every setting; returns the record :func:`write_outputs` saves."""
    record = {"setting": dataclasses.asdict(cfg), "environment": _environment(cfg.device),
              "mac_counter": MAC_COUNTER, "models": {}, "rows": [], "ratios": []}
    known = []
    for name in dict.fromkeys(cfg.models):
        if not timm.is_model(name):
            message = _unknown_model_message(name)
            log(f"skipping: {message}")
            record["rows"].append({**_row(cfg, name, "-", 0, 0, "-", {}), "error": message})
            continue
        known.append(name)
    costs: dict[str, dict] = {}
    for name in known:
        costs[name] = {"macs": {}}
        for img_size in cfg.img_sizes:
            try:
                model = build_model(name, img_size)
                costs[name]["params"] = count_parameters(model)
                costs[name]["macs"][img_size] = count_macs(model, img_size)
            except (RuntimeError, ValueError, TypeError, AssertionError) as e:
                log(f"{name}: no MAC count at {img_size} px ({describe_error(e, 1, img_size)})")
        record["models"][name] = {"params": costs[name].get("params"),
                                  "macs": {str(k): v for k, v in costs[name]["macs"].items()}}
    dtypes = []
    for dtype in cfg.dtypes:
        try:
            check_dtype(dtype, cfg.device)
            dtypes.append(dtype)
        except ValueError as e:
            log(f"skipping dtype {dtype}: {e}")
            record["rows"] += [{**_row(cfg, n, "-", 0, 0, dtype, costs[n]), "error": str(e)} for n in known]

    plan = [(dtype, size, mode, batch) for dtype in dtypes for size in cfg.img_sizes for mode in cfg.modes
            for batch in cfg.batch_sizes]
    if cfg.latency:
        plan += [(dtype, size, "latency", 1) for dtype in dtypes for size in cfg.img_sizes]
    for dtype, size, measure, batch in plan:
        mode = "inference" if measure == "latency" else measure
        log(f"{measure}: batch {batch}, {size} px, {dtype}, {cfg.device}"
            f"{', channels_last' if cfg.channels_last else ''}{', compiled' if cfg.compile else ''}")
        labels = {label: entry for label, entry in cfg.labels().items() if entry[0] in known}
        rows, results = _measure_setting(cfg, labels, measure, mode, size, batch, dtype, costs, progress)
        record["rows"] += rows
        record["ratios"] += _ratios(cfg, {"measure": measure, "img_size": size, "batch_size": batch,
                                          "dtype": dtype}, results)
        log(format_table(rows))
    return record


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: list[dict]) -> str:
    """A Markdown table of rows (one setting or many)."""
    lines = ["| model | measure | px | batch | dtype | params (M) | GMACs | img/s | ms median | ms p90 | peak MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["error"] and r["img_per_s"] is None:
            lines.append(f"| {r['model']} | {r['measure']} | {r['img_size'] or '-'} | {r['batch_size'] or '-'} "
                         f"| {r['dtype']} | error: {r['error']} |||||||")
            continue
        params = None if r["params"] is None else r["params"] / 1e6
        lines.append(f"| {r['model']} | {r['measure']} | {r['img_size']} | {r['batch_size']} | {r['dtype']} "
                     f"| {_fmt(params, '.2f')} | {_fmt(r['gmacs'], '.3f')} | {_fmt(r['img_per_s'], '.1f')} "
                     f"| {_fmt(r['ms_median'], '.1f')} | {_fmt(r['ms_p90'], '.1f')} | {_fmt(r['peak_mib'], '.0f')} |")
    return "\n".join(lines)


def format_ratios(ratios: list[dict]) -> str:
    lines = ["| ours / peer | measure | px | batch | dtype | speed ratio (median) | p10-p90 |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['ours']} / {r['peer']} | {r['measure']} | {r['img_size']} | {r['batch_size']} | {r['dtype']} "
              f"| {r['median']:.3f} | {r['p10']:.2f}-{r['p90']:.2f} |" for r in ratios]
    return "\n".join(lines)


def write_outputs(record: dict, output: str | Path) -> list[Path]:
    """``benchmark.json`` (everything, per-round times included), ``benchmark.csv`` (one row per model and
    setting), ``benchmark.md`` (the tables) and the plots; every file written atomically."""
    from lemevit.bench.plots import plot_scaling, plot_throughput_vs_cost

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    with atomic_path(output / "benchmark.json") as tmp:
        tmp.write_text(json.dumps(record, indent=1))
    written.append(output / "benchmark.json")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(record["rows"])
    with atomic_path(output / "benchmark.csv") as tmp:
        tmp.write_text(buffer.getvalue())
    written.append(output / "benchmark.csv")
    tables = format_table(record["rows"])
    if record["ratios"]:
        tables += "\n\n" + format_ratios(record["ratios"])
    with atomic_path(output / "benchmark.md") as tmp:
        tmp.write_text(f"MACs: {record['mac_counter']}\n\n{tables}\n")
    written.append(output / "benchmark.md")
    for plot, stem in ((plot_throughput_vs_cost, "throughput_vs_cost"), (plot_scaling, "scaling")):
        if plot(record, output / f"{stem}.png"):
            written.append(output / f"{stem}.png")
    return written
