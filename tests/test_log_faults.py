"""Log capture on a bad day: a full disk, a deleted or truncated file, rotation settings that would
stall the loop, and a symlink planted where a log file goes."""
import asyncio
import os
import re
import shutil
import stat
import subprocess
import time

import pytest

from taskmasterd.states import State

from .support.daemon import Daemon, pid_alive, wait_for
from .support.supervised import eventually, reach, run, supervised

S = State
CHATTY = ["sh", "-c", "while :; do echo 0123456789abcdef0123456789abcdef0123456789abcdef; done"]
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, chown)")


@pytest.fixture
def small_tmpfs(tmp_path):
    where = tmp_path / "full"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@needs_root
def test_a_full_disk_drops_output_but_never_kills_the_job(tmp_path, small_tmpfs):
    ballast = small_tmpfs / "ballast"

    async def scenario():
        job = {"cmd": CHATTY, "starttime": 0, "stdout": str(small_tmpfs / "chatty.out"), "logmaxbytes": 0}
        async with supervised(tmp_path, {"chatty": job}) as sup:
            inst = sup.jobs["chatty"].instances[0]
            pid = inst.child.pid
            await eventually(lambda: inst.status(0).get("dropped", 0) > 100_000, 20, "bytes dropped on ENOSPC")
            assert inst.state is S.RUNNING and inst.child.pid == pid and inst.restarts == 0
            assert "No space left" in (inst.logs[0].failing or "")
            # make room: writing resumes by itself
            os.truncate(small_tmpfs / "chatty.out", 0)
            await eventually(lambda: inst.logs[0].failing is None, 10, "writes accepted again")
            await eventually(lambda: (small_tmpfs / "chatty.out").stat().st_size > 0, 10, "the log grows again")
            assert inst.child.pid == pid
            ballast.write_bytes(b"")

    run(scenario())


def test_a_deleted_log_is_created_again_and_copytruncate_leaves_no_hole(tmp_path):
    async def scenario():
        job = {"cmd": ["sh", "-c", "while :; do echo line; sleep 0.01; done"], "starttime": 0}
        async with supervised(tmp_path, {"t": job}) as sup:
            out = tmp_path / "logs" / "t.0.out"
            await eventually(lambda: out.exists() and out.stat().st_size > 100, 10, "some output")
            out.unlink()
            await eventually(lambda: out.exists() and out.stat().st_size > 0, 10, "the log created again")
            await asyncio.sleep(0.3)
            os.truncate(out, 0)  # what logrotate's copytruncate does
            await asyncio.sleep(0.3)
            data = out.read_bytes()
            assert data and not data.startswith(b"\0") and set(data.split(b"\n")) <= {b"line", b""}
            assert sup.jobs["t"].instances[0].restarts == 0

    run(scenario())


def test_tiny_rotation_with_many_backups_never_stalls_the_control_port(tmp_path):
    job = {"cmd": CHATTY, "starttime": 0, "logmaxbytes": 1024, "logbackups": 1000}
    with Daemon(tmp_path, {"rot": job, "idle": {"cmd": "sleep 300", "starttime": 0}}) as daemon:
        time.sleep(1)  # let rotations pile up
        worst = 0.0
        for _ in range(30):
            began = time.perf_counter()
            daemon.request("status", "idle")
            worst = max(worst, time.perf_counter() - began)
            time.sleep(0.02)
        assert daemon.request("stop", "rot")["response"] == "success"
        backups = wait_for(lambda: settled_listing(tmp_path / "logs", "rot.0.out.*"), 20, what="rotation done")
        assert len(backups) > 10 and all(f.stat().st_size <= 1024 for f in backups)
        assert worst < 0.5, f"status took {worst * 1000:.0f} ms while a job rotated its log"


def settled_listing(directory, pattern):
    """The files once they stopped changing: after a stop, the pipe's last megabyte is still being
    drained (and rotated)."""
    before = sorted(directory.glob(pattern))
    time.sleep(0.2)
    return before == sorted(directory.glob(pattern)) and before


