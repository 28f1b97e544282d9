"""The control server under load and abuse: fairness between clients, bounded memory, write
timeouts, cross-protocol openings, shutdown with clients connected, and streamed replies.

Most run the server in-process (to set small limits and inject a verb) on real sockets; the
fairness and memory tests run a real daemon and measure it from outside.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import AsyncIterator, Callable, Iterator

import psutil
import pytest

from taskmasterd.control.access import AccessPolicy
from taskmasterd.control.listeners import bind_tcp
from taskmasterd.control.server import ControlServer
from taskmasterd.control.verbs import VERBS, JobArg, Reply, Verb
from tests.support.control_fixtures import SLEEPER, STUBBORN, Raw, message
from tests.support.daemon import Daemon
from tests.support.supervised import run, supervised


@contextlib.asynccontextmanager
async def control_server(root: Path, jobs: dict | None = None, **limits: float) -> AsyncIterator[tuple[ControlServer, int]]:
    async with supervised(root, jobs or {"web": SLEEPER}, watch=False) as sup:
        server = ControlServer(sup, AccessPolicy(os.geteuid()), **limits)
        listener = bind_tcp("127.0.0.1", 0)
        await server.start([listener])
        try:
            yield server, listener.getsockname()[1]
        finally:
            await server.close()


async def exchange(port: int, frame: bytes) -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(frame)
        return json.loads((await reader.readuntil(b";;"))[:-2])
    finally:
        writer.close()


async def dropped(reader: asyncio.StreamReader, timeout: float = 20.0) -> bool:
    """Whether the server closes or resets the connection (having sent nothing) within timeout."""
    try:
        return await asyncio.wait_for(reader.read(), timeout) == b""
    except ConnectionResetError:
        return True


async def until(predicate, timeout: float = 20.0, what: str = "condition") -> None:
    """For what only the server's counters show; the kernel gives no event for a peer's reading."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# --- fairness ----------------------------------------------------------------------------------

def test_another_clients_status_is_answered_within_10_ms_during_one_clients_burst(tmp_path: Path) -> None:
    with Daemon(tmp_path, {"web": SLEEPER}) as daemon:
        burst = message("status", "web") * 40000
        answered = threading.Event()

        def flood() -> None:
            with Raw(daemon.port, timeout=60) as raw:
                sender = threading.Thread(target=raw.send, args=(burst,))
                sender.start()
                received, carry = 0, b""
                while received < 40000:
                    chunk = raw.sock.recv(1 << 20)
                    assert chunk
                    # A chunk may end between the two ';' of a terminator (counted per chunk, such
                    # a reply was missed, and the last recv waited 60 s for a reply never due).
                    data = carry + chunk
                    received += data.count(b";;")
                    carry = b";" if data.endswith(b";") and not data.endswith(b";;") else b""
                    if received > 2000:
                        answered.set()
                sender.join()

        flooder = threading.Thread(target=flood)
        flooder.start()
        try:
            assert answered.wait(30)
            samples = []
            with Raw(daemon.port) as raw:
                raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while flooder.is_alive() and len(samples) < 200:
                    started = time.perf_counter()
                    assert raw.exchange(message("status", "web"))["response"] == "status"
                    samples.append(time.perf_counter() - started)
        finally:
            flooder.join()
    assert len(samples) >= 20, "the burst ended before it could be measured"
    assert statistics.median(samples) < 0.010 and sorted(samples)[int(len(samples) * 0.9)] < 0.010, \
        f"median {statistics.median(samples) * 1000:.1f} ms, max {max(samples) * 1000:.1f} ms"


# --- memory ------------------------------------------------------------------------------------

def test_clients_that_pipeline_and_never_read_are_dropped_and_their_memory_freed(tmp_path: Path) -> None:
    config = tmp_path / "taskmasterd.json"
    config.write_text(json.dumps({"write_timeout": 2}))
    jobs = {f"job{n}": SLEEPER for n in range(30)}  # a status of all is a few kB
    with Daemon(tmp_path, jobs, args=["--config", str(config)]) as daemon:
        process = psutil.Process(daemon.proc.pid)
        baseline = process.memory_info().rss
        stuck = []
        for _ in range(20):
            raw = Raw(daemon.port, timeout=0.5)
            raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            stuck.append(raw)
        frames = message("status") * 20000
        for raw in stuck:
            with contextlib.suppress(OSError):
                raw.send(frames)  # until the daemon stops taking them: the send times out
        grown = process.memory_info().rss - baseline
        assert daemon.request("status", "job0")["response"] == "status"  # everyone else is served
        for raw in stuck:
            raw.sock.settimeout(20)
            assert raw.closed_by_peer(), "not dropped after the write timeout"
            raw.close()
    assert grown < 40 * 1024 * 1024, f"20 non-reading clients grew the daemon by {grown / 2**20:.0f} MiB"


