"""The metrics endpoint against scrapers that misbehave, in-process with a real supervisor and
real sockets."""
from __future__ import annotations

import asyncio
import contextlib
import os
import socket

from taskmasterd.observe import metrics
from taskmasterd.observe.metrics import MetricsServer

from .support.daemon import free_port
from .support.supervised import run, supervised

SLEEPERS = {"cmd": "sleep 300", "starttime": 0, "numprocs": 50, "stdout": None, "stderr": None}
REQUEST = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


async def _status_line(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    line = await reader.readline()
    writer.close()
    return line.rstrip()


def server_ends_towards(port: int, peers: set[int]) -> list[str]:
    """This process's sockets on local `port` connected to one of the `peers` ports."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return [row[2] for row in rows if int(row[1].split(":")[1], 16) == port and row[9] in inodes
            and int(row[2].split(":")[1], 16) in peers]


def test_scrapers_that_never_read_do_not_hold_the_metrics_from_others(tmp_path, monkeypatch):
    """Eight requests whose answers are never read held every scrape slot for good (503 to the
    real scraper): now an answer not taken within WRITE_TIMEOUT is dropped with its connection."""
    monkeypatch.setattr(metrics, "WRITE_TIMEOUT", 1.0)
    port = free_port()

    async def scenario():
        async with supervised(tmp_path, {"many": SLEEPERS}, watch=False) as sup:
            listener = metrics.bind(f"127.0.0.1:{port}")
            # Inherited by the accepted sockets, and it stops the kernel's autotuning: the ~40 KB
            # answer cannot vanish into kernel buffers, as it does below a few MB otherwise.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            server = MetricsServer(sup, lambda: 0)
            await server.start(listener)
            loop = asyncio.get_running_loop()
            stuck = []
            try:
                for _ in range(metrics.MAX_SCRAPES):
                    sock = socket.socket()
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    sock.setblocking(False)
                    await loop.sock_connect(sock, ("127.0.0.1", port))
                    await loop.sock_sendall(sock, REQUEST)
                    stuck.append(sock)
                await asyncio.sleep(0.3)
                assert await _status_line(port) == b"HTTP/1.1 503 Service Unavailable"
                await asyncio.sleep(1.5)  # past WRITE_TIMEOUT
                assert await _status_line(port) == b"HTTP/1.1 200 OK"
                # and nothing of theirs is kept: the daemon's ends are closed, not left flushing
                assert server_ends_towards(port, {sock.getsockname()[1] for sock in stuck}) == []
            finally:
                for sock in stuck:
                    sock.close()
                await server.close()

    run(scenario())
