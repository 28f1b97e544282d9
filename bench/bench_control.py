"""Control-plane benchmark (run by hand): `python bench/bench_control.py`.

Starts real daemons on loopback with 1, 100 and 1000 `sleep` jobs and prints a table of:
status round-trip through taskmasterctl.client over one connection (p50/p99; for 100 jobs also
with every instance's CPU and memory, status's accounting option), requests per
second over 50 concurrent connections (5 client processes x 10 connections each), and
`taskmasterctl status JOB` as a whole process (median).
"""
from __future__ import annotations

import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from taskmasterctl.client import Client  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402
from report import print_table  # noqa: E402  (bench/ is the script's directory)

SLEEP = {"cmd": ["sleep", "100000"], "starttime": 0, "stdout": None, "stderr": None}
ROUND_TRIPS = 2000
LOAD_SECONDS = 3.0
CLIENT_PROCESSES, CONNECTIONS_EACH = 5, 10
ONE_SHOT_RUNS = 30


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)]


def round_trips(port: int, job: str | None, count: int, options: bytes | None = None) -> tuple[float, float]:
    """`options`: status's JSON options (`{"accounting":true}`: every instance's CPU and memory)."""
    with Client(port=port) as client:
        for _ in range(50):  # warm up
            client.request("status", job, options)
        samples = []
        for _ in range(count):
            started = time.perf_counter()
            reply = client.request("status", job, options)
            samples.append(time.perf_counter() - started)
            assert reply.response == "status", reply
    return percentiles(samples)


def _load_worker(port: int, job: str, seconds: float, counts: multiprocessing.Queue) -> None:
    done = [0] * CONNECTIONS_EACH
    deadline = time.monotonic() + seconds

    def hammer(slot: int) -> None:
        with Client(port=port) as client:
            while time.monotonic() < deadline:
                client.status(job)
                done[slot] += 1

    threads = [threading.Thread(target=hammer, args=(slot,)) for slot in range(CONNECTIONS_EACH)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts.put(sum(done))


def requests_per_second(port: int, job: str) -> float:
    counts: multiprocessing.Queue = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_load_worker, args=(port, job, LOAD_SECONDS, counts))
               for _ in range(CLIENT_PROCESSES)]
    for worker in workers:
        worker.start()
    total = sum(counts.get() for _ in workers)
    for worker in workers:
        worker.join()
    return total / LOAD_SECONDS


def one_shot(port: int, job: str) -> float:
    command = [str(Path(sys.executable).with_name("taskmasterctl")), "--port", str(port), "status", job]
    samples = []
    for _ in range(ONE_SHOT_RUNS):
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def with_jobs(count: int) -> Daemon:
    root = Path(tempfile.mkdtemp(prefix=f"bench-control-{count}-"))
    return Daemon(root, jobs={f"job{i:04d}": SLEEP for i in range(count)}, args=["--log-level", "WARNING"])


def main() -> None:
    rows: list[tuple[str, str, str]] = []
    ms = 1000.0
    with with_jobs(1000) as daemon:
        p50, p99 = round_trips(daemon.port, "job0000", ROUND_TRIPS)
        rows.append(("status, one job (1000 loaded)", f"p50 {p50 * ms:.3f} ms  p99 {p99 * ms:.3f} ms", "p50 < 0.2 ms"))
        p50, p99 = round_trips(daemon.port, None, 200)
        rows.append(("status, all of 1000 jobs", f"p50 {p50 * ms:.3f} ms  p99 {p99 * ms:.3f} ms", "p50 < 5 ms"))
    with with_jobs(100) as daemon:
        p50, p99 = round_trips(daemon.port, "job0000", ROUND_TRIPS)
        rows.append(("status, one job (100 loaded)", f"p50 {p50 * ms:.3f} ms  p99 {p99 * ms:.3f} ms", "p50 < 0.2 ms"))
        p50, p99 = round_trips(daemon.port, None, ROUND_TRIPS)
        rows.append(("status, all of 100 jobs", f"p50 {p50 * ms:.3f} ms  p99 {p99 * ms:.3f} ms", "p50 < 0.5 ms"))
        p50, p99 = round_trips(daemon.port, None, ROUND_TRIPS, b'{"accounting":true}')
        rows.append(("status, all of 100 jobs, with CPU and memory", f"p50 {p50 * ms:.3f} ms  p99 {p99 * ms:.3f} ms",
                     "p50 <= 1 ms"))
        rate = requests_per_second(daemon.port, "job0000")
        rows.append((f"status, {CLIENT_PROCESSES * CONNECTIONS_EACH} connections", f"{rate:,.0f} req/s", ">= 5000 req/s"))
        rows.append(("taskmasterctl status JOB (process)", f"median {one_shot(daemon.port, 'job0000') * ms:.1f} ms",
                     "< 80 ms"))
    print_table(rows)


if __name__ == "__main__":
    main()
