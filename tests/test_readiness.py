"""ready, healthcheck and watchdog in the supervisor, with real programs: READY=1 on the instance's
own socket, a program that never sends it, a watchdog miss, an http server turning 503, a tcp
check, a hanging check command, and a reload of these fields that restarts nothing."""
import asyncio
import contextlib
import json
import logging
import time

from taskmasterd.lifecycle.states import State

from .support.daemon import free_port, pid_alive, write_job
from .support.notify import NOTIFY_READY, PYTHON
from .support.supervised import eventually, reach, run, supervised

S = State
SLEEP = {"cmd": "sleep 300", "starttime": 0}
# Sends READY=1 after argv[1] seconds (with the time it sent it as STATUS), then never pings.
NOTIFY_AFTER = """
import os, socket, sys, time
time.sleep(float(sys.argv[1]))
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    sock.sendto(b"READY=1\\nSTATUS=%r" % time.time(), os.environ["NOTIFY_SOCKET"])
time.sleep(300)
"""
# Sends each argument as a datagram, or sleeps for "sleep N", then sleeps on.
NOTIFY_SCRIPT = """
import os, socket, sys, time
with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
    for step in sys.argv[1:]:
        if step.startswith("sleep "):
            time.sleep(float(step[6:]))
        else:
            sock.sendto(step.encode(), os.environ["NOTIFY_SOCKET"])
time.sleep(300)
"""
LISTEN_LATE = "import socket, sys, time; time.sleep(float(sys.argv[2])); " \
              "s = socket.create_server(('127.0.0.1', int(sys.argv[1]))); time.sleep(300)"


def notify_after(seconds: float, **extra) -> dict:
    return {"cmd": [PYTHON, "-c", NOTIFY_AFTER, str(seconds)], "ready": "notify", **extra}


def test_a_notify_program_is_starting_until_ready_1_and_running_right_after(tmp_path):
    async def scenario():
        async with supervised(tmp_path, {"n": notify_after(1.0, ready_timeout=20)}) as sup:
            inst = sup.jobs["n"].instances[0]
            await reach(inst, S.STARTING)
            spawned = time.time()
            await asyncio.sleep(0.5)
            assert inst.state is S.STARTING and inst.child is not None
            await reach(inst, S.RUNNING)
            entry = sup.status("n").value["jobs"][0]["instances"][0]
            sent = float(entry["notify_status"])
            assert sent >= spawned + 0.5 and 0 <= entry["since"] - sent < 0.5

    run(scenario())


def test_the_bundled_notify_program_pings_its_watchdog(tmp_path):
    async def scenario():
        job = {"cmd": [PYTHON, str(NOTIFY_READY)], "ready": "notify", "ready_timeout": 20, "watchdog": 0.6}
        async with supervised(tmp_path, {"n": job}) as sup:
            inst = sup.jobs["n"].instances[0]
            await reach(inst, S.RUNNING)
            pid = inst.child.pid
            await asyncio.sleep(2)  # over three watchdog periods
            assert inst.state is S.RUNNING and inst.child.pid == pid and inst.restarts == 0
            assert sup.status("n").value["jobs"][0]["instances"][0]["notify_status"] == "serving"

    run(scenario())


def test_a_program_that_never_sends_ready_fails_to_start(tmp_path):
    async def scenario():
        job = {"cmd": "sleep 300", "ready": "notify", "ready_timeout": 0.5, "startretries": 1, "stoptime": 2}
        async with supervised(tmp_path, {"n": job}) as sup:
            inst = sup.jobs["n"].instances[0]
            await reach(inst, S.STARTING)
            await eventually(lambda: inst.child is not None)
            first = inst.child.pid
            await reach(inst, S.BACKOFF)
            assert not pid_alive(first)
            assert inst.description.startswith("not ready within 0.5s (no READY=1); retry 1 in 1s")
            await reach(inst, S.FATAL, timeout=10)
            assert "gave up after 2 attempts" in inst.description
            reply = await sup.start("n")
            assert reply.response == "fail" and "not ready within 0.5s (no READY=1)" in reply.error

    run(scenario())


