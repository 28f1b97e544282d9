"""Health checks: Docker's rules as pure logic, then the checker with a real tcp listener, a real
http server turning 503, and real check commands (one hanging, killed with its group)."""
import asyncio
import contextlib
import os
import socket
import time
from pathlib import Path

import pytest

from taskmasterd.health.checker import HealthChecker, due_time
from taskmasterd.health.state import Health, HealthTracker
from taskmasterd.jobfiles.jobfile import parse_job
from taskmasterd.health.probes import OUTPUT_LIMIT, job_check_spawner
from taskmasterd.processes.table import ProcessTable
from taskmasterd.jobfiles.readiness_spec import HealthCheckSpec, TcpCheck
from tests.support.supervised import run

H = Health
FAST = '"interval": 0.05, "start_interval": 0.05, "retries": 2, "start_period": 0'  # every failure counts


def healthcheck(fields: str, job: str = ""):
    """A job file's `"healthcheck": {fields}` (and more of the file in `job`), and a spawn function
    with the job's settings."""
    spec = parse_job("web", f'{{"cmd": "x", "healthcheck": {{{fields}}}{job}}}'.encode(), "jobs/web.tm.json")
    return spec.healthcheck, job_check_spawner(ProcessTable(), spec, {"PATH": os.environ["PATH"], **dict(spec.env)}, None)


def make_checker(fields: str, changes, job: str = "") -> HealthChecker:
    spec, spawn_check = healthcheck(fields, job)
    return HealthChecker(spec, changes, spawn_check)


# --- the rules -----------------------------------------------------------------------------------

SPEC = HealthCheckSpec(TcpCheck("h", 1), interval=10, retries=3, start_period=5, start_interval=1)


def test_one_pass_is_healthy_and_retries_failures_in_a_row_unhealthy():
    tracker = HealthTracker(started_at=0)
    assert tracker.state is H.STARTING and tracker.next_delay(SPEC) == 1
    assert tracker.record(True, 1, SPEC) is H.HEALTHY and tracker.next_delay(SPEC) == 10
    assert tracker.record(True, 11, SPEC) is None
    assert [tracker.record(False, t, SPEC) for t in (21, 31)] == [None, None]
    assert tracker.record(True, 41, SPEC) is None and tracker.failures == 0  # a pass breaks the run
    assert [tracker.record(False, t, SPEC) for t in (51, 61, 71)] == [None, None, H.UNHEALTHY]
    assert tracker.record(False, 81, SPEC) is None and tracker.failures == 4
    assert tracker.record(True, 91, SPEC) is H.HEALTHY


def test_failures_in_the_start_period_do_not_count_until_a_pass():
    tracker = HealthTracker(started_at=100)
    assert [tracker.record(False, t, SPEC) for t in (101, 102, 103, 104)] == [None] * 4
    assert tracker.failures == 0 and tracker.state is H.STARTING
    assert [tracker.record(False, t, SPEC) for t in (105, 106, 107)] == [None, None, H.UNHEALTHY]
    started = HealthTracker(started_at=0)
    started.record(True, 1, SPEC)  # started within the start period: from now on every failure counts
    assert [started.record(False, t, SPEC) for t in (2, 3, 4)] == [None, None, H.UNHEALTHY]


def test_checks_fall_due_on_a_shared_grid_a_little_late_at_most():
    assert due_time(100.2, 10) == 110.5 and due_time(100.0, 10) == 110.0  # 0.5 s grid for 10 s
    assert due_time(3.01, 1) == 4.0625  # 1/16 s for 1 s
    assert all(0 <= due_time(t / 7, d) - (t / 7 + d) <= min(0.5, d / 16) for t in range(50) for d in (0.05, 1, 10, 300))
    assert due_time(5.0, 0) == 5.0


# --- the checker ---------------------------------------------------------------------------------


async def first_change(fields: str) -> tuple[Health, Health, str]:
    """Run a checker until its first verdict."""
    changes = Changes()
    checker = make_checker(fields, changes)
    checker.start()
    try:
        return await changes.wait(1)
    finally:
        checker.stop()


