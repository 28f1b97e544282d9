"""Container mode: taskmasterd as PID 1 of a PID namespace of its own (`unshare --pid --fork
--mount-proc`), as in a container (Docker itself is not on the test machines): it reaps every
zombie of the namespace, writes the jobs' output with a prefix to its own stdout/stderr, exits
with an essential job's exit code after stopping the others, and exits 0 or 1 once no job can
run anymore."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from typing import Callable

import psutil
import pytest

from taskmasterd.container.console import Console, ConsoleStream
from taskmasterd.container.exitwatch import JobView, decide
from taskmasterd.observe.daemonlog import LogWriter

from .support.daemon import Daemon, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="a PID namespace needs root and unshare(1)")
SH = "/bin/sh"


class ContainerDaemon(Daemon):
    """The daemon as PID 1 of a new PID namespace (with its own /proc): container mode implied."""

    def __init__(self, root, jobs, pid1: bool = True, args: list[str] | None = None):
        super().__init__(root, jobs, args=args)
        self.pid1 = pid1
        self.stdout_path = root / "daemon.stdout"

    def command(self) -> list[str]:
        prefix = ["unshare", "--pid", "--fork", "--mount-proc"] if self.pid1 else []
        return [*prefix, *super().command()]

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def inner(self) -> psutil.Process:
        """The daemon itself (PID 1 inside), as the host sees it."""
        assert self.proc is not None
        if not self.pid1:
            return psutil.Process(self.proc.pid)
        return wait_for(lambda: (psutil.Process(self.proc.pid).children() or [None])[0], what="the namespace's init")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM to the daemon itself: unshare(1) does not pass it on."""
        if self.pid1 and self.proc is not None and self.proc.poll() is None:
            try:
                for child in psutil.Process(self.proc.pid).children():
                    child.send_signal(signal.SIGTERM)
            except psutil.NoSuchProcess:
                pass
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise
        return super().stop(timeout)

    def wait_exit(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


def _descendants(process: psutil.Process, matches: Callable[[psutil.Process], bool]) -> list[psutil.Process]:
    """Those that match, as they are read: one that ends meanwhile is not there."""
    found = []
    for child in process.children(recursive=True):
        try:
            if matches(child):
                found.append(child)
        except psutil.NoSuchProcess:
            pass
    return found


def _zombies(process: psutil.Process) -> list[psutil.Process]:
    return _descendants(process, lambda child: child.status() == psutil.STATUS_ZOMBIE)


# A job that leaves zombies to init: children that exit at once under a parent that never waits
# (they are reparented when it ends), and an escaped grandchild in a session of its own.
ZOMBIE_MAKER = [sys.executable, "-c", (
    "import os, subprocess\n"
    "for _ in range(3):\n"
    "    if os.fork() == 0:\n"
    "        os._exit(0)\n"
    "subprocess.Popen(['setsid', 'sleep', '2'], start_new_session=True)\n"
    "os.execvp('sleep', ['sleep', '2'])\n")]


def test_pid1_reaps_zombies_prefixes_output_and_exits_with_the_essential_jobs_code(tmp_path):
    go = tmp_path / "go"
    jobs = {
        "main": {"cmd": [SH, "-c", f"echo main up; while [ ! -e {go} ]; do sleep 0.05; done; "
                                   "echo main done >&2; exit 3"],
                 "essential": True, "autorestart": "never", "starttime": 0},
        "web": {"cmd": [SH, "-c", "trap 'echo web got TERM; exit 0' TERM; echo web serving; "
                                  "while :; do sleep 0.1; done"], "starttime": 0, "stoptime": 10},
        "zombies": {"cmd": ZOMBIE_MAKER, "starttime": 0, "autorestart": "never"},
        "filed": {"cmd": [SH, "-c", "echo to my own file; sleep 300"], "starttime": 0, "stdout": "filed.log"},
    }
    daemon = ContainerDaemon(tmp_path, jobs)
    daemon.start()
    try:
        init = daemon.inner()
        wait_for(lambda: _zombies(init), timeout=10, what="the zombies made")
        wait_for(lambda: "zombies[0]: RUNNING -> EXITED" in daemon.stderr(), what="the zombie maker's exit")
        wait_for(lambda: not _descendants(init, lambda p: p.name() == "sleep" and p.ppid() == init.pid),
                 what="the escaped sleeper's end")
        wait_for(lambda: not _zombies(init), timeout=10, what="every zombie reaped by PID 1")
        wait_for(lambda: "web[0] | web serving" in daemon.stdout(), what="web's prefixed output")
        go.touch()
        assert daemon.wait_exit() == 3
    finally:
        daemon.stop()
    out, err = daemon.stdout(), daemon.stderr()
    assert "main[0] | main up\n" in out and "web[0] | web got TERM\n" in out
    assert "main[0] | main done\n" in err  # a job's stderr on the daemon's stderr
    assert "essential job main ended" in err and "exiting with code 3" in err
    assert "web[0]: RUNNING -> STOPPING" in err and "web[0]: STOPPING -> STOPPED" in err
    assert "to my own file" not in out and "to my own file" in (tmp_path / "logs" / "filed.log").read_text()
    assert "\x1b[" not in out  # no colour when stdout is not a terminal


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_stops_every_job_within_its_stoptime_and_exits_0(tmp_path, sig):
    jobs = {"web": {"cmd": [SH, "-c", "trap 'echo bye; exit 0' TERM; while :; do sleep 0.1; done"], "starttime": 0},
            "stubborn": {"cmd": [SH, "-c", "trap '' TERM; echo up; while :; do sleep 0.1; done"],
                         "starttime": 0, "stoptime": 1}}
    daemon = ContainerDaemon(tmp_path, jobs)
    daemon.start()
    try:
        wait_for(lambda: "stubborn[0] | up" in daemon.stdout(), what="the jobs up")
        daemon.inner().send_signal(sig)
        assert daemon.wait_exit(timeout=20) == 0
    finally:
        daemon.stop()
    assert "web[0] | bye" in daemon.stdout()
    assert "stubborn[0]: STOPPING -> STOPPED (killed by SIGKILL)" in daemon.stderr()


@pytest.mark.parametrize("second_exit, expected", [(0, 0), (2, 1)])
def test_exits_once_no_job_can_run_anymore(tmp_path, second_exit, expected):
    """--container without being PID 1: one-shot jobs end; the daemon exits 0, or 1 if one failed."""
    jobs = {"a": {"cmd": [SH, "-c", "exit 0"], "starttime": 0, "autorestart": "never"},
            "b": {"cmd": [SH, "-c", f"sleep 0.5; exit {second_exit}"], "starttime": 0, "autorestart": "unexpected",
                  "exitcodes": [0, 1]}}
    if second_exit:
        jobs["b"]["autorestart"] = "never"
    daemon = ContainerDaemon(tmp_path, jobs, pid1=False, args=["--container"])
    daemon.start()
    try:
        assert daemon.wait_exit() == expected
    finally:
        daemon.stop()
    assert "no job can run anymore" in daemon.stderr()


def test_a_scheduled_job_keeps_the_container_up(tmp_path):
    jobs = {"once": {"cmd": [SH, "-c", "exit 0"], "starttime": 0, "autorestart": "never"},
            "tick": {"cmd": [SH, "-c", "echo tick"], "schedule": "* * * * * *"}}
    daemon = ContainerDaemon(tmp_path, jobs, pid1=False, args=["--container"])
    with daemon:
        wait_for(lambda: daemon.stdout().count("tick[0] | tick") >= 2, what="two runs")
        assert daemon.proc.poll() is None


def test_container_cannot_be_a_daemon(tmp_path):
    result = subprocess.run([sys.executable, "-m", "taskmasterd", "--container", "--daemon", "--jobs-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1 and "cannot be combined with --daemon" in result.stderr


# --- the pure parts ------------------------------------------------------------------------------


def _inst(state, exitcode=None, sig=None, index=0):
    return {"index": index, "state": state, "exitcode": exitcode, "signal": sig, "description": state.lower()}


def _job(name, *instances, essential=False, scheduled=False, exitcodes=frozenset({0})):
    return JobView(name, essential, scheduled, exitcodes, list(instances))


def test_decide():
    running = _job("web", _inst("RUNNING"))
    assert decide([_job("main", _inst("EXITED", 3), essential=True), running])[0] == 3
    assert decide([_job("main", _inst("EXITED", None, 9), essential=True), running])[0] == 137
    assert decide([_job("main", _inst("FATAL"), essential=True), running])[0] == 1
    # several instances: not before all have ended, unless one is FATAL; the failed one's code
    assert decide([_job("main", _inst("EXITED", 0), _inst("RUNNING", index=1), essential=True), running]) is None
    assert decide([_job("main", _inst("EXITED", 0), _inst("EXITED", 4, index=1), essential=True)])[0] == 4
    assert decide([_job("main", _inst("RUNNING"), _inst("FATAL", 5, index=1), essential=True)])[0] == 5
    # nothing can run anymore: 0, or 1 when a job failed; not while something runs or is scheduled
    assert decide([_job("a", _inst("EXITED", 0)), _job("b", _inst("STOPPED"))]) == (0, "no job can run anymore")
    assert decide([_job("a", _inst("EXITED", 2)), _job("b", _inst("EXITED", 0))])[0] == 1
    assert decide([_job("a", _inst("EXITED", 2), exitcodes=frozenset({2}))])[0] == 0
    assert decide([_job("a", _inst("EXITED", 0)), running]) is None
    assert decide([_job("a", _inst("EXITED", 0)), _job("t", _inst("EXITED", 0), scheduled=True)]) is None
    assert decide([_job("a", _inst("STOPPED"))]) is None  # nothing ran: nothing ended


def test_console_prefixes_lines_and_colours_only_when_asked(tmp_path):
    out = tmp_path / "out"
    with open(out, "w") as stream:
        import logging

        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(message)s"))
        writer = LogWriter(handler)
        writer.start()
        sink = ConsoleStream(writer, "web[0] | ")
        sink.write(memoryview(b"one\ntw"))
        sink.write(memoryview(b"o\nthree"))
        sink.close()  # a last line without its newline still goes out
        writer.stop()
    assert out.read_text() == "web[0] | one\nweb[0] | two\nweb[0] | three\n"
    console = Console(colour=True)
    try:
        from taskmasterd.jobfiles.jobfile import JobSpec

        spec = JobSpec(name="web", argv=("true",))
        assert console.stream_for(spec, "stdout", 1)._prefix.startswith("\x1b[")
        assert console.stream_for(JobSpec(name="web", argv=("true",), stdout="web.log"), "stdout", 0) is None
        assert console.stream_for(JobSpec(name="web", argv=("true",), stderr=None), "stderr", 0) is None
    finally:
        console.close()
