"""Load and soak figures of ``lemevit serve`` on loopback: requests per second and p50/p99 latency at 1, 4 and 16
concurrent clients, for a classifier and a segmentation model, with and without LitServe's batching, on torch and
onnxruntime; and a soak, one server under steady load for a long time with its memory sampled.

    python benchmarks/serve_load.py --work /tmp/serve-load --seconds 20     # the grid, 20 s a cell
    python benchmarks/serve_load.py --work /tmp/serve-load --soak 600       # a 10-minute soak

Each server is ``lemevit serve`` started as a user starts it (``python -m lemevit.cli serve``, 127.0.0.1, a free
port, one worker); the models are trained by ``lemevit train`` into --work on the samples shipped with lemevit (the
AID scenes at 64 px, the Potsdam tile with 64 px windows), one epoch: their weights do not change the speed. A
classifier request is one 64x64 AID JPEG; a segmentation request one 256x256 PNG crop of the Potsdam tile (25
windows of 64 px), answered as a PNG map. Every client keeps one connection and sends its next request when the
last is answered; a cell stops after --seconds or --max-requests requests. Batching is LitServe's
(--max-batch-size 8 --batch-timeout 0.01), for the classifier only: a dense task batches the windows of each image
instead. Writes results/serve_load.json (the grid) or results/serve_soak.json (the soak).
"""
from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lemevit.bench import machine_description
from lemevit.cli import main as lemevit
from lemevit.io import atomic_path

HERE = Path(__file__).parent
DEMO = Path(str(files("lemevit") / "demo_data"))
BATCHING = {"off": [], "on": ["--max-batch-size", "8", "--batch-timeout", "0.01"]}
CLIENTS = (1, 4, 16)


def trained(work: Path) -> dict[str, Path]:
    """A classifier and a segmentation model trained one epoch on the shipped samples (kept in ``work``)."""
    runs = {"classifier": work / "classifier", "segmentation": work / "segmentation"}
    common = ["--model", "lemevit_tiny", "--img-size", "64", "--epochs", "1", "--num-workers", "0"]
    if not (runs["classifier"] / "best.ckpt").is_file():
        assert lemevit(["train", "--data", str(DEMO / "aid_subset"), "--output", str(runs["classifier"]),
                        "--batch-size", "32", *common]) == 0
    if not (runs["segmentation"] / "best.ckpt").is_file():
        assert lemevit(["train", "--task", "segmentation", "--data", str(DEMO / "potsdam_seg"), "--preset", "potsdam",
                        "--output", str(runs["segmentation"]), "--head", "segformer", "--split", "1.0",
                        "--batch-size", "8", *common]) == 0
    return {name: run / "best.ckpt" for name, run in runs.items()}


