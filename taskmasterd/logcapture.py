"""Log capture: children's stdout/stderr pipes drained into size-rotated files.

Bytes move pipe → file with splice(2), never through Python memory. A drain runs only when epoll
says its pipe is readable, and moves as much as the pipe holds, so a child writing as fast as it
can is throttled only by the disk, never by the daemon.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import subprocess

log = logging.getLogger("taskmasterd.logs")

CHUNK = 1 << 20  # bytes a single splice may move
BUSY_PIPE = 1 << 20  # size a pipe grows to once it is seen full (fewer wake-ups for chatty children)
F_SETPIPE_SZ = 1031
DEFAULT_PIPE = 1 << 16
DRAIN_BUDGET = 8 << 20  # bytes per wake-up before yielding to the rest of the loop


class LogFile:
    """One log file, written at its end and rotated to `.1` … `.N` when it would pass `maxbytes`."""

    def __init__(self, path: str, maxbytes: int, backups: int):
        self.path = path
        self.maxbytes = maxbytes
        self.backups = backups
        self.users = 0
        self.fd = -1
        self.size = 0
        self.written = 0  # operator's hook (metrics): bytes captured into this file since it was opened
        self.dropped = 0  # operator's hook (metrics): bytes lost on their way here (none today)
        self.reopen()

    def reopen(self) -> None:
        """(Re)open the path: after logrotate renamed the file, writing continues in a new one."""
        # No O_APPEND: splice(2) refuses append-mode targets; we keep the offset at the end ourselves.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self.size = os.lseek(fd, 0, os.SEEK_END)
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd

    def room(self) -> int:
        """Bytes that still fit before a rotation is due (CHUNK when rotation is off)."""
        if self.maxbytes <= 0:
            return CHUNK
        return max(self.maxbytes - self.size, 0)

    def rotate(self) -> None:
        if self.backups > 0:
            for n in range(self.backups - 1, 0, -1):
                src = f"{self.path}.{n}"
                if os.path.exists(src):
                    os.replace(src, f"{self.path}.{n + 1}")
            os.replace(self.path, f"{self.path}.1")
            self.reopen()
        else:  # no backups kept: start the same file again
            os.ftruncate(self.fd, 0)
            os.lseek(self.fd, 0, os.SEEK_SET)
            self.size = 0

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class LogFiles:
    """The daemon's open log files, shared by path so two streams aimed at one file never
    overwrite each other."""

    def __init__(self) -> None:
        self._files: dict[str, LogFile] = {}

    def acquire(self, path: str, maxbytes: int, backups: int) -> LogFile:
        file = self._files.get(path)
        if file is None:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            file = self._files[path] = LogFile(path, maxbytes, backups)
        self.update_limits(path, maxbytes, backups)
        file.users += 1
        return file

    def update_limits(self, path: str, maxbytes: int, backups: int) -> None:
        file = self._files.get(path)
        if file is not None:
            file.maxbytes, file.backups = maxbytes, backups

    def release(self, file: LogFile) -> None:
        file.users -= 1
        if file.users <= 0 and self._files.get(file.path) is file:
            del self._files[file.path]
            file.close()

    def get(self, path: str) -> LogFile | None:
        """Operator's hook (metrics read its `written` and `dropped`): the open log file `path`."""
        return self._files.get(path)

    def reopen_all(self) -> None:
        for file in self._files.values():
            try:
                file.reopen()
            except OSError as exc:
                log.error("cannot reopen log %s: %s", file.path, exc)


class Drain:
    """Moves everything written into one pipe to a LogFile until the pipe's last writer closes it."""

    def __init__(self, read_fd: int, file: LogFile, files: LogFiles, loop: asyncio.AbstractEventLoop):
        self._fd = read_fd
        self._file = file
        self._files = files
        self._loop = loop
        self._grown = False
        self._use_splice = True
        loop.add_reader(read_fd, self._pump)

    def _move(self, count: int) -> int:
        if self._use_splice:
            try:
                return os.splice(self._fd, self._file.fd, count)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.ENOSYS):
                    raise
                self._use_splice = False  # a file system without splice support
        data = os.read(self._fd, count)
        if data:
            os.write(self._file.fd, data)
        return len(data)

    def _pump(self) -> None:
        moved_total = 0
        file = self._file
        while moved_total < DRAIN_BUDGET:
            room = file.room()
            if room == 0:
                try:
                    file.rotate()
                except OSError as exc:
                    log.error("cannot rotate %s: %s", file.path, exc)
                    file.maxbytes = 0  # keep capturing rather than lose bytes
                continue
            try:
                moved = self._move(min(room, CHUNK))
            except BlockingIOError:
                return
            except OSError as exc:
                log.error("log capture into %s failed: %s", file.path, exc)
                self.close()
                return
            if moved == 0:  # every writer closed the pipe
                self.close()
                return
            file.size += moved
            file.written += moved
            moved_total += moved
            if not self._grown and moved >= DEFAULT_PIPE:
                self._grown = True
                try:
                    fcntl.fcntl(self._fd, F_SETPIPE_SZ, BUSY_PIPE)
                except OSError:
                    pass  # over the per-user pipe budget: the default size still works

    def close(self) -> None:
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._files.release(self._file)


def open_capture(path: str | None, maxbytes: int, backups: int, files: LogFiles,
                 loop: asyncio.AbstractEventLoop) -> tuple[int, Drain | None]:
    """The fd a child should write to, and the Drain that empties it (None: output discarded).
    The caller closes the returned fd once the child has been spawned."""
    if path is None:
        return subprocess.DEVNULL, None
    file = files.acquire(path, maxbytes, backups)
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    os.set_blocking(write_fd, True)  # the child's end stays an ordinary blocking pipe
    return write_fd, Drain(read_fd, file, files, loop)
