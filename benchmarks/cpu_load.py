"""Speed under load: the same `lemevit` command alone and beside busy processes, with OpenMP threads that spin
while they wait (libgomp's default, what lemevit did before) and that sleep (what lemevit sets now).

    python benchmarks/cpu_load.py --busy 2 --output benchmarks/results/cpu_load.json
    python benchmarks/cpu_load.py --busy 2 --arms sleeping:loaded spinning:loaded -- demo --epochs 3

Each arm runs the command (default `lemevit demo`, in a fresh temporary folder) as a subprocess; a loaded arm
starts ``--busy`` processes named ``lemevit-busy`` (a Python loop each, one core's worth of work apiece) first
and stops them after. "spinning" sets ``GOMP_SPINCOUNT=300000`` (libgomp's default, which lemevit keeps when the
user sets it), "sleeping" leaves lemevit's ``OMP_WAIT_POLICY=PASSIVE``. The figure a user cares about is the
loaded time over the alone time, against the fair share: with N busy processes beside a run of T threads on C
cores, the run's share is about C / (N + T) cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lemevit.bench import machine_description
from lemevit.cpu import available_cpus
from lemevit.io import atomic_path

ARMS = ("sleeping:alone", "sleeping:loaded", "spinning:alone", "spinning:loaded")


def start_busy(count: int) -> list[subprocess.Popen]:
    # exec -a names the process, so `ps` shows what loaded the machine
    loop = "while True: pass"
    return [subprocess.Popen(["bash", "-c", f'exec -a lemevit-busy "{sys.executable}" -c "{loop}"'])
            for _ in range(count)]


def run_arm(arm: str, command: list[str], busy: int) -> dict:
    waiting, load = arm.split(":")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if waiting == "spinning":
        env["GOMP_SPINCOUNT"] = "300000"
    busy_processes = start_busy(busy) if load == "loaded" else []
    try:
        with tempfile.TemporaryDirectory() as work:
            args = [*command, "--output", str(Path(work) / "out")]
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "lemevit.cli", *args], env=env, capture_output=True,
                                  text=True)
            seconds = time.perf_counter() - start
    finally:
        for process in busy_processes:
            process.kill()
            process.wait()
    if done.returncode != 0:
        sys.exit(f"{arm}: lemevit {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return {"arm": arm, "seconds": round(seconds, 1), "busy_processes": len(busy_processes),
            "command": "lemevit " + " ".join(command), "last_lines": done.stdout.strip().splitlines()[-4:]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--busy", type=int, default=2, help="busy processes beside a loaded arm (default 2)")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--output", type=Path, help="JSON file the records are added to (by arm and command)")
    p.add_argument("command", nargs="*", default=["demo"], help="the lemevit command (default: demo)")
    args = p.parse_args()
    records = []
    for arm in args.arms:
        load_before = os.getloadavg()[0]
        record = run_arm(arm, args.command, args.busy)
        record.update(machine=machine_description(), cpus=available_cpus(), load_average_before=load_before)
        print(json.dumps(record), flush=True)
        records.append(record)
    if args.output:
        kept = json.loads(args.output.read_text()) if args.output.is_file() else []
        replaced = {(r["arm"], r["command"]) for r in records}
        kept = [r for r in kept if (r["arm"], r["command"]) not in replaced] + records
        with atomic_path(args.output) as tmp:
            tmp.write_text(json.dumps(kept, indent=1))


if __name__ == "__main__":
    main()