def test_past_the_memory_cap_the_connection_holding_the_most_is_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with control_server(tmp_path, memory_cap=6 * 1024 * 1024) as (server, port):
            small = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
            big_reader, big = await asyncio.open_connection("127.0.0.1", port)
            for _, writer in small:  # each holds 1.5 MiB of a message not finished yet
                writer.write(b'{"command":"status","pad":"' + b"x" * (3 << 19))
            big.write(b'{"command":"status","pad":"' + b"x" * (3 << 20))
            assert await dropped(big_reader)
            await until(lambda: server.connections == 3, what="the biggest dropped")
            assert server._held <= server.memory_cap
            for reader, writer in small:  # the others finish their messages and are answered
                writer.write(b'"};;')
                assert json.loads((await reader.readuntil(b";;"))[:-2])["response"] == "status"
                writer.close()
            big.close()
            await until(lambda: server._held == 0, what="every buffer freed")

    run(scenario())


# --- openings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pieces", [
    [b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n" + message("list")],
    [b"PO", b"ST / HTTP/1.1\r\n\r\n" + message("list")],
    [b"\r\nGET / HTTP/1.1\r\n\r\n"],
    # a lower-case method, and the smuggling it allowed: a header ends a frame, the body is the next
    [b"post /x HTTP/1.1\r\nX: ;;\r\n\r\n" + message("list")],
])
def test_an_http_request_is_closed_at_once_and_unanswered(tmp_path: Path, pieces: list[bytes]) -> None:
    async def scenario() -> None:
        async with control_server(tmp_path) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            for piece in pieces:
                writer.write(piece)
                await asyncio.sleep(0.05)
            assert await dropped(reader, 5)
            writer.close()
            assert (await exchange(port, message("list")))["response"] == "list"

    run(scenario())


# --- shutdown ----------------------------------------------------------------------------------

def test_shutdown_with_clients_in_every_state_logs_no_error(tmp_path: Path) -> None:
    daemon = Daemon(tmp_path, {"web": SLEEPER, "stubborn": {**STUBBORN, "stoptime": 3}}).start()
    clients = [Raw(daemon.port) for _ in range(6)]
    try:
        clients[0].send(message("list"))  # answered, then idle
        clients[0].reply()
        clients[1].send(b'{"command":"sta')  # half a message
        clients[2].send(message("status") * 5000)  # a burst it does not read
        assert clients[3].exchange(message("start", "stubborn"))["response"] == "success"
        clients[3].send(message("stop", "stubborn"))  # waiting on a 3 s stop
        clients[4].send(message("kill", "web") + message("start", "web"))
        time.sleep(0.5)
        assert daemon.stop(timeout=60) == 0
    finally:
        for raw in clients:
            raw.close()
    log = daemon.stderr()
    assert "Traceback" not in log and " ERROR " not in log, log


# --- streamed replies --------------------------------------------------------------------------

class Ticker:
    """A following verb for the tests: yields the replies it is given, then waits on `more` (if
    set) for further ones, and records how it ended."""

    def __init__(self, replies: list[Reply], wait: bool = False) -> None:
        self.replies = replies
        self.wait = wait
        self.more: asyncio.Queue[Reply] = asyncio.Queue()
        self.closed = asyncio.Event()

    def verb(self) -> Verb:
        return Verb("tick", JobArg.NONE, False, lambda sup, request: Reply("success", stream=self.stream()), "test")

    async def stream(self) -> AsyncIterator[Reply]:
        try:
            for reply in self.replies:
                yield reply
            while self.wait:
                yield await self.more.get()
        finally:
            self.closed.set()