def test_a_watchdog_miss_restarts_the_instance_and_says_so(tmp_path, caplog):
    async def scenario():
        async with supervised(tmp_path, {"n": notify_after(0, ready_timeout=20, watchdog=0.5)}) as sup:
            inst = sup.jobs["n"].instances[0]
            await reach(inst, S.RUNNING)
            first = inst.child.pid
            ready_at = time.monotonic()
            await asyncio.wait_for(inst.wait_until(lambda i: i.restarts == 1), 10)
            assert time.monotonic() - ready_at >= 0.45
            await reach(inst, S.RUNNING)
            assert inst.child.pid != first and not pid_alive(first)

    with caplog.at_level(logging.INFO, "taskmasterd.instance"):
        run(scenario())
    assert "n[0]: RUNNING -> STOPPING (restart: no WATCHDOG=1 for 0.5s: SIGTERM to the process group); spawn 1" \
        in caplog.messages
    assert "n[0]: STOPPED -> STARTING (restart: no WATCHDOG=1 for 0.5s)" in caplog.messages


def test_stopping_1_is_shown_and_disarms_the_watchdog_and_watchdog_trigger_restarts(tmp_path, caplog):
    async def scenario():
        jobs = {"bye": {"cmd": [PYTHON, "-c", NOTIFY_SCRIPT, "READY=1", "STOPPING=1\nSTATUS=draining"],
                        "ready": "notify", "ready_timeout": 20, "watchdog": 0.3},
                "trig": {"cmd": [PYTHON, "-c", NOTIFY_SCRIPT, "READY=1", "sleep 0.2", "WATCHDOG=trigger"],
                         "ready": "notify", "ready_timeout": 20, "watchdog": 60}}
        async with supervised(tmp_path, jobs) as sup:
            bye, trig = sup.jobs["bye"].instances[0], sup.jobs["trig"].instances[0]
            await asyncio.wait_for(trig.wait_until(lambda i: i.restarts == 1), 20)
            await reach(bye, S.RUNNING)
            await eventually(lambda: bye.health.stopping_notified, what="STOPPING=1 read")
            await asyncio.sleep(1)  # over three watchdog periods without a ping
            entry = sup.status("bye").value["jobs"][0]["instances"][0]
            assert entry["notify_stopping"] is True and entry["notify_status"] == "draining"
            assert bye.state is S.RUNNING and bye.restarts == 0

    with caplog.at_level(logging.INFO, "taskmasterd.instance"):
        run(scenario())
    assert any(m.startswith("trig[0]: RUNNING -> STOPPING (restart: the program sent WATCHDOG=trigger")
               for m in caplog.messages)


class HealthEndpoint:
    """A real http server on 127.0.0.1 answering every request with `status`, counting them."""

    def __init__(self) -> None:
        self.status = 200
        self.served: list[int] = []

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            self.served.append(self.status)
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % self.status)
            await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def serving(self):
        server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        try:
            yield server.sockets[0].getsockname()[1]
        finally:
            server.close()


def test_an_http_check_turning_503_restarts_the_job_after_its_retries(tmp_path, caplog):
    async def scenario():
        endpoint = HealthEndpoint()
        async with endpoint.serving() as port, supervised(tmp_path, {}) as sup:
            check = {"http": f"http://127.0.0.1:{port}/health", "interval": 0.1, "start_interval": 0.1, "retries": 3}
            pushed = await sup.push("web", json.dumps({**SLEEP, "healthcheck": check}).encode())
            assert pushed.response == "success"
            inst = sup.jobs["web"].instances[0]
            await eventually(lambda: inst.health.checker and inst.health.checker.state == "healthy")
            first = inst.child.pid
            entry = sup.status("web").value["jobs"][0]["instances"][0]
            assert entry["health"] == "healthy" and entry["last_result"] == "http 200"
            assert entry["check"] == f"http http://127.0.0.1:{port}/health" and entry["last_check"] <= time.time()
            endpoint.status = 503
            await asyncio.wait_for(inst.wait_until(lambda i: i.restarts == 1), 10)
            assert endpoint.served.count(503) == 3  # the third failure in a row made it unhealthy
            endpoint.status = 200
            await reach(inst, S.RUNNING)
            assert inst.child.pid != first and not pid_alive(first)
            health = [(e.old, e.new, e.reason) for e in sup.events.history if e.kind == "health"]
            assert health[:2] == [("starting", "healthy", "http 200"), ("healthy", "unhealthy", "http 503")]

    with caplog.at_level(logging.INFO, "taskmasterd.instance"):
        run(scenario())
    assert "web[0]: healthy -> unhealthy (http 503); spawn 1" in caplog.messages
    assert any(m.startswith("web[0]: RUNNING -> STOPPING (restart: unhealthy (http 503)") for m in caplog.messages)


