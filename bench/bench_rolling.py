"""Restarts under load (run by hand: `make bench` or `.venv/bin/python bench/bench_rolling.py`).

An HTTP job of 3 instances (tests/support/held_server.py: it answers each request on a new
connection, sends READY=1 after READY_DELAY, and drains at SIGTERM) under CLIENTS clients making
requests one after the other without a pause. For each way of restarting it, a few times over:
the requests that failed (refused, reset) and the latency of the requests begun while the restart
was under way (p50, p99, max), against the steady state:

- `restart --rolling` with the socket held by the daemon (`ready: "notify"`);
- a plain restart (each instance stopped, then started) with the socket held;
- `stop` then `start` of the whole job with the socket held (connections wait in its queue);
- a plain restart of the same job without held sockets: each instance binds the port itself
  (SO_REUSEPORT, as servers of several processes do).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.daemon import Daemon, free_port, wait_for  # noqa: E402
from tests.support.held_server import ask  # noqa: E402

SERVER = str(Path(__file__).resolve().parents[1] / "tests" / "support" / "held_server.py")
SLOW = 0.1  # seconds: a request that waited this long saw the restart


class Load:
    """Clients requesting without a pause; (start, latency, ok) of every request."""

    def __init__(self, port: int, clients: int) -> None:
        self.port = port
        self.requests: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            ok = True
            try:
                ok = ask(self.port)[0].startswith(b"HTTP/1.1 200")
            except OSError:
                ok = False
            self.requests.append((began, time.monotonic() - began, ok))
            if not ok:
                time.sleep(0.001)  # a refused connect returns at once: do not count a spin as load

    def window(self, start: float, end: float) -> tuple[list[float], int]:
        inside = [(latency, ok) for began, latency, ok in self.requests if start <= began <= end]
        return [latency for latency, ok in inside if ok], sum(1 for _, ok in inside if not ok)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def job(port: int, held: bool, rolling: bool) -> dict:
    spec = {"cmd": [sys.executable, SERVER], "numprocs": 3, "ready": "notify", "ready_timeout": 10, "stoptime": 10,
            "env": {"VERSION": "1", "READY_DELAY": "0.2", "PORT": str(port)}, "rolling": rolling}
    if held:
        spec["sockets"] = [{"listen": f"127.0.0.1:{port}"}]
    return spec


def measure(root: Path, name: str, held: bool, restart: str, times: int, clients: int) -> tuple[str, ...]:
    port = free_port()
    with Daemon(root, jobs={"web": job(port, held, restart == "rolling")}) as d:
        wait_for(lambda: all(i["state"] == "RUNNING" for i in d.instances("web")), 30, what="RUNNING")
        load = Load(port, clients)
        load.start()
        time.sleep(1.0)
        steady, _ = load.window(time.monotonic() - 0.8, time.monotonic())
        latencies: list[float] = []
        failed = 0
        durations = []
        for _ in range(times):
            began = time.monotonic()
            if restart == "stop+start":
                assert d.request("stop", "web")["response"] == "success"
                assert d.request("start", "web")["response"] == "success"
            else:
                assert d.request("restart-job", "web", rolling=restart == "rolling")["response"] == "success"
            ended = time.monotonic()
            durations.append(ended - began)
            time.sleep(0.5)
            window, failures = load.window(began, ended + 0.2)
            latencies += window
            failed += failures
        load.stop()
    ms = 1000
    slow = sum(1 for latency in latencies if latency > SLOW)
    return (name, f"{failed} of {failed + len(latencies)}", f"{percentile(steady, 99) * ms:.1f}",
            f"{percentile(latencies, 99) * ms:.1f} / {percentile(latencies, 99.9) * ms:.1f} / "
            f"{max(latencies, default=0) * ms:.0f}", str(slow), f"{statistics.median(durations):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--times", type=int, default=3, help="restarts of each kind")
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(f"load: {os.getloadavg()[0]:.2f}; {args.clients} clients, {args.times} restarts of each kind, 3 instances")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cases = [("restart --rolling, held socket", True, "rolling"),
                 ("plain restart, held socket", True, "plain"),
                 ("stop + start, held socket", True, "stop+start"),
                 ("plain restart, no held socket", False, "plain")]
        for number, (name, held, restart) in enumerate(cases):
            rows.append(measure(Path(tmp) / str(number), name, held, restart, args.times, args.clients))
    header = ("restart", "failed requests", "steady p99 ms", "during: p99 / p99.9 / max ms", f"> {SLOW * 1000:g} ms",
              "verb took")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