@pytest.fixture
def ticker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Ticker]]:
    """Installs a Ticker as the verb `tick` for the test's duration."""

    def install(replies: list[Reply], wait: bool = False) -> Ticker:
        made = Ticker(replies, wait)
        monkeypatch.setitem(VERBS, "tick", made.verb())
        return made

    yield install


def lines(n: int) -> list[Reply]:
    return [Reply("list", value={"line": i}) for i in range(n)]


def test_a_stream_follows_its_reply_in_order_then_the_connection_closes(tmp_path: Path, ticker) -> None:
    made = ticker(lines(500))

    async def scenario() -> None:
        async with control_server(tmp_path) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(message("tick"))
            assert (await reader.readuntil(b";;")) == b'{"response":"success"};;'
            seen = [json.loads((await reader.readuntil(b";;"))[:-2]) for _ in range(500)]
            assert [reply["response"] for reply in seen] == ["list"] * 500
            assert await asyncio.wait_for(reader.read(), 10) == b""
            assert made.closed.is_set()
            writer.close()

    run(scenario())


@pytest.mark.parametrize("leave", ["close", "eof"])
def test_a_client_leaving_mid_stream_closes_the_stream_at_once(tmp_path: Path, ticker, leave: str) -> None:
    made = ticker(lines(3), wait=True)

    async def scenario() -> None:
        async with control_server(tmp_path) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(message("tick"))
            for _ in range(4):
                await reader.readuntil(b";;")
            # sent while following: read and dropped, never executed
            writer.write(message("push", "sneaked", json.dumps(SLEEPER).encode()))
            await asyncio.sleep(0.1)
            if leave == "eof":
                writer.write_eof()
            else:
                writer.close()
            await asyncio.wait_for(made.closed.wait(), 2)
            assert not (tmp_path / "jobs" / "sneaked.tm.json").exists()
            await until(lambda: server.connections == 0, what="the connection closed")
            writer.close()

    run(scenario())


def test_a_stream_nobody_reads_is_dropped_after_the_write_timeout(tmp_path: Path, ticker) -> None:
    made = ticker([Reply("file", job="x", data=b"y" * 65536)] * 2000)

    async def scenario() -> None:
        async with control_server(tmp_path, write_timeout=1) as (server, port):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", port))
            sock.sendall(message("tick"))
            await asyncio.wait_for(made.closed.wait(), 10)
            await until(lambda: server.connections == 0 and server._held == 0, what="dropped and freed")
            sock.close()

    run(scenario())


def test_a_slow_reader_of_a_stream_gets_everything_in_order(tmp_path: Path, ticker) -> None:
    ticker([Reply("file", job=str(i), data=bytes([i % 256]) * 20000) for i in range(200)])

    async def scenario() -> None:
        async with control_server(tmp_path) as (server, port):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
            writer.write(message("tick"))
            await reader.readuntil(b";;")
            jobs = []
            for i in range(200):
                if i % 20 == 0:
                    await asyncio.sleep(0.05)
                jobs.append(json.loads((await reader.readuntil(b";;"))[:-2])["job"])
            assert [base64.b64decode(job).decode() for job in jobs] == [str(i) for i in range(200)]
            writer.close()

    run(scenario())


def test_a_refused_peer_never_holds_back_the_daemons_background_work(tmp_path: Path) -> None:
    """Requests go before the background batches (foreground.py) for admitted peers only: a
    local user who may not control the daemon must not slow its spawns by connecting again and
    again."""
    nobody = 65534
    connect = ("import socket, sys\n"
               "for _ in range(5):\n"
               "    with socket.create_connection(('127.0.0.1', int(sys.argv[1]))) as s:\n"
               "        s.sendall(b'{\"command\":\"status\"};;')\n"
               "        s.recv(4096)\n")

    async def scenario() -> None:
        async with control_server(tmp_path) as (server, port):
            asks = []
            begin = server.supervisor.foreground.begin
            server.supervisor.foreground.begin = lambda: (asks.append(1), begin())[1]  # counted, then done
            refused = await asyncio.create_subprocess_exec(
                "python3", "-c", connect, str(port), user=nobody, group=nobody, cwd="/")
            assert await refused.wait() == 0
            assert asks == []
            assert (await exchange(port, message("status", "web")))["response"] == "status"
            assert asks, "an admitted request asks"

    run(scenario())