@needs_root
def test_a_symlink_planted_where_a_log_goes_is_never_followed(tmp_path):
    target = tmp_path / "precious"
    target.write_text("root's file\n")
    os.chmod(target, 0o600)
    users_dir = tmp_path / "home"
    users_dir.mkdir()
    shutil.chown(users_dir, "nobody")
    (users_dir / "app.log").symlink_to(target)
    linked_dir = tmp_path / "linked"
    linked_dir.symlink_to(tmp_path)
    os.lchown(linked_dir, 65534, 65534)  # a directory link owned by a lesser user

    async def scenario():
        jobs = {"evil": {"cmd": "echo pwned", "starttime": 0, "user": "nobody", "stdout": str(users_dir / "app.log")},
                "via": {"cmd": "echo pwned", "starttime": 0, "stdout": str(linked_dir / "precious")}}
        async with supervised(tmp_path / "d", jobs) as sup:
            for name, why in (("evil", "symbolic link: not followed"), ("via", "owned by uid 65534")):
                inst = sup.jobs[name].instances[0]
                await reach(inst, S.FATAL)
                assert "unsafe log file" in inst.description and why in inst.description, inst.description
        assert target.read_text() == "root's file\n" and stat.S_IMODE(target.stat().st_mode) == 0o600

    run(scenario())


def test_file_modes_log_0640_pushed_job_0640_state_0600(tmp_path):
    async def scenario():
        async with supervised(tmp_path, {"m": {"cmd": "echo hi", "starttime": 0, "autorestart": "never"}}) as sup:
            assert (await sup.push("pushed", b'{"cmd": "sleep 300", "autostart": false}')).response == "success"
            mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
            await eventually(lambda: (tmp_path / "logs" / "m.0.out").exists(), what="created by its first byte")
            assert mode(tmp_path / "logs" / "m.0.out") & 0o777 == 0o640 & ~current_umask()
            assert mode(tmp_path / "jobs" / "pushed.tm.json") == 0o640
            assert mode(tmp_path / "state" / "children.json") == 0o600
            assert mode(tmp_path / "state") == 0o700 & ~current_umask()

    run(scenario())


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_children_get_no_daemon_plumbing_and_the_original_descriptor_limit(tmp_path):
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft = min(1024, hard // 2)  # below the hard limit, so the daemon raises its own

    class LowLimitDaemon(Daemon):
        def command(self) -> list[str]:
            return ["prlimit", f"--nofile={soft}:{hard}", "--", *super().command()]

    # The limit is set from outside right after the exec (documented): read once the spawn is done.
    job = {"cmd": ["sh", "-c", "env; sleep 0.5; grep 'open files' /proc/self/limits"], "starttime": 0,
           "autorestart": "never"}
    with LowLimitDaemon(tmp_path, {"env": job}, env={"LISTEN_FDS": "3", "WATCHDOG_USEC": "1000"}) as daemon:
        daemon_limit = open(f"/proc/{daemon.proc.pid}/limits").read()
        assert re.search(rf"Max open files\s+{hard}\s", daemon_limit), daemon_limit
        out = tmp_path / "logs" / "env.0.out"
        deadline = time.monotonic() + 10
        while "open files" not in (out.read_text() if out.exists() else "") and time.monotonic() < deadline:
            time.sleep(0.05)
        text = out.read_text()
        assert daemon.proc is not None and pid_alive(daemon.proc.pid)
    for variable in ("NOTIFY_SOCKET=", "LISTEN_FDS=", "WATCHDOG_USEC="):
        assert variable not in text
    assert "TASKMASTER_JOB=env" in text
    limit = next(line for line in text.splitlines() if line.startswith("Max open files")).split()
    assert int(limit[3]) == soft, f"the child got the daemon's raised limit: {limit}"