def test_a_tcp_check_and_ready_healthy(tmp_path):
    async def scenario():
        port = free_port()
        job = {"cmd": [PYTHON, "-c", LISTEN_LATE, str(port), "0.6"], "ready": "healthy", "ready_timeout": 20,
               "healthcheck": {"tcp": f"127.0.0.1:{port}", "start_interval": 0.1, "interval": 30}}
        async with supervised(tmp_path, {"db": job}) as sup:
            inst = sup.jobs["db"].instances[0]
            await reach(inst, S.STARTING)
            await asyncio.sleep(0.4)
            assert inst.state is S.STARTING  # checked, refused: failures before the first pass are no verdict
            assert inst.health.checker.last.detail == "tcp connect refused"
            await reach(inst, S.RUNNING)
            assert inst.health.checker.state == "healthy"
            entry = sup.status("db").value["jobs"][0]["instances"][0]
            assert entry["health"] == "healthy" and entry["last_result"] == "tcp listening"
            assert entry["check"] == f"tcp 127.0.0.1:{port}" and entry["failures"] == 0

    run(scenario())


def test_a_hanging_check_command_is_killed_at_its_timeout(tmp_path):
    async def scenario():
        pidfile = tmp_path / "check.pid"
        check = {"cmd": ["sh", "-c", f"echo $$ >> {pidfile}; exec sleep 300"], "timeout": 0.3, "interval": 0.2,
                 "start_interval": 0.1, "retries": 2, "start_period": 0}
        async with supervised(tmp_path, {"w": {**SLEEP, "healthcheck": check, "on_unhealthy": "none"}}) as sup:
            inst = sup.jobs["w"].instances[0]
            await eventually(lambda: inst.health.checker and inst.health.checker.state == "unhealthy", what="unhealthy")
            entry = sup.status("w").value["jobs"][0]["instances"][0]
            assert entry["health"] == "unhealthy" and entry["last_result"] == "timed out after 0.3s"
            checks = [int(line) for line in pidfile.read_text().split()]
            assert len(checks) >= 2
            await eventually(lambda: not any(pid_alive(pid) for pid in checks[:2]), 5, "checks killed")
            assert inst.state is S.RUNNING and inst.restarts == 0  # on_unhealthy none: only reported

    run(scenario())


async def change_of(name: str, sup) -> str:
    """What a reload of every file did to job `name` (its line of the reload report)."""
    reply = await sup.reload_all()
    return next(entry["change"] for entry in reply.value["changes"] if entry["job"] == name)


def test_a_reload_of_the_readiness_fields_restarts_nothing(tmp_path):
    async def scenario():
        port = free_port()
        before = {"cmd": [PYTHON, "-c", LISTEN_LATE, str(port), "0"], "starttime": 0}
        after = {**before, "healthcheck": {"tcp": f"127.0.0.1:{port}", "start_interval": 0.1},
                 "on_unhealthy": "none", "depends_on": ["other"], "ready": "healthy", "ready_timeout": 9}
        async with supervised(tmp_path, {"svc": before, "other": SLEEP}, watch=False) as sup:
            inst = sup.jobs["svc"].instances[0]
            await reach(inst, S.RUNNING)
            pid = inst.child.pid
            write_job(tmp_path / "jobs", "svc", after)
            assert await change_of("svc", sup) == "applied"  # in place
            await eventually(lambda: inst.health.checker and inst.health.checker.state == "healthy")
            write_job(tmp_path / "jobs", "svc", {**after, "healthcheck": {"cmd": "true", "start_interval": 0.1},
                                                 "ready": "notify", "watchdog": 5})
            assert await change_of("svc", sup) == "applied"
            assert sup.status("svc").value["jobs"][0]["instances"][0]["check"] == "cmd true"
            write_job(tmp_path / "jobs", "svc", before)
            assert await change_of("svc", sup) == "applied"
            assert "health" not in sup.status("svc").value["jobs"][0]["instances"][0]
            assert inst.child.pid == pid and inst.state is S.RUNNING and inst.restarts == 0

    run(scenario())
