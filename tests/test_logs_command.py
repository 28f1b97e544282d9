"""`taskmasterctl logs`: every selected instance and stream in one stream, each line prefixed
`web[0] |`, merged as it arrives, across rotation, never a line split; patterns and `all`;
--since, --timestamps, --stderr/--stdout/--both; colour per job on a terminal; the daemon's log."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.control_fixtures import serving_daemon
from tests.support.ctl import Following, ctl, err, out
from tests.support.daemon import ROOT, Daemon, wait_for

# Numbered lines on both streams, in bursts; its stdout log rotates every ~1 KiB.
CHATTY = {"cmd": ["sh", "-c", "i=0; while :; do echo \"$TASKMASTER_JOB $TASKMASTER_INSTANCE out $i\"; "
                  "echo \"$TASKMASTER_JOB $TASKMASTER_INSTANCE err $i\" >&2; i=$((i+1)); sleep 0.005; done"],
          "starttime": 0, "logmaxbytes": 1024, "logbackups": 3}
# Early lines, then three seconds later the late ones.
LATE = {"cmd": ["sh", "-c", "echo early one; echo early two; sleep 3; echo late one; echo late two; exec sleep 1000"],
        "starttime": 0}
JOBS = {"web": {**CHATTY, "numprocs": 2}, "worker": CHATTY, "late": LATE,
        "quiet": {"cmd": ["sleep", "1000"], "starttime": 0, "stdout": None}}
LINE = re.compile(rb"^(web\[[01]\]|worker\[0\]) +\| (web|worker) ([01]) (out|err) (\d+)$")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    yield from serving_daemon(tmp_path_factory.mktemp("logs"), JOBS)


def has_lines(path: Path, count: int) -> bool:
    try:
        return path.read_bytes().count(b"\n") >= count
    except FileNotFoundError:  # not yet, or rotated away this instant
        return False


def test_logs_of_several_jobs_each_line_prefixed(daemon: Daemon) -> None:
    streams = [f"{name}.{stream}" for name in ("web.0", "web.1", "worker.0") for stream in ("out", "err")]
    wait_for(lambda: all(has_lines(daemon.log_dir / name, 3) for name in streams), what="three lines in each log")
    result = ctl(daemon, "logs", "web", "worker", "-n", "3")
    assert result.returncode == 0, err(result)
    lines = out(result).encode().splitlines()
    assert len(lines) == 3 * 2 * 3  # three instances, two streams, three lines each
    for line in lines:
        match = LINE.match(line)
        assert match, line
        label, job, index = match.group(1).decode(), match.group(2).decode(), match.group(3).decode()
        assert label == f"{job}[{index}]"
    only_err = out(ctl(daemon, "logs", "w*", "--stderr", "-n", "1")).splitlines()
    assert len(only_err) == 3 and all(" err " in line for line in only_err)
    only_out = out(ctl(daemon, "logs", "worker", "--stdout", "-n", "2")).splitlines()
    assert len(only_out) == 2 and all(" out " in line for line in only_out)
    quiet = ctl(daemon, "logs", "quiet")  # stdout discarded: its stderr only, no complaint
    assert quiet.returncode == 0 and err(quiet) == ""


def test_logs_follow_all_merges_every_stream_across_rotation_without_splitting_a_line(daemon: Daemon) -> None:
    follow = Following(daemon, "logs", "-f", "-n", "0", "all")
    try:
        follow.wait_for(b"worker 0 err ", timeout=10)
        first = int(re.search(rb"worker 0 err (\d+)", follow.seen).group(1))
        follow.wait_for(b"worker 0 err %d\n" % (first + 200), timeout=30)  # a few rotations (1 KiB each)
    finally:
        assert follow.interrupt() == 0
    lines = follow.seen.splitlines()[:-1]  # the last one may be cut by the interrupt
    assert len(lines) > 300
    seen: dict[tuple[bytes, bytes, bytes], list[int]] = {}
    for line in lines:
        if line.startswith(b"late"):
            continue
        match = LINE.match(line)
        assert match, line  # whole lines only, each with its prefix
        seen.setdefault(match.group(2, 3, 4), []).append(int(match.group(5)))
    assert len(seen) == 6  # web[0], web[1], worker[0], each out and err
    for numbers in seen.values():
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # nothing lost, in order
    assert (daemon.log_dir / "web.0.out.1").exists()  # it did rotate meanwhile


def test_since_and_timestamps(daemon: Daemon) -> None:
    wait_for(lambda: b"late two" in (daemon.log_dir / "late.0.out").read_bytes(), timeout=15, what="the late lines")
    everything = out(ctl(daemon, "logs", "late", "--stdout"))
    assert "early one" in everything and "late two" in everything
    recent = out(ctl(daemon, "logs", "late", "--stdout", "--since", "2s"))
    assert "late one" in recent and "early" not in recent, recent
    stamped = out(ctl(daemon, "logs", "late", "--stdout", "--timestamps")).splitlines()
    stamps = [time.mktime(time.strptime(line.split()[0][:19], "%Y-%m-%dT%H:%M:%S")) for line in stamped]
    assert len(stamps) == 4 and all(abs(stamp - time.time()) < 120 for stamp in stamps), stamped
    assert stamps[2] - stamps[1] >= 2  # three seconds between the early and the late lines
    assert stamped[0].endswith("late[0] | early one")


def test_logs_json_and_the_daemons_log(daemon: Daemon) -> None:
    wait_for(lambda: all(has_lines(daemon.log_dir / f"worker.0.{stream}", 2) for stream in ("out", "err")),
             what="two lines in each of worker's logs")
    document = json.loads(out(ctl(daemon, "logs", "worker", "-n", "2", "--json")))
    assert len(document["lines"]) == 4
    assert {(line["job"], line["instance"], line["stream"]) for line in document["lines"]} == {
        ("worker", 0, "stdout"), ("worker", 0, "stderr")}
    own = ctl(daemon, "logs", "--daemon", "-n", "3")
    assert own.returncode == 0 and len(out(own).splitlines()) == 3 and "taskmasterd" in out(own)
    assert ctl(daemon, "logs", "nope").returncode == 1


def test_logs_on_a_terminal_colour_each_job_and_escape_controls(daemon: Daemon) -> None:
    primary, secondary = os.openpty()
    try:
        result = subprocess.run([sys.executable, "-m", "taskmasterctl", "--port", str(daemon.port), "logs", "-n", "1",
                                 "web:0", "worker"], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=secondary,
                                stderr=subprocess.PIPE, timeout=60, env={**os.environ, "TERM": "xterm"})
        os.close(secondary)
        shown = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(primary)
    assert result.returncode == 0, result.stderr
    web = re.search(rb"\x1b\[([0-9;]+)mweb\[0\]", shown)
    worker = re.search(rb"\x1b\[([0-9;]+)mworker\[0\]", shown)
    assert web and worker and web.group(1) != worker.group(1), shown
