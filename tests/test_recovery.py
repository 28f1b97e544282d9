"""What the real daemon leaves behind: after SIGKILL (the next daemon cleans up) and after escapes
(double-forks and setsid, reparented to the daemon as child subreaper)."""
import os
import signal
import subprocess
import time

import pytest

from .support.daemon import Daemon, pid_alive, wait_for
from .support.processes import comm, environment_of, marked, new_mark


def sleeper(mark, **fields):
    return {"cmd": "sleep 300", "starttime": 0, "stdout": None, "stderr": None, "env": mark, **fields}


MODES = ["cgroup2", "process-group"]
both_modes = pytest.mark.parametrize("mode", MODES)


def contained(root, jobs, mode, **kwargs):
    """A daemon with this containment (`--containment`)."""
    return Daemon(root, jobs, args=["--containment", mode], **kwargs)


def kill_daemon(daemon):
    daemon.proc.send_signal(signal.SIGKILL)
    daemon.proc.wait(10)


@both_modes
def test_children_spawned_just_before_a_sigkill_are_stopped_by_the_next_daemon(tmp_path, mode):
    mark = new_mark()
    first = contained(tmp_path, {"late": sleeper(mark, numprocs=5, autostart=False)}, mode).start()
    try:
        assert first.request("start", "late", nowait=True)["response"] == "success"
        wait_for(lambda: len(marked(mark)) == 5, 10, what="five instances")
        kill_daemon(first)  # well within any flush delay: the journal must already hold them
    finally:
        first.stop()
    assert len(marked(mark)) == 5
    (tmp_path / "jobs" / "late.tm.json").unlink()
    with contained(tmp_path, {}, mode):
        assert not marked(mark)  # gone before READY=1


