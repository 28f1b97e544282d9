"""Health and readiness benchmark (run by hand: `make bench` or `.venv/bin/python bench/bench_health.py`).

Prints one table:
- the CPU the checker machinery takes for 1000 instances with a tcp check every 10 s, all in this
  process, against one listener in another process (a loopback check is a sock_diag lookup, no
  connection), and beside it what a bare blocking connect and reset would cost instead;
- the time from a child's READY=1 send to the owner's callback (p50, p99), through a real
  per-instance notify socket, with the daemon's loop idle between messages;
- through a real taskmasterd: its CPU with 1000 instances each checked by tcp every 10 s (beside
  the same daemon with no checks), and the time from a program's READY=1 send to its instance
  being RUNNING (the instance's `since`, against the time the program took just before sending).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import psutil  # noqa: E402

from taskmasterd.health.checker import HealthChecker  # noqa: E402
from taskmasterd.health.state import Health  # noqa: E402
from taskmasterd.health.notify_socket import NotifyDirectory  # noqa: E402
from taskmasterd.jobfiles.readiness_spec import HealthCheckSpec, TcpCheck  # noqa: E402
from tests.support.daemon import Daemon, wait_for  # noqa: E402

LISTENER = """
import socket, sys
server = socket.create_server(("127.0.0.1", 0), backlog=4096)
print(server.getsockname()[1], flush=True)
while True:
    server.accept()[0].close()
"""

SENDER = """
import os, socket, sys, time
path, count, gap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    for _ in range(count):
        time.sleep(gap)
        sock.sendto(b"READY=1\\nSTATUS=%d" % time.monotonic_ns(), path)
"""


# A notify program for the daemon-level latency: every instance sends READY=1 at its own moment,
# after all are spawned (T0 + index * GAP), saying in STATUS= the time it took just before sending.
READY_AT = """
import os, socket, time
when = float(os.environ["T0"]) + int(os.environ["TASKMASTER_INSTANCE"]) * float(os.environ["GAP"])
time.sleep(max(0.0, when - time.time()))
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    sock.connect(os.environ["NOTIFY_SOCKET"])
    sent = time.time()
    sock.send(b"READY=1\\nSTATUS=%r" % sent)
time.sleep(100000)
"""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bench_checkers(count: int, interval: float, seconds: float) -> dict[str, str]:
    listener = subprocess.Popen([sys.executable, "-c", LISTENER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(listener.stdout.readline())
        check = HealthCheckSpec(TcpCheck("127.0.0.1", port), interval=interval, timeout=5, start_interval=1)
        healthy = 0

        def on_change(old: Health, new: Health, reason: str) -> None:
            nonlocal healthy
            healthy += (new is Health.HEALTHY) - (old is Health.HEALTHY)

        checkers = [HealthChecker(check, on_change) for _ in range(count)]
        for checker in checkers:
            checker.start()
        while healthy < count:  # the first checks, 1 s after the start
            await asyncio.sleep(0.1)
        first_round = [c.last_check for c in checkers]
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        await asyncio.sleep(seconds)
        used, wall = cpu_seconds() - cpu0, time.monotonic() - wall0
        checked_again = sum(c.last_check != first for c, first in zip(checkers, first_round))
        all_healthy = all(c.state is Health.HEALTHY for c in checkers)
        for checker in checkers:
            checker.stop()
        bare = bare_connect_cost(port, 5000)
    finally:
        listener.kill()
        listener.wait()
    checks = count * wall / interval
    return {
        f"{count} tcp checks every {interval:g}s: CPU over {seconds:g}s": f"{used / wall * 100:.2f} %",
        "  CPU per check / a bare connect+reset instead": f"{used / checks * 1e6:.0f} µs / {bare * 1e6:.0f} µs",
        "  checkers that checked again / still healthy": f"{checked_again} / {'all' if all_healthy else 'NOT ALL'}",
    }


def bare_connect_cost(port: int, count: int) -> float:
    """CPU seconds of one blocking connect and reset to the listener: the kernel's share of a check."""
    linger = struct.pack("ii", 1, 0)
    cpu0 = cpu_seconds()
    for _ in range(count):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    return (cpu_seconds() - cpu0) / count


