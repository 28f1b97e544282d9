"""Signals through pidfds: a process handle the kernel never gives to another process.

A pid (or a process group number) read from /proc, a journal or cgroup.procs may be recycled by
the time the signal goes: the kernel hands the number to the next process once the old one is
reaped. A pidfd names the process itself, so a signal sent through it reaches that process or
nobody. What has to be checked about the process (that it is in our cgroup, carries our mark,
leads the recorded group) is read from /proc while its pidfd is open, and the pidfd is looked
at again after the read: still alive then, the /proc entry was its own.
"""
from __future__ import annotations

import errno
import os
import select
import signal
from typing import Callable

PIDFD_SIGNAL_PROCESS_GROUP = 1 << 2  # Linux 6.9: the group the pidfd's process leads
_group_flag: bool | None = None  # whether the kernel knows it (None: not tried yet)


def open_pidfd(pid: int) -> int | None:
    """A pidfd of `pid` (close-on-exec), or None when there is no such process."""
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None
    except OSError as exc:
        if exc.errno == errno.EINVAL:  # not a process id
            return None
        raise


def alive(pidfd: int) -> bool:
    """Whether the pidfd's process has not exited (a pidfd turns readable at the exit)."""
    return not select.select([pidfd], [], [], 0)[0]


def send(pidfd: int, sig: int, group: bool = False, held: bool = False) -> bool:
    """`sig` to the pidfd's process, or with `group` to the process group it leads; False when
    it is gone. Without the group flag (kernels before 6.9), the group is signalled by number
    while its leader's pidfd shows it alive (the number is then still its group's), or, `held`,
    while its leader is our unreaped child (a zombie holds its number too)."""
    global _group_flag
    try:
        if not group:
            signal.pidfd_send_signal(pidfd, sig)
            return True
        if _group_flag is not False:
            try:
                signal.pidfd_send_signal(pidfd, sig, None, PIDFD_SIGNAL_PROCESS_GROUP)
                _group_flag = True
                return True
            except OSError as exc:
                if exc.errno != 22 or _group_flag:  # EINVAL: the kernel does not know the flag
                    raise
                _group_flag = False
        pid = pidfd_pid(pidfd)
        if pid is None or not (held or alive(pidfd)):
            return False
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False


def pidfd_pid(pidfd: int) -> int | None:
    """The pid a pidfd names, from /proc/self/fdinfo (None once the process was reaped)."""
    try:
        with open(f"/proc/self/fdinfo/{pidfd}", "rb") as src:
            for line in src:
                if line.startswith(b"Pid:"):
                    pid = int(line.split()[1])
                    return pid if pid > 0 else None
    except (OSError, ValueError):
        return None
    return None


def signal_if(pid: int, sig: int, check: Callable[[int], bool], group: bool = False) -> bool:
    """`sig` to `pid` (or the group it leads) only if `check(pid)` holds for the process that has
    that pid now, as seen while its pidfd is open; False when it was not sent."""
    pidfd = open_pidfd(pid)
    if pidfd is None:
        return False
    try:
        if not check(pid) or not alive(pidfd):
            return False
        return send(pidfd, sig, group)
    finally:
        os.close(pidfd)


def signal_child(pid: int, sig: int, group: bool = False) -> bool:
    """`sig` to our own child `pid` (or the group it leads), not yet reaped, so its pid is still
    its own; False when it is gone. Out of descriptors, by number: an unreaped child's is safe."""
    try:
        pidfd = open_pidfd(pid)
    except OSError as exc:
        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOMEM):
            raise
        try:
            (os.killpg if group else os.kill)(pid, sig)
            return True
        except ProcessLookupError:
            return False
    if pidfd is None:
        return False
    try:
        return send(pidfd, sig, group, held=True)
    finally:
        os.close(pidfd)