@both_modes
def test_a_group_whose_leader_died_while_the_daemon_was_down_is_found(tmp_path, mode):
    mark = new_mark()
    job = {"cmd": ["sh", "-c", "sleep 300 & sleep 300 & wait"], "starttime": 0, "env": mark}
    first = contained(tmp_path, {"g": job}, mode).start()
    try:
        leader = first.instances("g")[0]["pid"]
        wait_for(lambda: len(marked(mark)) == 3, 10, what="leader and two children")
        kill_daemon(first)
    finally:
        first.stop()
    os.kill(leader, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{leader}"), 10, what="the leader reaped by init")
    assert len(marked(mark)) == 2  # its group lives on
    (tmp_path / "jobs" / "g.tm.json").unlink()
    with contained(tmp_path, {}, mode):
        assert not marked(mark)


ESCAPES = ("(setsid sleep 301 &); "  # double fork + setsid: reparented to the daemon at once
           "python3 -c 'import os; os.setsid(); os.execvp(\"sleep\", [\"sleep\", \"302\"])' & "  # setsid, parent alive
           "exec sleep 300")


def escapes_of(mark, job, leader):
    return [pid for pid in marked(mark) if environment_of(pid).get("TASKMASTER_JOB") == job and _sid(pid) != leader]


def _sid(pid):
    try:
        return os.getsid(pid)
    except ProcessLookupError:
        return None


@both_modes
def test_escaped_grandchildren_are_stopped_with_their_instance_and_at_shutdown(tmp_path, mode):
    mark = new_mark()
    job = {"cmd": ["sh", "-c", ESCAPES], "starttime": 0, "stoptime": 2, "env": mark}
    daemon = contained(tmp_path, {"esc": job, "other": {**job, "env": {**mark, "OTHER": "1"}}}, mode).start()
    try:
        leader = daemon.instances("esc")[0]["pid"]
        escaped = wait_for(lambda: len(escapes_of(mark, "esc", leader)) == 2 and escapes_of(mark, "esc", leader),
                           10, what="two escapes of esc")
        # the other job's three processes, once its shells have forked and exec'd (none in between)
        others = wait_for(lambda: len(found := [pid for pid in marked(mark) if environment_of(pid).get("OTHER") == "1"
                                                and comm(pid) == "sleep"]) == 3 and found, 10, what="other's processes")
        assert daemon.request("stop", "esc")["response"] == "success"
        wait_for(lambda: not any(pid in marked(mark) for pid in escaped), 5, what="escapes of esc stopped")
        assert all(pid in marked(mark) for pid in others)  # the other job's processes, escapes included, are untouched
    finally:
        assert daemon.stop() == 0
    assert not marked(mark)  # shutdown stopped the other job's escapes too


@both_modes
def test_the_clean_up_of_a_run_that_ended_spares_the_escapes_of_the_next_run(tmp_path, mode):
    """Run 1 exits and is restarted at once; run 2 double-forks a helper. The escape sweeps still
    scheduled for run 1 (50 ms and 500 ms after its end) must not take run 2's helper for run 1's."""
    mark = new_mark()
    flag = tmp_path / "ran-once"
    script = (f"if [ ! -e {flag} ]; then touch {flag}; exit 1; fi; "
              "(setsid sleep 304 &); exec sleep 300")
    job = {"cmd": ["sh", "-c", script], "starttime": 0, "autorestart": "always", "env": mark}
    with contained(tmp_path, {"again": job}, mode) as daemon:
        leader = wait_for(lambda: flag.exists() and (daemon.instances("again")[0]["pid"] or 0) > 0
                          and daemon.instances("again")[0]["restarts"] == 1 and daemon.instances("again")[0]["pid"],
                          10, what="the second run")
        helper = wait_for(lambda: escapes_of(mark, "again", leader), 10, what="the second run's helper")
        time.sleep(1.0)  # past both sweeps scheduled for the first run
        assert all(pid in marked(mark) for pid in helper), "the first run's clean-up killed the second run's helper"
        assert daemon.instances("again")[0]["state"] == "RUNNING"


@both_modes
def test_escapes_of_a_killed_daemon_are_stopped_by_the_next_one(tmp_path, mode):
    mark = new_mark()
    # The job's own env cannot replace the daemon's run id (a forged one would hide its escapes).
    job = {"cmd": ["sh", "-c", ESCAPES], "starttime": 0, "env": {**mark, "TASKMASTER_RUN": "forged"}}
    # A process outside the daemon that merely looks like a job's: the next daemon leaves it alone.
    bystander = subprocess.Popen(["sleep", "300"], env={**os.environ, "TASKMASTER_JOB": "esc", "TASKMASTER_INSTANCE": "0",
                                                         "TASKMASTER_RUN": "0123456789abcdef"}, start_new_session=True)
    try:
        first = contained(tmp_path, {"esc": job}, mode).start()
        try:
            leader = first.instances("esc")[0]["pid"]
            escaped = wait_for(lambda: len(escapes_of(mark, "esc", leader)) == 2 and escapes_of(mark, "esc", leader),
                               10, what="two escapes")
            kill_daemon(first)  # its escapes go to init, out of any journaled group
        finally:
            first.stop()
        assert all(pid in marked(mark) for pid in escaped)
        (tmp_path / "jobs" / "esc.tm.json").unlink()
        with contained(tmp_path, {}, mode) as second:
            assert not any(pid in marked(mark) for pid in [leader, *escaped])  # gone before READY=1
            assert bystander.poll() is None
            # the leader's group and the two escapes (the log is written up to 10 ms late)
            warning = "stopping 3 process group(s)" if mode == "process-group" else "stopping 1 cgroup(s)"
            wait_for(lambda: warning in second.stderr(), 5, what="the warning")
    finally:
        bystander.kill()
        bystander.wait()


FAKETIME_LIBRARIES = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                      "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1")
FAKETIME = next((path for path in FAKETIME_LIBRARIES if os.path.exists(path)), None)