def request_bodies() -> dict[str, bytes]:
    scene = next((DEMO / "aid_subset" / "Forest").glob("*.jpg"))
    tile = Image.open(next((DEMO / "potsdam_seg" / "img_dir").glob("*.png"))).convert("RGB")
    crop = io.BytesIO()
    tile.crop((0, 0, 256, 256)).save(crop, format="PNG")
    small = io.BytesIO()
    Image.open(scene).convert("RGB").resize((64, 64)).save(small, format="JPEG", quality=95)
    return {"classifier": small.getvalue(), "segmentation": crop.getvalue()}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``lemevit serve`` in a subprocess on 127.0.0.1, stopped by SIGTERM."""

    def __init__(self, checkpoint: Path, options: list[str], log: Path):
        self.port = _free_port()
        self.log = open(log, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "lemevit.cli", "serve", "--checkpoint",
                                         str(checkpoint), "--port", str(self.port), *options],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        end = time.monotonic() + 600
        while time.monotonic() < end:
            if self.process.poll() is not None:
                raise SystemExit(f"lemevit serve exited ({self.process.returncode}): see {log}")
            try:
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                connection.request("GET", "/health")
                if connection.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"lemevit serve was not ready in 600 s: see {log}")

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(120)
        self.log.close()
        return code

    def memory_mb(self) -> dict[str, float]:
        """The memory of the server's processes (it, LitServe's HTTP server and manager, the worker), in MiB:
        ``rss`` summed (pages the forked processes share counted in each), ``pss`` (shared pages divided among
        their processes: the memory the server takes) and ``pss_by_process`` (by process id, the server's first)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                children.setdefault(parent, []).append(int(entry.name))
        totals, by_process, pending = {"rss": 0.0, "pss": 0.0}, {}, [self.process.pid]
        while pending:
            pid = pending.pop(0)
            pending += sorted(children.get(pid, []))
            try:
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
            except OSError:
                continue
            for line in rollup:
                key = line.split(":")[0].lower()
                if key in totals:
                    totals[key] += int(line.split()[1]) / 1024
                if key == "pss":
                    by_process[str(pid)] = round(int(line.split()[1]) / 1024, 1)
        return {**{key: round(value, 1) for key, value in totals.items()}, "pss_by_process": by_process}


def load(port: int, body: bytes, content_type: str, clients: int, seconds: float, max_requests: int) -> dict:
    """``clients`` clients sending ``body`` in turn for ``seconds`` (or ``max_requests`` in all)."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    end = time.monotonic() + seconds

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        try:
            while time.monotonic() < end:
                with lock:
                    if len(latencies) + len(errors) >= max_requests:
                        return
                started = time.perf_counter()
                connection.request("POST", "/predict", body=body, headers={"Content-Type": content_type})
                response = connection.getresponse()
                response.read()
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status == 200:
                        latencies.append(elapsed)
                    else:
                        errors.append(str(response.status))
        except OSError as e:
            with lock:
                errors.append(type(e).__name__)
        finally:
            connection.close()

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "seconds": round(wall, 2), "requests_per_s": round(len(latencies) / wall, 2),
            "p50_ms": round(float(np.percentile(ms, 50)), 1) if len(ms) else None,
            "p99_ms": round(float(np.percentile(ms, 99)), 1) if len(ms) else None}


def record(name: str, content: dict) -> Path:
    path = HERE / "results" / name
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(content, indent=1) + "\n")
    return path


def _meta(args) -> dict:
    return {"machine": machine_description(), "torch": torch.__version__, "cores": len(os.sched_getaffinity(0)),
            "load_average": os.getloadavg(), "dtype": "fp32", "workers": 1,
            "torch_threads": os.environ.get("OMP_NUM_THREADS", "the cores a worker"),
            "note": "under load: a shared machine, other jobs running" if args.under_load else ""}


def grid(args, checkpoints: dict[str, Path], bodies: dict[str, bytes]) -> None:
    kinds = {"classifier": "image/jpeg", "segmentation": "image/png"}
    rows = []
    for model in args.models:
        for runtime in args.runtimes:
            for batching in (("off", "on") if model == "classifier" else ("off",)):
                options = ["--runtime", runtime, *BATCHING[batching]]
                server = Server(checkpoints[model], options, args.work / f"{model}_{runtime}_{batching}.log")
                try:
                    load(server.port, bodies[model], kinds[model], 1, 2, 20)  # warm-up
                    for clients in CLIENTS:
                        row = {"model": model, "runtime": runtime, "batching": batching,
                               **load(server.port, bodies[model], kinds[model], clients, args.seconds,
                                      args.max_requests)}
                        print(json.dumps(row), flush=True)
                        rows.append(row)
                finally:
                    server.stop()
    print(f"wrote {record('serve_load.json', {**_meta(args), 'seconds_per_cell': args.seconds, 'rows': rows})}")


def soak(args, checkpoints: dict[str, Path], bodies: dict[str, bytes]) -> None:
    """One classifier server (torch, batching on) under 4 clients for ``args.soak`` seconds, its memory sampled
    every ``args.sample`` seconds."""
    server = Server(checkpoints["classifier"], BATCHING["on"], args.work / "soak.log")
    samples, totals = [], {"requests": 0, "errors": 0}
    started = time.monotonic()
    try:
        load(server.port, bodies["classifier"], "image/jpeg", 4, 10, 10 ** 9)  # warm-up
        while time.monotonic() - started < args.soak:
            part = load(server.port, bodies["classifier"], "image/jpeg", 4, args.sample, 10 ** 9)
            totals["requests"] += part["requests"]
            totals["errors"] += part["errors"]
            memory = server.memory_mb()
            samples.append({"t_s": round(time.monotonic() - started, 1), "pss_mb": memory["pss"],
                            "rss_mb": memory["rss"], "pss_by_process_mb": memory["pss_by_process"],
                            "requests_per_s": part["requests_per_s"], "p99_ms": part["p99_ms"]})
            print(json.dumps(samples[-1]), flush=True)
    finally:
        code = server.stop()
    pss = [s["pss_mb"] for s in samples]
    result = {**_meta(args), "seconds": args.soak, "clients": 4, "batching": "on", **totals, "exit_code": code,
              "pss_first_mb": pss[0], "pss_max_mb": max(pss), "pss_last_mb": pss[-1],
              "pss_growth_mb": round(pss[-1] - pss[0], 1), "samples": samples}
    print(f"wrote {record('serve_soak.json', result)}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="folder for the trained models and the servers' logs")
    p.add_argument("--seconds", type=float, default=20, help="seconds a cell of the grid (default 20)")
    p.add_argument("--max-requests", type=int, default=2000, help="requests a cell at most (default 2000)")
    p.add_argument("--models", nargs="+", default=["classifier", "segmentation"])
    p.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"])
    p.add_argument("--soak", type=float, help="instead of the grid, a soak of this many seconds")
    p.add_argument("--sample", type=float, default=10, help="seconds between memory samples of the soak")
    p.add_argument("--under-load", action="store_true", help="record that the machine was busy with other work")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    checkpoints, bodies = trained(args.work), request_bodies()
    (soak if args.soak else grid)(args, checkpoints, bodies)


if __name__ == "__main__":
    main()
