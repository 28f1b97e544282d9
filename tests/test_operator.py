"""The operator's verbs through the real taskmasterctl against a real daemon: restart, parallel stops,
signal, tail -f across rotation, maintail, events -f, status exit 3, INVALID jobs, pid, shutdown,
completion."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.control_fixtures import SLEEPER, serving_daemon
from tests.support.ctl import Following, ctl, err, out
from tests.support.daemon import ROOT, Daemon, pid_alive, wait_for

# Ignores SIGTERM (inherited across exec): a stop lasts its whole stoptime of 2 s.
DEAF = {"cmd": ["sh", "-c", "trap '' TERM; exec sleep 1000"], "starttime": 0.5, "stoptime": 2,
        "stdout": None, "stderr": None}
JOBS = {
    "nginx": SLEEPER,
    "web": {**SLEEPER, "numprocs": 2},
    "deaf-a": DEAF,
    "deaf-b": DEAF,
    # Prints "got HUP" for each SIGHUP to its group (starttime: the trap is in place before it may run).
    "trapper": {"cmd": ["sh", "-c", "trap 'echo got HUP' HUP; while :; do sleep 0.05; done"], "starttime": 0.5},
    # A numbered line every 10 ms into a log that rotates every ~60 lines.
    "counter": {"cmd": ["sh", "-c", "i=0; while :; do echo \"n $i\"; i=$((i+1)); sleep 0.01; done"],
                "starttime": 0, "logmaxbytes": 1024, "logbackups": 2, "stderr": None},
    "always": {**SLEEPER, "autorestart": "always"},
    "doomed": {"cmd": ["false"], "starttime": 1, "startretries": 0, "stdout": None, "stderr": None},
    "broken": '{"cmd": "sleep 1", "numprocs": "two",\n "autostart": "yes"}',
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from serving_daemon(tmp_path_factory.mktemp("operator"), JOBS)


def pids(daemon: Daemon, job: str) -> list[int | None]:
    return [inst["pid"] for inst in daemon.instances(job)]


def running(daemon: Daemon, job: str) -> bool:
    return all(inst["state"] == "RUNNING" for inst in daemon.instances(job))


def test_restart_stops_then_starts_and_changes_the_pid(daemon: Daemon) -> None:
    before = pids(daemon, "web")
    result = ctl(daemon, "restart", "web:1")
    assert result.returncode == 0 and out(result) == "restart web:1: success\n", err(result)
    after = pids(daemon, "web")
    assert after[0] == before[0] and after[1] not in (None, before[1])
    again = ctl(daemon, "restart", "nginx", "web")
    assert again.returncode == 0 and out(again).splitlines() == ["restart nginx: success", "restart web: success"]
    assert not set(pids(daemon, "web")) & set(after)


def test_stop_of_two_jobs_takes_the_longest_stop_not_the_sum(daemon: Daemon) -> None:
    wait_for(lambda: running(daemon, "deaf-a") and running(daemon, "deaf-b"), what="the deaf jobs running")
    started = time.monotonic()
    result = ctl(daemon, "stop", "deaf-a", "deaf-b")
    elapsed = time.monotonic() - started
    assert result.returncode == 0, err(result)
    assert 1.9 < elapsed < 3.0, elapsed  # each ignores SIGTERM for its stoptime of 2 s
    assert [inst["state"] for inst in daemon.instances("deaf-a") + daemon.instances("deaf-b")] == ["STOPPED"] * 2
    assert ctl(daemon, "start", "deaf-*").returncode == 0


def test_signal_reaches_a_child_that_traps_it(daemon: Daemon) -> None:
    wait_for(lambda: running(daemon, "trapper"), what="trapper running")
    result = ctl(daemon, "signal", "trapper", "HUP")
    assert result.returncode == 0 and out(result) == "signal trapper: success\n", err(result)
    tail = Following(daemon, "tail", "-f", "-n", "5", "trapper")  # written already, or soon
    try:
        tail.wait_for(b"got HUP\n")
    finally:
        tail.interrupt()
    assert ctl(daemon, "signal", "nginx", "SIGUSR3").returncode == 2  # not a signal: refused before sending
    with_nothing_running = ctl(daemon, "signal", "doomed", "HUP")
    assert with_nothing_running.returncode == 0 and "nothing to do (redundant)" in err(with_nothing_running)


def test_tail_follows_new_lines_at_once_and_loses_nothing_across_rotations(daemon: Daemon) -> None:
    log = daemon.log_dir / "counter.0.out"
    tail = Following(daemon, "tail", "-f", "-n", "0", "counter")
    try:
        assert tail.wait_for(b"\n", timeout=5) < 1.0  # a line written after it started, within 1 s
        first = int(re.search(rb"n (\d+)\n", tail.seen).group(1))
        tail.wait_for(b"n %d\n" % (first + 300))  # ~2 rotations by the daemon (every ~150 lines)
        os.replace(log, f"{log}.moved")  # then as logrotate does: move the file, SIGUSR2 to reopen
        daemon.signal(signal.SIGUSR2)
        tail.wait_for(b"n %d\n" % (first + 450))
    finally:
        assert tail.interrupt() == 0
    numbers = [int(n) for n in re.findall(rb"n (\d+)\n", tail.seen)]
    assert numbers[:450] == list(range(first, first + 450))  # every line once, in order
    last = ctl(daemon, "tail", "-n", "3", "counter")
    assert last.returncode == 0 and len(out(last).splitlines()) == 3


def test_tail_names_one_instance_of_several_and_the_daemons_own_log(daemon: Daemon) -> None:
    several = ctl(daemon, "tail", "web")
    assert several.returncode == 1 and "web:0 to web:1" in err(several)
    discarded = ctl(daemon, "tail", "web:1")
    assert discarded.returncode == 1 and "discarded" in err(discarded)
    main = ctl(daemon, "maintail", "-n", "5")
    assert main.returncode == 0 and len(out(main).splitlines()) == 5 and "taskmasterd" in out(main)


def test_events_follow_a_kill_and_the_restart(daemon: Daemon) -> None:
    wait_for(lambda: running(daemon, "always"), what="always running")
    pid = pids(daemon, "always")[0]
    events = Following(daemon, "events", "-f", "-n", "1")
    as_json = Following(daemon, "events", "-f", "-n", "1", "--json")
    try:
        events.wait_for(b"\n")  # the last event so far: each is subscribed (taken before that one)
        as_json.wait_for(b"\n")
        os.kill(pid, signal.SIGKILL)
        events.wait_for(b"always[0] RUNNING -> EXITED (killed by SIGKILL (unexpected))\n")
        events.wait_for(b"always[0] EXITED -> STARTING (autorestart=always)\n")
        as_json.wait_for(b'"new":"STARTING"')
    finally:
        assert events.interrupt() == 0
        as_json.interrupt()
    records = [json.loads(line) for line in as_json.seen.splitlines()]
    exited = next(r for r in records if r["job"] == "always" and r["new"] == "EXITED")
    assert exited["kind"] == "state" and exited["old"] == "RUNNING" and exited["instance"] == 0
    assert abs(exited["time"] - time.time()) < 60
    recent = ctl(daemon, "events", "-n", "2")
    assert recent.returncode == 0 and len(out(recent).splitlines()) == 2


def test_status_exits_3_when_a_job_is_not_as_wanted(daemon: Daemon) -> None:
    wait_for(lambda: daemon.instances("doomed")[0]["state"] == "FATAL", what="doomed FATAL")
    assert ctl(daemon, "status", "doomed").returncode == 3
    assert ctl(daemon, "status").returncode == 3  # without names: any job
    assert ctl(daemon, "status", "nginx", "web").returncode == 0
    stopped_by_hand = ctl(daemon, "stop", "nginx")
    assert stopped_by_hand.returncode == 0 and ctl(daemon, "status", "nginx").returncode == 0  # not wanted
    assert ctl(daemon, "start", "nginx").returncode == 0


def test_an_invalid_file_reads_the_same_in_list_status_and_start(daemon: Daemon) -> None:
    assert "broken   INVALID" in out(ctl(daemon, "list"))
    status = ctl(daemon, "status", "broken")
    assert status.returncode == 3
    block = out(status).splitlines()
    assert block[0] == "× broken - INVALID"
    errors = [line for line in block if line.strip().startswith("Error: ")]  # a line per problem
    assert len(errors) == 2 and '"numprocs"' in errors[0] and '"autostart"' in errors[1]
    table = ctl(daemon, "status", "broken", "nginx")
    rows = out(table).splitlines()[1:]
    assert len(rows) == 3 and rows[0].split()[:3] == ["broken", "-", "INVALID"]  # a row per problem
    assert '"numprocs"' in rows[0] and '"autostart"' in rows[1] and rows[1].startswith(" ")
    started = ctl(daemon, "start", "broken")
    assert started.returncode == 1 and 'job "broken" is not loaded: its file is invalid' in err(started)
    everything = ctl(daemon, "stop", "all", "--nowait")  # `all` leaves alone a file that never loaded
    assert "broken" not in err(everything)
    assert ctl(daemon, "start", "all").returncode == 1  # doomed cannot start
    assert running(daemon, "nginx") and running(daemon, "web")


def test_completion_scripts_offer_commands_and_job_names(daemon: Daemon) -> None:
    bin_dir = str(Path(sys.executable).parent)
    script = out(ctl(None, "completion", "bash"))
    probe = ("source /dev/stdin; COMP_WORDS=(taskmasterctl --port %d stop ngi); COMP_CWORD=4; _taskmasterctl; "
             "echo \"${COMPREPLY[*]}\"; COMP_WORDS=(taskmasterctl sta); COMP_CWORD=1; _taskmasterctl; "
             "echo \"${COMPREPLY[*]}\"" % daemon.port)
    result = subprocess.run(["bash", "-c", probe], input=script.encode(), capture_output=True, timeout=30,
                            env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}, cwd=ROOT)
    assert result.stdout.decode().splitlines() == ["nginx", "status start"], result.stderr
    zsh = out(ctl(None, "completion", "zsh"))
    assert zsh.startswith("#compdef taskmasterctl") and "'tail:" in zsh
    if shutil.which("zsh"):  # not on every machine: the syntax, at least, where it is
        assert subprocess.run(["zsh", "-n"], input=zsh.encode(), capture_output=True, timeout=30).returncode == 0


def test_shutdown_stops_every_job_replies_and_exits_0(tmp_path: Path) -> None:
    with Daemon(tmp_path, jobs={"one": SLEEPER, "two": {**SLEEPER, "numprocs": 2}}) as daemon:
        children = [inst["pid"] for job in ("one", "two") for inst in daemon.instances(job)]
        result = ctl(daemon, "shutdown")
        assert result.returncode == 0 and out(result) == "shutdown: success\n", err(result)
        assert not any(pid_alive(pid) for pid in children)  # stopped before the reply
        assert daemon.proc.wait(20) == 0
    assert "Traceback" not in daemon.stderr()
