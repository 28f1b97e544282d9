"""Each instance's own `NOTIFY_SOCKET`: a datagram socket in a private directory, read when the
kernel says it is readable.

Why one socket per instance rather than one shared socket with SO_PASSCRED: the socket a message
arrives on says whose it is, with no pid lookup. A pid lookup loses the common short-lived sender
(`systemd-notify --ready` from a shell script has exited before its datagram is read), and a
shared socket would have to be writable by every job's user.

Who can send: the directory is the daemon's (0711: others may pass through it to a name they
know, never list, create or rename), each socket is 0600 and owned by the user the instance runs
as, so only that user's processes (and root) can reach it; another local user cannot pretend to
be the instance. Other processes of the same user can, as they can already ptrace the instance.
A socket has a fresh random name for every spawn: a process that escaped an earlier run of the
instance cannot reach the new run's socket.
"""
from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import socket
import stat
from typing import Callable

from .notify_message import MAX_DATAGRAM, Notification, parse_notification

log = logging.getLogger("taskmasterd.notify")
MAX_UNIX_PATH = 107  # sun_path is 108 bytes with its terminating NUL
_NAME_RE = re.compile(r"[0-9a-f]{16}\.sock\Z")
_NAME_LENGTH = len("0123456789abcdef.sock")
MAX_PER_WAKEUP = 32  # datagrams read per readable event: a chatty program cannot hold the loop
PASSED_FDS_KEPT = 16  # room for passed fds to close; the kernel discards those that do not fit


def default_notify_path(state_dir: str) -> str:
    """Where a daemon keeps its sockets unless told: a short path (a socket address has 107 bytes,
    a state directory may be deep) of its own, named after its state directory, which no two
    daemons share. As root /run/taskmaster/<tag>, else under $XDG_RUNTIME_DIR or /tmp/taskmaster-<uid>."""
    tag = hashlib.sha256(os.fsencode(os.path.abspath(state_dir))).hexdigest()[:16]
    uid = os.geteuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if uid == 0:
        base = "/run/taskmaster"
    elif runtime and os.path.isabs(runtime):
        base = os.path.join(runtime, "taskmaster")
    else:
        base = f"/tmp/taskmaster-{uid}"
    return os.path.join(base, tag)


class NotifyDirectory:
    """The private directory of the notification sockets. Created, or taken over when it is a
    real directory of the daemon's user (never through a symlink); its mode is reset and the
    sockets a previous daemon left are removed. Every directory above it must be safe too (see
    `_check_ancestors`): sockets are bound by path, and a path is only as private as its parents."""

    def __init__(self, path: str):
        # The parents without symlinks, so the checked chain is the one sockets are bound in; the
        # directory itself is never followed.
        path = os.path.abspath(path)
        self.path = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if len(os.fsencode(self.path)) + 1 + _NAME_LENGTH > MAX_UNIX_PATH:
            raise ValueError(f"notify directory {self.path!r} is too long for a unix socket path "
                             f"(at most {MAX_UNIX_PATH - 1 - _NAME_LENGTH} bytes)")
        _check_ancestors(os.path.dirname(self.path))
        try:
            os.mkdir(self.path, 0o711)
        except FileExistsError:
            pass
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            owner = os.fstat(fd).st_uid
            if owner != os.geteuid():
                raise PermissionError(f"notify directory {self.path!r} belongs to uid {owner}, not to the daemon")
            os.fchmod(fd, 0o711)
            for name in os.listdir(fd):
                if _NAME_RE.match(name):
                    os.unlink(name, dir_fd=fd)
        finally:
            os.close(fd)

    def remove(self) -> None:
        """At shutdown, once every socket is closed; a directory still in use stays."""
        with contextlib.suppress(OSError):
            os.rmdir(self.path)

    def open_socket(self, on_message: Callable[[Notification], None], uid: int | None = None,
                    loop: asyncio.AbstractEventLoop | None = None) -> NotifySocket:
        """A new socket for one run of an instance; `uid`: the user it runs as (None: the daemon's)."""
        return NotifySocket(self.path, on_message, uid, loop or asyncio.get_running_loop())


class NotifySocket:
    def __init__(self, directory: str, on_message: Callable[[Notification], None], uid: int | None,
                 loop: asyncio.AbstractEventLoop):
        self._on_message = on_message
        self._loop = loop
        self.dropped = 0  # datagrams dropped whole: too long, NUL bytes
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.path = os.path.join(directory, secrets.token_hex(8) + ".sock")
        try:
            # The socket file is created 0600 (bind takes the umask), never reachable by others.
            # The daemon has one thread creating files, so changing its umask here is safe.
            previous = os.umask(0o177)
            try:
                self._sock.bind(self.path)
            finally:
                os.umask(previous)
            if uid is not None and uid != os.geteuid():
                os.chown(self.path, uid, -1, follow_symlinks=False)
        except OSError:
            self.close()
            raise
        loop.add_reader(self._sock.fileno(), self._readable)

    def environment(self) -> dict[str, str]:
        """What the child is told: where to send its notifications."""
        return {"NOTIFY_SOCKET": self.path}

    def _readable(self) -> None:
        for _ in range(MAX_PER_WAKEUP):
            try:
                data, ancillary, flags, _ = self._sock.recvmsg(
                    MAX_DATAGRAM + 1, socket.CMSG_SPACE(PASSED_FDS_KEPT * 4), socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # not expected on a bound datagram socket; never let it spin
                log.warning("notify socket %s: %s", self.path, exc)
                return
            _close_passed_fds(ancillary)
            message = None if flags & socket.MSG_TRUNC else parse_notification(data)
            if message is None:
                self.dropped += 1
                continue
            self._on_message(message)
            if self._sock.fileno() < 0:  # the owner closed us on that message
                return

    def close(self) -> None:
        """Stop reading, close and remove the socket file. Idempotent."""
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


def _check_ancestors(directory: str) -> None:
    """Refuse a directory another user could rename or replace a part of (OpenSSH's StrictModes
    rule): each one from the root down is owned by root or the daemon, and writable by nobody
    else unless sticky (as /tmp is: others may create entries there, never move ours)."""
    me = os.geteuid()
    path = directory
    while True:
        info = os.lstat(path)
        if info.st_uid not in (0, me):
            raise PermissionError(f"notify directory: {path!r} belongs to uid {info.st_uid}, who could replace it")
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            raise PermissionError(f"notify directory: {path!r} is writable by others and not sticky")
        parent = os.path.dirname(path)
        if parent == path:
            return
        path = parent


def _close_passed_fds(ancillary: list[tuple[int, int, bytes]]) -> None:
    """A sender may pass descriptors (SCM_RIGHTS); we keep none of them."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
            for fd in fds:
                os.close(fd)
