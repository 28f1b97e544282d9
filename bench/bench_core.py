"""Supervisor-core benchmark (run by hand: `make bench` or `.venv/bin/python bench/bench_core.py`).

Prints one table: 1000 `sleep` instances up, RSS and idle CPU, restart latency, log capture rate
(and supervisord's in the same run when it is installed), and SIGTERM shutdown time.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.daemon import Daemon, wait_for  # noqa: E402

MIB = 1024 * 1024


def children_of(pid: int) -> set[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as src:
        return {int(p) for p in src.read().split()}


def bench_scale(root: Path, count: int, idle_seconds: float, kills: int) -> dict[str, str]:
    daemon = Daemon(root, {"sleepers": {"cmd": "sleep 100000", "starttime": 0, "numprocs": count,
                                        "stdout": None, "stderr": None}})
    began = time.monotonic()
    daemon.start()  # READY=1 once all are launched; with starttime 0 they are RUNNING at once
    wait_for(lambda: sum(i["state"] == "RUNNING" for i in daemon.instances("sleepers")) == count, 60)
    up = time.monotonic() - began
    proc = psutil.Process(daemon.proc.pid)
    time.sleep(2)  # let start-up work (registry flush) finish
    rss = proc.memory_info().rss / MIB
    cpu0 = sum(proc.cpu_times()[:2])
    time.sleep(idle_seconds)
    idle_cpu = (sum(proc.cpu_times()[:2]) - cpu0) / idle_seconds * 100
    latencies = []
    for _ in range(kills):
        before = children_of(daemon.proc.pid)
        victim = next(iter(before))
        t0 = time.perf_counter()
        os.kill(victim, signal.SIGKILL)
        while True:  # the bench watches from outside; the daemon itself is told by its pidfd
            now = children_of(daemon.proc.pid)
            if now - before:
                latencies.append((time.perf_counter() - t0) * 1000)
                break
    daemon.stop()
    latencies.sort()
    return {
        f"{count} instances RUNNING": f"{up:.2f} s",
        "daemon RSS": f"{rss:.1f} MB",
        f"idle CPU over {idle_seconds:g} s": f"{idle_cpu:.3f} %",
        f"restart latency p50 ({kills} kills)": f"{statistics.median(latencies):.2f} ms",
        "restart latency p99": f"{latencies[int(len(latencies) * 0.99) - 1]:.2f} ms",
    }


def bench_capture(root: Path, size: int) -> float:
    job = {"cmd": ["head", "-c", str(size), "/dev/zero"], "starttime": 0, "autorestart": "never", "logmaxbytes": 0}
    with Daemon(root, {}) as daemon:
        out = root / "logs" / "flood.0.out"
        began = time.monotonic()
        daemon.request("push", "flood", (__import__("json").dumps(job)).encode())
        wait_for(lambda: out.exists() and out.stat().st_size == size, 120, interval=0.005)
        elapsed = time.monotonic() - began
        out.unlink()
    return size / MIB / elapsed


def bench_supervisord_capture(root: Path, size: int) -> float | None:
    exe = shutil.which("supervisord", path=os.path.dirname(sys.executable)) or shutil.which("supervisord")
    if exe is None:
        return None
    out = root / "flood.out"
    conf = root / "supervisord.conf"
    conf.write_text(f"""[supervisord]
nodaemon=true
logfile={root}/supervisord.log
pidfile={root}/supervisord.pid
[program:flood]
command=head -c {size} /dev/zero
autorestart=false
startsecs=0
stdout_logfile={out}
stdout_logfile_maxbytes=0
""")
    began = time.monotonic()
    proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: out.exists() and out.stat().st_size == size, 300, interval=0.005)
        return size / MIB / (time.monotonic() - began)
    finally:
        proc.terminate()
        proc.wait(30)


def bench_shutdown(root: Path, count: int) -> float:
    stubborn = {"cmd": ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"], "starttime": 0, "stoptime": 1,
                "numprocs": count, "stdout": None, "stderr": None}
    daemon = Daemon(root, {"stubborn": stubborn}).start()
    began = time.monotonic()
    daemon.stop()
    return time.monotonic() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=1000)
    parser.add_argument("--idle", type=float, default=30.0)
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--capture-mib", type=int, default=200)
    args = parser.parse_args()
    rows: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows.update(bench_scale(root / "scale", args.instances, args.idle, args.kills))
        size = args.capture_mib * MIB
        rows[f"capture {args.capture_mib} MiB (taskmasterd)"] = f"{bench_capture(root / 'capture', size):.0f} MiB/s"
        theirs = bench_supervisord_capture(Path(tempfile.mkdtemp(dir=tmp)), size)
        rows[f"capture {args.capture_mib} MiB (supervisord)"] = f"{theirs:.0f} MiB/s" if theirs else "not installed"
        rows["SIGTERM shutdown, 100 stubborn (stoptime 1)"] = f"{bench_shutdown(root / 'shutdown', 100):.2f} s"
    width = max(map(len, rows))
    print(f"{'measure':<{width}}  value")
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")


if __name__ == "__main__":
    main()