def stepped_clock(step_file):
    """A daemon whose wall clock is that of `step_file` (libfaketime: "+400d", "-400d", "+0"),
    read again every second; its monotonic clock stays the real one, as in a real step."""
    return {"LD_PRELOAD": FAKETIME, "FAKETIME_TIMESTAMP_FILE": str(step_file), "FAKETIME_CACHE_DURATION": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@pytest.mark.skipif(FAKETIME is None, reason="libfaketime (Debian package faketime) is not installed")
def test_a_wall_clock_step_either_way_hides_no_leftover_and_delays_no_timer(tmp_path):
    mark = new_mark()
    step = tmp_path / "clock"
    step.write_text("+0\n")
    jobs = {"s": sleeper(mark, numprocs=3, starttime=2)}
    first = Daemon(tmp_path, jobs, env=stepped_clock(step)).start()
    try:
        wait_for(lambda: len(marked(mark)) == 3, 10, what="three instances")
        step.write_text("-400d\n")  # back, as after a dead RTC battery, while they start
        wait_for(lambda: all(i["state"] == "RUNNING" for i in first.instances("s")), 15, what="starttime passed")
        spawned_before = set(marked(mark))
        kill_daemon(first)
    finally:
        first.stop()
    for when in ("+400d", "-400d"):  # the next daemon's clock is a year ahead, then behind
        step.write_text(when + "\n")
        later = Daemon(tmp_path, jobs, env=stepped_clock(step)).start()
        try:
            assert not spawned_before & set(marked(mark))  # stopped before READY=1
            assert str(time.gmtime(time.time() + (400 if when == "+400d" else -400) * 86400).tm_year) \
                in later.stderr().splitlines()[-1]  # its clock was stepped indeed
            wait_for(lambda: len(marked(mark)) == 3, 10, what="its own three")
            spawned_before = set(marked(mark))
            kill_daemon(later)
        finally:
            later.stop()
    (tmp_path / "jobs" / "s.tm.json").unlink()
    with Daemon(tmp_path, {}):
        assert not marked(mark)


def test_a_second_daemon_on_the_same_state_directory_exits_before_touching_anything(tmp_path):
    mark = new_mark()
    with Daemon(tmp_path, {"live": sleeper(mark)}) as first:
        pid = first.instances("live")[0]["pid"]
        second = Daemon(tmp_path)  # same state directory, another port
        second.start(wait=False)
        try:
            assert second.proc.wait(20) == 1
        finally:
            second.stop()
        state = os.path.abspath(tmp_path / "state")
        assert f"state directory {state} is in use by pid {first.proc.pid}" in second.stderr()
        assert first.instances("live")[0]["pid"] == pid and pid in marked(mark)
        assert first.instances("live")[0]["state"] == "RUNNING"


def _take_pid(pid, argv):
    """Start `argv` as process `pid` (free again), through ns_last_pid; None when another process
    of the machine took the pid first each time."""
    for _ in range(200):
        with open("/proc/sys/kernel/ns_last_pid", "w") as last:
            last.write(str(pid - 1))
        proc = subprocess.Popen(argv, start_new_session=False)
        if proc.pid == pid:
            return proc
        proc.wait()
    return None


DAEMONIZER = ("import os, sys, time\n"
              "os.setsid()\n"
              "if os.fork() == 0:\n"
              "    os.execvp('sleep', ['sleep', '305'])\n"
              "os._exit(0)\n")


@both_modes
def test_recovery_never_touches_a_daemonizer_that_took_over_a_dead_leaders_pid(tmp_path, mode):
    """The journal lists group P; its leader dies while no daemon runs, and a classic daemonizer
    (setsid, fork, exit) then gets pid P: its worker lives in a group P whose leader is gone, like
    a leftover's members. It was never the daemon's, and the next daemon must leave it alone."""
    import sys
    mark = new_mark()
    first = contained(tmp_path, {"g": sleeper(mark)}, mode).start()
    try:
        leader = first.instances("g")[0]["pid"]
        kill_daemon(first)
    finally:
        first.stop()
    os.kill(leader, signal.SIGKILL)
    wait_for(lambda: not os.path.exists(f"/proc/{leader}"), 10, what="the leader reaped by init")
    daemonizer = _take_pid(leader, [sys.executable, "-c", DAEMONIZER])
    if daemonizer is None:
        pytest.skip("the machine kept taking the pid first")
    daemonizer.wait(10)
    worker = wait_for(lambda: [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == leader],
                      10, what="the daemonizer's worker")[0]
    try:
        (tmp_path / "jobs" / "g.tm.json").unlink()
        with contained(tmp_path, {}, mode):
            time.sleep(0.2)
            assert pid_alive(worker) and _pgid(worker) == leader, "the daemonizer's worker was killed as a leftover"
    finally:
        os.kill(worker, signal.SIGKILL)


def _pgid(pid):
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None
