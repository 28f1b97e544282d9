"""Signals through pidfds (kernel/pidfd.py), with real processes."""
import os
import signal
import subprocess
import time

from taskmasterd.kernel import pidfd

from .support.daemon import pid_alive, wait_for


def test_a_signal_goes_only_where_the_check_holds_while_the_pidfd_is_open():
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert not pidfd.signal_if(proc.pid, signal.SIGKILL, lambda pid: False)
        assert proc.poll() is None
        assert pidfd.signal_if(proc.pid, signal.SIGKILL, lambda pid: pid == proc.pid)
        assert proc.wait(5) == -signal.SIGKILL
        assert not pidfd.signal_if(proc.pid, signal.SIGKILL, lambda pid: True)  # reaped: nothing to open
    finally:
        proc.kill()
        proc.wait()


def test_a_zombie_leaders_group_is_signalled_through_its_pidfd():
    """What Child._reap does before reaping: the leader has exited, its group lives on."""
    leader = subprocess.Popen(["sh", "-c", "sleep 30 & echo $!; exit 0"], stdout=subprocess.PIPE,
                              start_new_session=True, text=True)
    member = int(leader.stdout.readline())
    wait_for(lambda: open(f"/proc/{leader.pid}/stat").read().rpartition(")")[2].split()[0] == "Z", 5,
             what="the leader a zombie")
    assert pidfd.signal_child(leader.pid, signal.SIGKILL, group=True)
    wait_for(lambda: not pid_alive(member), 5, what="the member killed")
    leader.wait()
    assert not pidfd.signal_child(leader.pid, signal.SIGTERM)  # reaped now


def test_the_pid_a_pidfd_names():
    fd = os.pidfd_open(os.getpid())
    try:
        assert pidfd.pidfd_pid(fd) == os.getpid() and pidfd.alive(fd)
    finally:
        os.close(fd)
    proc = subprocess.Popen(["true"])
    fd = os.pidfd_open(proc.pid)
    try:
        proc.wait()
        time.sleep(0.01)
        assert not pidfd.alive(fd) and pidfd.pidfd_pid(fd) is None  # exited and reaped
    finally:
        os.close(fd)
