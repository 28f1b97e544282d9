"""A process the daemon runs is never started twice while a copy of it is alive (issue 22).

Seen on the real server (v1.9.12, COLONIES_STALE_EXECUTOR_DURATION=8, COLONIES_CLEANUP_INTERVAL=1,
the daemon's contact period then fixed at 10 s): the server removed the busy executor and put its
RUNNING process back in the queue (WAITING, unassigned, `retries` unchanged); the daemon
registered again, stopped its copy and was assigned the same process anew, so a 25 s run started
10 or 11 times and never finished; a copy whose child had left its process group was still alive
when the next copy started. The test server removes stale executors the same way.

The daemon keeps the running copy: a process requeued under a run is "adrift", its run goes on,
and once it ends, its outcome answers the assignment that brings the process back. A retry the
server makes (`retries` grew, after maxexectime) starts only once the old copy is gone.
"""
from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
from pathlib import Path

from tests.support.colonies_state import FAILED, SUCCESS
from tests.support.colonies_world import FAST, job, world
from tests.support.supervised import run

# The server forgets an executor silent for a second; the daemon speaks every two.
STALE = {"stale_executor_duration": 1.0, "cleanup_interval": 0.1}
SLOW_CONTACT = dataclasses.replace(FAST, assign_timeout=2, keepalive_interval=2.0)


def test_a_run_the_server_requeued_under_it_runs_once_and_succeeds(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    ticking = 'echo start >> "$0"; i=0; while [ $i -lt 10 ]; do echo "tick $i"; sleep 0.5; i=$((i+1)); done; echo finished'
    jobs = {"long": job(["sh", "-c", ticking, str(runs)])}

    async def scenario() -> None:
        async with world(tmp_path, jobs, timing=SLOW_CONTACT, **STALE) as w:
            executorid = (await w.polling("long"))["executorid"]
            processid = await w.submit("long", maxexectime=-1, maxretries=-1)
            done = await w.ended(processid, timeout=40)
            assert w.server.state.stale_removals[executorid] >= 1  # the server did lose sight of it
            assert runs.read_text() == "start\n"  # one child
            assert done["state"] == SUCCESS and done["retries"] == 0, done
            assert done["out"] == ["".join(f"tick {i}\n" for i in range(10)) + "finished\n"]
            # Output written while the process was adrift reaches the logs too, once.
            assert await w.logs(processid) == done["out"][0]

    run(scenario())


def test_a_retry_of_the_server_starts_once_the_old_copy_is_gone(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    # A copy that ignores the stop signal (SIGKILL after stoptime) and leaves a child outside its
    # process group: each copy writes how many processes of any copy were alive when it started.
    marker = f"sleep 30.{random.randrange(10**6):06d}"
    copy = (f'trap "" TERM; echo "start $(pgrep -x -f "{marker}" | wc -l)" >> "$0"; '
            f'setsid {marker} </dev/null >/dev/null 2>&1 & exec {marker}')
    jobs = {"stubborn": job(["sh", "-c", copy, str(runs)], stoptime=1, colonies={"maxconcurrent": 2})}

    async def scenario() -> None:
        async with world(tmp_path, jobs) as w:
            await w.polling("stubborn")
            # maxexectime 3, one retry: the server requeues it after 3 s (retries 1) while the
            # first copy is still being stopped, and the free slot's assign brings it back.
            processid = await w.submit("stubborn", maxexectime=3, maxretries=1)
            done = await w.ended(processid, timeout=30)
            assert done["state"] == FAILED and done["retries"] == 1, done
            assert runs.read_text() == "start 0\nstart 0\n"

    try:
        run(scenario())
    finally:  # the last copy's escape, which this in-process supervisor does not adopt
        found = subprocess.run(["pgrep", "-x", "-f", marker], capture_output=True, text=True).stdout.split()
        for pid in found:
            os.kill(int(pid), signal.SIGKILL)


def test_a_contact_period_the_servers_stale_duration_makes_unsafe_is_warned_about(tmp_path: Path, caplog) -> None:
    jobs = {"quiet": job(["true"])}

    async def scenario() -> None:
        async with world(tmp_path, jobs, settings={"keepalive": 10.0, "stale_executor_duration": 8.0}) as w:
            await w.polling("quiet")

    run(scenario())
    warned = [r.getMessage() for r in caplog.records if "colonies.keepalive is 10 s" in r.getMessage()]
    assert len(warned) == 1 and "at most 4 s" in warned[0]


def test_a_pid_that_changed_hands_after_the_scan_for_an_old_copy_is_not_killed(monkeypatch) -> None:
    """The scan for an old copy's processes and their SIGKILL are two steps: a pid found by the
    scan may be another process's by the kill (a recycled pid). That is played here by a scan
    that names an innocent process; it must survive, and the copy count as gone."""
    from taskmasterd.colonies import exactly_once

    innocent = subprocess.Popen(["sleep", "30"])
    scans = iter([[innocent.pid]])
    monkeypatch.setattr(exactly_once, "_copy_pids", lambda processid: next(scans, []))
    try:
        assert run(exactly_once.copy_gone("0" * 64, timeout=2.0)) is True
        assert innocent.poll() is None, "a process that does not carry the copy's id was killed"
    finally:
        innocent.kill()
        innocent.wait()
