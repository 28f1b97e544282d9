"""Health and readiness benchmark (run by hand: `make bench` or `.venv/bin/python bench/bench_health.py`).

Prints one table:
- the CPU the checker machinery takes for 1000 instances with a tcp check every 10 s, all in this
  process, against one listener in another process (so its accepts are not counted), and beside
  it what a bare blocking connect and reset costs, the kernel's share of every check;
- the time from a child's READY=1 send to the owner's callback (p50, p99), through a real
  per-instance notify socket, with the daemon's loop idle between messages.
"""
from __future__ import annotations

import argparse
import asyncio
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
from taskmasterd.health import HealthChecker  # noqa: E402
from taskmasterd.health_state import Health  # noqa: E402
from taskmasterd.notify_socket import NotifyDirectory  # noqa: E402
from taskmasterd.readiness_spec import HealthCheckSpec, TcpCheck  # noqa: E402

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
        "  CPU per check / of it a bare connect+reset": f"{used / checks * 1e6:.0f} µs / {bare * 1e6:.0f} µs",
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


async def main(args: argparse.Namespace) -> None:
    rows = await bench_ready_latency(args.ready)
    rows.update(await bench_checkers(args.checkers, args.interval, args.seconds))
    width = max(map(len, rows))
    for name, value in rows.items():
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkers", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--ready", type=int, default=1000, help="READY=1 datagrams to time")
    asyncio.run(main(parser.parse_args()))
