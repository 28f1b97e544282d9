"""Access control and control-server benchmark (run by hand): `python bench/bench_security.py`.

Measured in one run, on loopback, against three daemons with one `sleep` job each, running at
once and measured in turns: this branch, this branch with the accept-time check disabled (the
kernel lookup replaced by "root"), and main (`git archive main`, run with the same interpreter):

- the accept-time check by itself: peer identification (netlink sock_diag, SO_PEERCRED) and the
  policy decision, per connection (target < 0.2 ms);
- connect + status + close, per connection, on each daemon;
- status of one job over an open connection, on each daemon (target: as fast as main);
- framing of 4 MiB of adversarial bytes (target: well under 100 ms), and main's decoder on the
  24 KiB of `";` that froze it;
- daemon RSS with non-reading clients that pipeline requests: 20 on main (the issue's case), 20
  and 1000 on this branch.
"""
from __future__ import annotations

import contextlib
import io
import os
import resource
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402

from taskmasterctl.client import Client  # noqa: E402
from taskmasterd.control.access import AccessPolicy  # noqa: E402
from taskmasterd.control.peercred import PeerIdentifier  # noqa: E402
from taskmasterd.control.protocol import MAX_MESSAGE, FrameDecoder  # noqa: E402
from tests.support.daemon import Daemon  # noqa: E402

SLEEP = {"cmd": ["sleep", "100000"], "starttime": 0, "stdout": None, "stderr": None}
ROUNDS = 5
CONNECTS = 400  # per round
ROUND_TRIPS = 1000  # per round
UNCHECKED = "import taskmasterd.control.peercred as p; p.PeerIdentifier.identify = lambda self, sock: p.Peer(0)"
ADVERSARIAL = [b'";', b";x", b'"\\"', b"\\\\", b'"a"', b'";;"x', b'"', b'"' + b";;" * 8 + b'"', b"\x01;"]


class SourceDaemon(Daemon):
    """A daemon run from the package at `source`, after `prelude` (Python) has run."""

    def __init__(self, root: Path, source: Path, prelude: str = "", args: list[str] | None = None) -> None:
        super().__init__(root, {"web": SLEEP}, ["--log-level", "WARNING", *(args or [])])
        self.launcher = (f"import sys; sys.path.insert(0, {str(source)!r}); {prelude}\n"
                         "from taskmasterd.cli import main; sys.exit(main(sys.argv[1:]))")

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.launcher, *super().command()[3:]]


def main_source() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="bench-security-main-"))
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "main"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder)
    return folder


def per_call(samples: list[float]) -> str:
    ordered = sorted(samples)
    return f"p50 {ordered[len(ordered) // 2] * 1e3:.3f} ms  p99 {ordered[int(len(ordered) * 0.99)] * 1e3:.3f} ms"


def check_cost() -> list[tuple[str, str, str]]:
    identifier, policy = PeerIdentifier(), AccessPolicy(os.geteuid())
    rows = []
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()):
        tcp, _ = listener.accept()
        a, b = socket.socketpair()
        for name, sock in (("TCP (netlink sock_diag)", tcp), ("unix (SO_PEERCRED)", a)):
            samples = []
            for _ in range(5000):
                started = time.perf_counter()
                policy.decide(identifier.identify(sock))
                samples.append(time.perf_counter() - started)
            rows.append((f"accept-time check, {name}", per_call(samples), "< 0.2 ms"))
        for sock in (tcp, a, b):
            sock.close()
    identifier.close()
    return rows


def connect_status_close(port: int) -> list[float]:
    samples = []
    for _ in range(CONNECTS):
        started = time.perf_counter()
        with Client(port=port) as client:
            assert client.status("web").response == "status"
        samples.append(time.perf_counter() - started)
    return samples


def open_connection_status(port: int) -> list[float]:
    with Client(port=port) as client:
        for _ in range(100):
            client.status("web")
        samples = []
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            client.status("web")
            samples.append(time.perf_counter() - started)
    return samples


