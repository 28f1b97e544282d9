"""A job's ColonyOS executor takes work only while the job serves: a healthy instance (without a
health check, a RUNNING one). Real processes, a real tcp listener the check probes, the test
server on 127.0.0.1 and a user submitting."""
from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

from tests.support.colonies_state import SUCCESS, WAITING
from tests.support.daemon import free_port
from tests.support.supervised import eventually, run
from tests.test_colonies_bridge import job, world


@contextlib.contextmanager
def listening(port: int):
    server = socket.create_server(("127.0.0.1", port))
    try:
        yield
    finally:
        server.close()


def test_the_executor_polls_only_while_the_job_is_healthy(tmp_path: Path) -> None:
    port = free_port()
    check = {"tcp": f"127.0.0.1:{port}", "interval": 0.2, "start_interval": 0.1, "retries": 1, "start_period": 0}
    jobs = {"svc": job("sleep 300", autostart=True, starttime=0, healthcheck=check, on_unhealthy="none")}

    async def scenario() -> None:
        async with world(tmp_path, jobs) as w:
            await eventually(lambda: "unhealthy" in (w.executor("svc").get("waiting") or ""), what="waiting")
            executor = w.executor("svc")
            assert executor["state"] == "waiting"
            assert executor["waiting"] == "no instance is healthy (svc[0]: RUNNING, unhealthy (tcp connect refused))"
            pending = await w.submit("svc", funcname="status")
            await asyncio.sleep(0.5)
            assert (await w.process(pending))["state"] == WAITING  # nobody took it
            with listening(port):
                done = await w.ended(pending)
                assert done["state"] == SUCCESS
                assert w.executor("svc")["waiting"] is None
            # Unhealthy again: the poll under way ends (assign_timeout), and no other begins.
            await eventually(lambda: w.executor("svc")["state"] == "waiting", what="waiting again")
            later = await w.submit("svc", funcname="status")
            await asyncio.sleep(0.5)
            assert (await w.process(later))["state"] == WAITING

    run(scenario())


def test_without_a_check_running_is_enough_and_a_job_nobody_runs_still_takes_work(tmp_path: Path) -> None:
    jobs = {"svc": job(["sh", "-c", "sleep 0.5; exec sleep 300"], autostart=True, starttime=1)}

    async def scenario() -> None:
        async with world(tmp_path, jobs) as w:
            await eventually(lambda: w.executor("svc")["state"] == "waiting", what="waiting")
            assert w.executor("svc")["waiting"] == "no instance is RUNNING (svc[0]: STARTING)"
            await w.polling("svc")  # RUNNING after its starttime
            assert (await w.sup.stop("svc")).response == "success"
            await w.polling("svc")  # stopped: nothing is meant to run, its work is the one-off runs
            done = await w.ended(await w.submit("svc", funcname="start"))
            assert done["state"] == SUCCESS
            assert w.sup.jobs["svc"].instances[0].state == "RUNNING"

    run(scenario())
