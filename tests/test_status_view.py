"""`taskmasterctl status JOB` as a block like `systemctl status`, and `status` of many jobs as one
table with CPU % and memory, through the real taskmasterctl against a real daemon."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.control_fixtures import SLEEPER, serving_daemon
from tests.support.ctl import ctl, err, out
from tests.support.daemon import Daemon, wait_for

# Two instances, each a shell with a child; a few lines on each stream, one with escapes.
WEB = {"cmd": ["sh", "-c", "sleep 1000 & for i in 1 2 3 4 5; do echo out $i; echo err $i >&2; done; "
               "printf 'bad \\033]0;title\\007 \\342\\200\\256x\\n'; wait"], "numprocs": 2, "starttime": 0}
# Burns CPU: its CPU % must show.
BUSY = {"cmd": ["sh", "-c", "while :; do :; done"], "starttime": 0, "stdout": None, "stderr": None}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from serving_daemon(tmp_path_factory.mktemp("view"), {"web": WEB, "busy": BUSY, "idle": {**SLEEPER, "autostart": False}})


def test_status_of_one_job_is_a_block_like_systemctl_status(daemon: Daemon) -> None:
    wait_for(lambda: b"bad" in (daemon.log_dir / "web.1.out").read_bytes() if (daemon.log_dir / "web.1.out").exists()
             else False, what="web's output")
    result = ctl(daemon, "status", "web")
    shown = out(result)
    assert result.returncode == 0, err(result)
    instances = daemon.instances("web")
    assert shown.startswith("● web")
    assert f"File: {daemon.jobs_dir / 'web.tm.json'}" in shown and "Cmd: sh -c 'sleep 1000 &" in shown
    for inst in instances:
        assert f"web[{inst['index']}]" in shown and "RUNNING since" in shown
        assert f"{inst['pid']} sh -c" in shown  # the process tree: the leader, then its child
    assert shown.count("sleep 1000\n") == 2 and "└─" in shown
    assert "CPU" in shown and "Memory" in shown and "Restarts: 0" in shown and "Enabled" in shown
    assert all(f"Spawn: {inst['spawn']}" in shown for inst in instances)  # the id its log lines carry
    assert "out 1" in shown and "out 5" in shown and "err 5" in shown  # the last lines: 10 by default
    assert "\x1b" not in shown and "\u202e" not in shown and "\\x1b]0;title\\x07 \\u202ex" in shown
    fewer = out(ctl(daemon, "status", "web:1", "-n", "2"))
    assert "web[1]" in fewer and "web[0]" not in fewer and "out 4" not in fewer and "out 5" in fewer, fewer
    assert "bad" in fewer


def test_status_of_a_stopped_job_and_of_an_unknown_one(daemon: Daemon) -> None:
    idle = ctl(daemon, "status", "idle")
    assert idle.returncode == 0 and "STOPPED" in out(idle) and "Processes" not in out(idle)
    unknown = ctl(daemon, "status", "nope")
    assert unknown.returncode == 1 and out(unknown) == "" and 'job "nope" does not exist' in err(unknown)


def test_status_of_many_jobs_is_one_table_with_cpu_and_memory(daemon: Daemon) -> None:
    time.sleep(1)
    result = ctl(daemon, "status")
    lines = out(result).splitlines()
    assert lines[0].split() == ["JOB", "INSTANCE", "STATE", "PID", "UPTIME", "RESTARTS", "EXIT", "CPU%", "MEM", "INFO"]
    assert "spawn=" not in out(result)  # known to the table: not shown as an unknown field in every row
    busy = next(line.split() for line in lines if line.startswith("busy "))
    assert float(busy[7]) > 20, busy  # a whole loop of a shell: most of a core
    assert busy[8].endswith(("K", "M")), busy
    idle = next(line.split() for line in lines if line.startswith("idle "))
    assert idle[7] == "-" and idle[8] == "-"
    document = json.loads(out(ctl(daemon, "status", "busy", "web", "--json")))
    for job in document["data"]["jobs"]:
        for inst in job["instances"]:
            assert inst["memory_bytes"] > 0 and inst["cpu_seconds"] >= 0 and inst["tasks"] >= 1, inst


def test_status_of_one_job_answers_quickly(daemon: Daemon) -> None:
    took = []
    for _ in range(5):
        began = time.perf_counter()
        assert ctl(daemon, "status", "web").returncode == 0
        took.append(time.perf_counter() - began)
    assert min(took) < 1.0, took  # the budget (50 ms on a quiet machine) is in bench/bench_operator.py