async def bench_ready_latency(count: int) -> dict[str, str]:
    with tempfile.TemporaryDirectory(prefix="tmb-", dir="/tmp") as base:
        latencies: list[float] = []
        done = asyncio.get_running_loop().create_future()

        def on_message(message) -> None:
            if message.ready:
                latencies.append((time.monotonic_ns() - int(message.status)) / 1e6)
                if len(latencies) == count and not done.done():
                    done.set_result(None)

        sock = NotifyDirectory(os.path.join(base, "notify")).open_socket(on_message)
        sender = subprocess.Popen([sys.executable, "-c", SENDER, sock.path, str(count), "0.002"])
        await asyncio.wait_for(done, 60)
        sender.wait()
        sock.close()
    latencies.sort()
    return {
        f"READY=1 send -> callback, {count} datagrams: p50": f"{statistics.median(latencies) * 1000:.0f} µs",
        "  p99": f"{latencies[int(len(latencies) * 0.99) - 1] * 1000:.0f} µs",
    }


def daemon_cpu(daemon: Daemon, seconds: float) -> float:
    """The daemon process's own CPU (not its children's) over `seconds`, in percent of one core."""
    proc = psutil.Process(daemon.proc.pid)
    cpu0, wall0 = sum(proc.cpu_times()[:2]), time.monotonic()
    time.sleep(seconds)
    return (sum(proc.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0) * 100


def bench_daemon_checks(root: Path, count: int, interval: float, seconds: float) -> dict[str, str]:
    listener = subprocess.Popen([sys.executable, "-c", LISTENER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(listener.stdout.readline())
        plain = {"cmd": "sleep 100000", "starttime": 0, "numprocs": count, "stdout": None, "stderr": None}
        checked = {**plain, "healthcheck": {"tcp": f"127.0.0.1:{port}", "interval": interval, "timeout": 5}}
        figures = {}
        for label, job in (("no check", plain), (f"tcp check every {interval:g}s", checked)):
            with Daemon(root / label.split()[0], {"fleet": job}) as daemon:
                wanted = "healthy" if "healthcheck" in job else None
                wait_for(lambda: all(i["state"] == "RUNNING" and i.get("health") == wanted
                                     for i in daemon.instances("fleet")), 120, interval=0.2, what="all up")
                time.sleep(2)  # start-up work (journal flush, first checks) done
                first = [i.get("last_check") for i in daemon.instances("fleet")]
                figures[label] = daemon_cpu(daemon, seconds)
                again = sum(i.get("last_check") != f for i, f in zip(daemon.instances("fleet"), first))
                if wanted:
                    figures["checked again"] = again
    finally:
        listener.kill()
        listener.wait()
    return {
        f"taskmasterd, {count} instances, tcp check every {interval:g}s: CPU over {seconds:g}s":
            f"{figures[f'tcp check every {interval:g}s']:.2f} %",
        "  the same daemon without checks": f"{figures['no check']:.2f} %",
        "  instances checked again during the measure": f"{figures['checked again']} / {count}",
    }


def bench_daemon_ready(root: Path, count: int, gap: float) -> dict[str, str]:
    t0 = time.time() + 2 + count * 0.02  # after every spawn: the loop is idle when they send
    job = {"cmd": [sys.executable, "-c", READY_AT], "ready": "notify", "ready_timeout": 600, "numprocs": count,
           "env": {"T0": repr(t0), "GAP": repr(gap)}, "stdout": None, "stderr": None}
    with Daemon(root / "ready", {}) as daemon:
        assert daemon.request("push", "ready", json.dumps(job).encode(), nowait=True)["response"] == "success"
        wait_for(lambda: all(i["state"] == "RUNNING" for i in daemon.instances("ready")),
                 t0 - time.time() + count * gap + 60, interval=0.2, what="all ready")
        latencies = sorted((i["since"] - float(i["notify_status"])) * 1e6 for i in daemon.instances("ready"))
    return {
        f"taskmasterd, READY=1 send -> RUNNING, {count} instances: p50": f"{statistics.median(latencies):.0f} µs",
        "  p99": f"{latencies[int(len(latencies) * 0.99) - 1]:.0f} µs",
    }


async def main(args: argparse.Namespace) -> None:
    rows = await bench_ready_latency(args.ready)
    rows.update(await bench_checkers(args.checkers, args.interval, args.seconds))
    with tempfile.TemporaryDirectory(prefix="tmb-") as tmp:
        rows.update(bench_daemon_ready(Path(tmp), args.daemon_ready, 0.01))
        rows.update(bench_daemon_checks(Path(tmp), args.checkers, args.interval, args.seconds))
    width = max(map(len, rows))
    for name, value in rows.items():
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkers", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--ready", type=int, default=1000, help="READY=1 datagrams to time")
    parser.add_argument("--daemon-ready", type=int, default=200, help="notify instances timed through taskmasterd")
    asyncio.run(main(parser.parse_args()))
