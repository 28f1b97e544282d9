"""A pid file held with an exclusive flock for the daemon's whole life.

The lock, not the file's existence, says a daemon is running: a stale file left by a crash never
blocks a start, and two daemons can never share one pid file. The file is opened like a log
(safepath): not through a symlink at its end or one a lesser user owns on the way, and only if
it is a regular file with no other link, so a planted link cannot make root truncate another file.
"""
from __future__ import annotations

import fcntl
import os

from .kernel.safepath import open_read_write, unlink_if_same


class PidfileLocked(RuntimeError):
    pass


class LockedPidfile:
    """Take the lock with `acquire()` before daemonizing (the lock survives the fork); python-daemon
    enters the context after the fork, which writes the final pid."""

    def __init__(self, path: str):
        self.path = path
        self.fd = -1

    def acquire(self) -> None:
        fd = open_read_write(self.path, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise PidfileLocked(self.locked_message(holder)) from None
        self.fd = fd

    def locked_message(self, holder: str) -> str:
        return f"another taskmasterd (pid {holder}) holds the pid file {self.path}"

    def __enter__(self) -> "LockedPidfile":
        if self.fd < 0:
            self.acquire()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()}\n".encode(), 0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            unlink_if_same(self.path, self.fd)
            os.close(self.fd)
            self.fd = -1


class StateDirectoryLock(LockedPidfile):
    """One daemon per state directory: the same lock on `<state>/taskmasterd.lock`, taken before
    anything in the directory is read or anything it names is signalled (a second daemon would
    take the live one's children for a dead predecessor's leftovers)."""

    def __init__(self, state_dir: str):
        super().__init__(os.path.join(state_dir, "taskmasterd.lock"))
        self.state_dir = state_dir

    def locked_message(self, holder: str) -> str:
        return f"state directory {self.state_dir} is in use by pid {holder}"

    def __exit__(self, *exc: object) -> None:
        """The file stays (empty): unlinked, a daemon that opened it just before could lock the
        removed file while a third one locks a new one."""
        if self.fd >= 0:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)
            self.fd = -1
