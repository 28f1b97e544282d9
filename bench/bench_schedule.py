"""Scheduled jobs benchmark (run by hand: `.venv/bin/python bench/bench_schedule.py`).

1. CPU of a daemon with 1000 scheduled jobs between their runs (every one due once a year): the
   one wall-clock timer sleeps, nothing polls. Target 0.000 %.
2. How late a due run starts, among 1000 scheduled jobs running `true`: the lateness of each run
   is the time of its instance's RUNNING event (the process spawned) past its due second.
   Target p99 ≤ 50 ms. Measured twice: one job due at each second (60 of the 1000 due once a
   minute at distinct seconds, the others once a year), then all 1000 due once a minute (about
   17 due together at each second: the spawns of a burst queue behind each other).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import print_table  # noqa: E402
from tests.support.daemon import Daemon, wait_for  # noqa: E402

QUIET = {"stdout": None, "stderr": None}


def bench_idle(root: Path, count: int, seconds: float) -> float:
    jobs = {f"yearly{i}": {"cmd": "true", "schedule": f"0 0 {i % 24} 1 1 *", **QUIET} for i in range(count)}
    with Daemon(root, jobs) as daemon:
        wait_for(lambda: len(daemon.status()["jobs"]) == count, 60)
        proc = psutil.Process(daemon.proc.pid)
        time.sleep(2)
        cpu0 = sum(proc.cpu_times()[:2])
        time.sleep(seconds)
        return (sum(proc.cpu_times()[:2]) - cpu0) / seconds * 100


def bench_lateness(root: Path, count: int, seconds: float, due: int) -> list[float]:
    """`due` of the `count` jobs run once a minute, spread over its seconds; the others yearly."""
    jobs = {f"minute{i}": {"cmd": "true", "schedule": f"{i % 60} * * * * *" if i < due else "0 0 0 1 1 *", **QUIET}
            for i in range(count)}
    late: dict[tuple[str, float], float] = {}
    with Daemon(root, jobs) as daemon:
        wait_for(lambda: len(daemon.status()["jobs"]) == count, 60)
        began = time.time() + 1
        while time.time() < began + seconds:
            time.sleep(3)  # well within the 1000 events the daemon keeps
            reply = daemon.request("events", data=json.dumps({"last": 1000}).encode())
            for event in json.loads(reply["data"])["events"]:
                if event["kind"] == "state" and event["new"] == "RUNNING" and event["time"] >= began:
                    late[(event["job"], int(event["time"]))] = (event["time"] - int(event["time"])) * 1000
    return sorted(late.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long runs are measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        idle = bench_idle(Path(tmp) / "idle", args.jobs, args.idle)
        single = bench_lateness(Path(tmp) / "single", args.jobs, args.seconds, 60)
        burst = bench_lateness(Path(tmp) / "burst", args.jobs, args.seconds, args.jobs)
    rows = [(f"{args.jobs} scheduled jobs, CPU between runs over {args.idle:g} s", f"{idle:.3f} %", "0.000 %")]
    for what, late in (("one due at a time", single), (f"{args.jobs} due each minute", burst)):
        rows += [(f"{what}: runs measured over {args.seconds:g} s", str(len(late)), ""),
                 (f"{what}: started late p50", f"{statistics.median(late):.1f} ms", ""),
                 (f"{what}: started late p99", f"{late[max(int(len(late) * 0.99) - 1, 0)]:.1f} ms", "≤ 50 ms"),
                 (f"{what}: started late max", f"{late[-1]:.1f} ms", "")]
    print(f"load: {os.getloadavg()[0]:.2f} (1 min)")
    print_table(rows)


if __name__ == "__main__":
    main()