@contextlib.asynccontextmanager
async def listening():
    """A real tcp listener on 127.0.0.1 that accepts and closes; yields its port."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


class Changes:
    def __init__(self):
        self.seen: list[tuple[Health, Health, str]] = []
        self._event = asyncio.Event()

    def __call__(self, old: Health, new: Health, reason: str) -> None:
        self.seen.append((old, new, reason))
        self._event.set()

    async def wait(self, count: int, timeout: float = 20.0) -> tuple[Health, Health, str]:
        async def arrived():
            while len(self.seen) < count:
                self._event.clear()
                await self._event.wait()

        await asyncio.wait_for(arrived(), timeout)
        return self.seen[count - 1]


def test_a_tcp_check_against_a_real_listener():
    # A loopback address is checked by asking the kernel: the service sees no connection at all.
    async def scenario():
        accepted = []
        server = await asyncio.start_server(lambda r, w: accepted.append(w.close()), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        changes = Changes()
        checker = make_checker(f'"tcp": "127.0.0.1:{port}", {FAST}', changes)
        before = time.time()
        checker.start()
        assert await changes.wait(1) == (H.STARTING, H.HEALTHY, "tcp listening")
        status = checker.status()
        assert status["health"] == "healthy" and status["check"] == f"tcp 127.0.0.1:{port}"
        assert status["last_result"] == "tcp listening" and status["last_check"] >= before
        server.close()
        await server.wait_closed()
        assert await changes.wait(2) == (H.HEALTHY, H.UNHEALTHY, "tcp connect refused")
        checker.stop()
        assert checker.state is None
        assert accepted == []

    run(scenario())


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_loopback_tcp_check_finds_wildcard_and_ipv6_listeners(host):
    if host == "::" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    listener = socket.create_server((host, 0), family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                                    dualstack_ipv6=":" in host)
    port = listener.getsockname()[1]

    async def scenario():
        assert await first_change(f'"tcp": "127.0.0.1:{port}", {FAST}') == (H.STARTING, H.HEALTHY, "tcp listening")
        if ":" in host:
            assert await first_change(f'"tcp": "[::1]:{port}", {FAST}') == (H.STARTING, H.HEALTHY, "tcp listening")

    try:
        run(scenario())
    finally:
        listener.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_tcp_check_on_a_listener_that_never_accepts_fails_and_leaks_nothing():
    async def scenario():
        listener = socket.create_server(("127.0.0.1", 0), backlog=0)
        port = listener.getsockname()[1]
        queued = []
        with contextlib.suppress(OSError):  # fill the accept queue: later handshakes never end
            for _ in range(8):
                queued.append(socket.create_connection(("127.0.0.1", port), timeout=0.2))
        before = open_fds()
        # Asked of the kernel: a full accept queue at once. Connected to (a host name): the
        # handshake never ends, and the check times out.
        assert await first_change(f'"tcp": "127.0.0.1:{port}", "timeout": 0.2, {FAST}') == (
            H.STARTING, H.UNHEALTHY, f"tcp accept queue full ({len(queued)} waiting, backlog 0)")
        assert await first_change(f'"tcp": "localhost:{port}", "timeout": 0.2, {FAST}') == (
            H.STARTING, H.UNHEALTHY, "timed out after 0.2s")
        assert open_fds() == before
        for sock in queued + [listener]:
            sock.close()

    run(scenario())


def test_a_host_name_is_resolved_off_the_loop():
    async def scenario():
        async with listening() as port:
            assert await first_change(f'"tcp": "localhost:{port}", {FAST}') == (
                H.STARTING, H.HEALTHY, "tcp connected")

    run(scenario())


def test_each_address_of_a_name_is_tried_and_a_name_error_is_told(monkeypatch):
    # The resolver is the one thing faked here ("localhost" has one address on this machine);
    # the connects are real: a refused port first, then a listening one.
    async def scenario():
        async with listening() as port:
            await resolve_two(port)

    async def resolve_two(port: int):
        refused = socket.socket()
        refused.bind(("127.0.0.1", 0))
        addresses = {"two.test": [("127.0.0.1", refused.getsockname()[1]), ("127.0.0.1", port)]}

        def resolve(host, _port, *args):
            if host not in addresses:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", address) for address in addresses[host]]

        monkeypatch.setattr(socket, "getaddrinfo", resolve)
        changes = Changes()
        checker = make_checker(f'"tcp": "two.test:1", {FAST}', changes)
        checker.start()
        assert await changes.wait(1) == (H.STARTING, H.HEALTHY, "tcp connected")
        checker.update(healthcheck(f'"http": "http://nowhere.test/", {FAST}')[0])
        assert await changes.wait(2) == (
            H.HEALTHY, H.UNHEALTHY, "http cannot resolve the host: Name or service not known")
        checker.stop()
        refused.close()

    run(scenario())


class TurningServer:
    """A real HTTP server on 127.0.0.1 whose answer the test sets: a status code, raw bytes (b"":
    close at once), or None (never answer)."""

    def __init__(self):
        self.answer: bytes | None = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        self.requests: list[bytes] = []

    def status(self, code: int) -> None:
        self.answer = f"HTTP/1.1 {code} Whatever\r\nContent-Length: 0\r\n\r\n".encode()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.requests.append(await reader.readuntil(b"\r\n\r\n"))
        if self.answer is None:
            await asyncio.sleep(3600)
        writer.write(self.answer)
        await writer.drain()
        writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        self.server.close()


def test_between_checks_nothing_runs_but_a_timer():
    async def scenario():
        async with TurningServer() as web:
            before = asyncio.all_tasks()
            changes = Changes()
            checker = make_checker(f'"http": "http://127.0.0.1:{web.port}/", "start_interval": 0.05, '
                                   '"interval": 3600', changes)
            checker.start()
            await changes.wait(1)  # the http check ran in a task of its own
            await asyncio.sleep(0.05)
            assert asyncio.all_tasks() - before == set()  # no task waits for the next check
            checker.stop()

    run(scenario())


def test_an_http_check_against_a_server_turning_503():
    async def scenario():
        async with TurningServer() as web:
            changes = Changes()
            checker = make_checker(f'"http": "http://127.0.0.1:{web.port}/health?full=1", {FAST}', changes)
            checker.start()
            assert await changes.wait(1) == (H.STARTING, H.HEALTHY, "http 200")
            assert web.requests[0].startswith(b"GET /health?full=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % web.port)
            web.status(503)
            failures = len(web.requests)
            assert await changes.wait(2) == (H.HEALTHY, H.UNHEALTHY, "http 503")
            assert len(web.requests) - failures == 2  # after `retries` failures in a row
            web.status(302)
            assert await changes.wait(3) == (H.UNHEALTHY, H.HEALTHY, "http 302")
            checker.stop()

    run(scenario())


@pytest.mark.parametrize("answer, reason", [
    (b"", "http closed before a response"),
    (b"SSH-2.0-OpenSSH_9.6\r\n", "http bad response"),
    (b"HTTP/1.1 200" + b"x" * 10000 + b"\r\n", "http bad response: status line too long"),
    (None, "timed out after 0.2s"),
])
def test_an_http_check_against_a_broken_server(answer, reason):
    async def scenario():
        async with TurningServer() as web:
            web.answer = answer
            fields = f'"http": "http://127.0.0.1:{web.port}/", "timeout": 0.2, {FAST}'
            assert await first_change(fields) == (H.STARTING, H.UNHEALTHY, reason)

    run(scenario())


def test_a_command_check_runs_with_the_jobs_settings_and_keeps_its_output(tmp_path):
    async def scenario():
        flag = tmp_path / "ok"
        fields = f'"cmd": ["sh", "-c", "echo out; echo err >&2; test \\"$X\\" = 1 && test -e ok"], {FAST}'
        changes = Changes()
        checker = make_checker(fields, changes, f', "env": {{"X": "1"}}, "workingdir": "{tmp_path}"')
        checker.start()
        assert await changes.wait(1) == (H.STARTING, H.UNHEALTHY, "exit code 1")
        assert checker.status()["output"] == "out\nerr\n"
        flag.touch()
        assert await changes.wait(2) == (H.UNHEALTHY, H.HEALTHY, "exit code 0")
        checker.stop()

    run(scenario())


def test_a_chatty_command_check_never_blocks_and_its_output_is_bounded():
    async def scenario():
        fields = f'"cmd": ["sh", "-c", "head -c 1000000 /dev/zero | tr \\"\\\\\\\\0\\" x; exit 0"], {FAST}'
        changes = Changes()
        checker = make_checker(fields, changes)
        checker.start()
        assert await changes.wait(1) == (H.STARTING, H.HEALTHY, "exit code 0")
        assert checker.status()["output"] == "x" * OUTPUT_LIMIT
        checker.stop()

    run(scenario())


def alive(pid: int) -> bool:
    """Running or sleeping, not a zombie nobody reaped yet (PID 1 of a container may not reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def gone(*pids: int) -> bool:
    """SIGKILLed processes die when next scheduled: give them time (nothing tells us a stranger died)."""
    deadline = time.monotonic() + 10
    while any(map(alive, pids)) and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return not any(map(alive, pids))


async def pids_in(path: Path, count: int) -> list[int]:
    while len(words := (path.read_text().split() if path.exists() else [])) < count:
        await asyncio.sleep(0.02)
    return [int(w) for w in words]


def test_a_hanging_command_check_is_killed_at_its_timeout_with_its_group(tmp_path):
    async def scenario():
        pids = tmp_path / "pids"
        # The check leaves a grandchild in its group and hangs.
        fields = (f'"cmd": ["sh", "-c", "sleep 600 & echo $$ $! > {pids}; wait"], "timeout": 0.5, '
                  '"start_interval": 0.05, "interval": 3600, "retries": 1, "start_period": 0')
        changes = Changes()
        checker = make_checker(fields, changes)
        began = time.monotonic()
        checker.start()
        leader, grandchild = await pids_in(pids, 2)
        assert alive(leader) and alive(grandchild) and os.getpgid(grandchild) == leader
        assert await changes.wait(1) == (H.STARTING, H.UNHEALTHY, "timed out after 0.5s")
        assert 0.5 <= time.monotonic() - began < 10
        assert await gone(leader, grandchild)
        checker.stop()

    run(scenario())


def test_stopping_the_checker_kills_a_command_being_run(tmp_path):
    async def scenario():
        pids = tmp_path / "pids"
        fields = f'"cmd": ["sh", "-c", "echo $$ > {pids}; exec sleep 600"], "start_interval": 0.05'
        checker = make_checker(fields, Changes())
        checker.start()
        (leader,) = await pids_in(pids, 1)
        checker.stop()
        assert await gone(leader)

    run(scenario())


def test_a_command_that_cannot_start_fails_the_check():
    async def scenario():
        assert await first_change(f'"cmd": "/nonexistent/check", {FAST}') == (
            H.STARTING, H.UNHEALTHY, "spawn error: no such file or directory: /nonexistent/check")

    run(scenario())


def test_new_settings_apply_from_the_next_check():
    async def scenario():
        async with listening() as port:
            changes = Changes()
            checker = make_checker(f'"tcp": "127.0.0.1:1", {FAST}', changes)
            checker.start()
            assert await changes.wait(1) == (H.STARTING, H.UNHEALTHY, "tcp connect refused")
            checker.update(healthcheck(f'"tcp": "127.0.0.1:{port}", {FAST}')[0])
            assert await changes.wait(2) == (H.UNHEALTHY, H.HEALTHY, "tcp listening")
            assert checker.status()["check"] == f"tcp 127.0.0.1:{port}"
            checker.stop()

    run(scenario())


def test_without_sock_diag_a_loopback_tcp_check_connects(monkeypatch):
    # The state a sandbox without AF_NETLINK (or without tcp_diag) leaves the lookup in.
    from taskmasterd.health import probes

    monkeypatch.setattr(probes, "_listeners", probes._ListenerLookup())
    probes._listeners._diag.give_up()

    async def scenario():
        async with listening() as port:
            assert await first_change(f'"tcp": "127.0.0.1:{port}", {FAST}') == (H.STARTING, H.HEALTHY, "tcp connected")

    run(scenario())