def framing() -> list[tuple[str, str, str]]:
    rows = []
    for pattern in ADVERSARIAL:
        wire = (pattern * (MAX_MESSAGE // len(pattern) + 1))[:MAX_MESSAGE]
        decoder = FrameDecoder()
        started = time.process_time()
        for offset in range(0, len(wire), 256 * 1024):
            decoder.feed(wire[offset:offset + 256 * 1024])
        rows.append((f"framing 4 MiB of {pattern[:8]!r}...", f"{(time.process_time() - started) * 1e3:.1f} ms CPU",
                     "well under 100 ms"))
    return rows


def main_framing(source: Path) -> tuple[str, str, str]:
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from taskmasterd.control.protocol import FrameDecoder; "
            "d = FrameDecoder(); t = time.process_time(); d.feed(b'\";' * 12288); print(time.process_time() - t)")
    seconds = float(subprocess.run([sys.executable, "-c", code, str(source)], capture_output=True, text=True,
                                   check=True).stdout)
    return ("main: framing 24 KiB of '\";'", f"{seconds * 1e3:.0f} ms CPU", "(the defect)")


def stuck_clients(port: int, count: int) -> list[socket.socket]:
    """Clients that pipeline `status` requests until their sockets are full, and never read."""
    frames = b'{"command":"status"};;' * 4096
    clients = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.setblocking(False)
        clients.append(sock)
    for _ in range(64):  # each round offers 88 kB more to every client that still takes it
        took = 0
        for sock in clients:
            try:
                took += sock.send(frames)
            except (BlockingIOError, ConnectionError):
                pass
        if not took:
            break
        time.sleep(0.05)
    return clients


def rss_with_stuck_clients(daemon: Daemon, count: int) -> tuple[int, int]:
    process = psutil.Process(daemon.proc.pid)
    before = process.memory_info().rss
    clients = stuck_clients(daemon.port, count)
    time.sleep(1.0)
    after = process.memory_info().rss
    for sock in clients:
        sock.close()
    return before, after


def main() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    rows = check_cost()
    source = main_source()
    config = Path(tempfile.mkdtemp(prefix="bench-security-config-")) / "taskmasterd.json"
    config.write_text('{"write_timeout": 300, "idle_timeout": 600}')
    daemons = {
        "this branch": SourceDaemon(Path(tempfile.mkdtemp(prefix="bench-sec-branch-")), ROOT,
                                    args=["--config", str(config)]),
        "this branch, check disabled": SourceDaemon(Path(tempfile.mkdtemp(prefix="bench-sec-unchecked-")), ROOT,
                                                    UNCHECKED),
        "main": SourceDaemon(Path(tempfile.mkdtemp(prefix="bench-sec-main-")), source),
    }
    connects: dict[str, list[float]] = {name: [] for name in daemons}
    trips: dict[str, list[float]] = {name: [] for name in daemons}
    with contextlib.ExitStack() as running:
        for daemon in daemons.values():
            running.enter_context(daemon)
        for _ in range(ROUNDS):  # interleaved, so that the machine's load falls on all three alike
            for name, daemon in daemons.items():
                connects[name] += connect_status_close(daemon.port)
                trips[name] += open_connection_status(daemon.port)
    for name in daemons:
        rows.append((f"connect+status+close, {name}", per_call(connects[name]), ""))
    cost = statistics.median(connects["this branch"]) - statistics.median(connects["this branch, check disabled"])
    rows.append(("  the check's share (difference of medians)", f"{cost * 1e3:+.3f} ms", "< 0.2 ms"))
    for name in daemons:
        rows.append((f"status over an open connection, {name}", per_call(trips[name]), "as fast as main"))
    rows += framing()
    rows.append(main_framing(source))
    for name, counts in (("main", (20,)), ("this branch", (20, 1000))):
        for count in counts:
            daemon = SourceDaemon(Path(tempfile.mkdtemp(prefix="bench-sec-rss-")), source if name == "main" else ROOT,
                                  args=["--config", str(config)] if name != "main" else [])
            with daemon:
                before, after = rss_with_stuck_clients(daemon, count)
            rows.append((f"RSS, {name}, {count} clients that never read", f"{before / 2**20:.0f} -> {after / 2**20:.0f} MiB",
                         "bounded"))
    print("| measure | result | target |\n|---|---|---|")  # markdown, to paste into a report
    for row in rows:
        print("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")


if __name__ == "__main__":
    main()
