"""Log capture: children's stdout/stderr pipes drained into size-rotated files.

A drain runs when epoll says its pipe is readable and works for a bounded slice of time, then
yields (the pipe stays readable, so it is called again next loop iteration): a chatty child is
throttled by the disk, never by a frozen daemon, and `logmaxbytes: 1024` with a fast writer costs
that job throughput, not everyone's control. Files are opened O_APPEND through `safepath` (so
logrotate's copytruncate leaves no sparse file and no symlink steers a write). A file that cannot
be written (ENOSPC, EIO, EFBIG, EDQUOT) never closes the pipe: its bytes are read and dropped,
counted, warned about once, and writing resumes as soon as the file accepts it again. A file
deleted from under the daemon is noticed (nlink 0) and created again.
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import logging
import os
import subprocess
import time
from typing import Callable, Protocol

from ..kernel.safepath import checked_size, open_append, open_parent, same_file

log = logging.getLogger("taskmasterd.logs")

CHUNK = 1 << 20  # bytes a single read may move
BUSY_PIPE = 1 << 20  # size a pipe grows to once it is seen full (fewer wake-ups for chatty children)
F_SETPIPE_SZ = 1031
DEFAULT_PIPE = 1 << 16
PUMP_SLICE = 0.002  # seconds of draining per wake-up before the rest of the loop gets a turn
HEALTH_CHECK_INTERVAL = 1.0  # seconds between checks that the file is still linked and not truncated
DEFAULT_LOG_MODE = 0o640
_BUFFER = memoryview(bytearray(CHUNK))  # one scratch buffer: the loop runs one drain at a time
NEWLINE = ord("\n")
MARK_EVERY = 1.0  # seconds between two time marks of a file (`logs --since`, `--timestamps`)
MAX_MARKS = 4096  # marks kept per file: the oldest go first


class LogFile:
    """One log file, appended to and rotated to `.1` … `.N` when it would pass `maxbytes`. Its
    path is checked when acquired (so an unsafe path fails the spawn), but the file is created,
    and a descriptor held, only once something is written: 5000 silent instances cost neither
    files nor descriptors (creating a file costs a journaling file system about a millisecond)."""

    def __init__(self, path: str, maxbytes: int, backups: int, mode: int = DEFAULT_LOG_MODE) -> None:
        self.path = path
        self.maxbytes = maxbytes
        self.backups = backups
        self.mode = mode
        self.users = 0
        self.fd = -1
        self.size = 0
        self.written = 0  # bytes written since the daemon acquired the file
        self.dropped = 0  # bytes read from the child and thrown away because the file refused them
        self.failing: str | None = None  # why writes fail right now
        self._checked = 0.0
        self._rotation_off = False
        self.line_begun = 0  # bytes written since the file's last newline: 0, a rotation splits no line
        # (Unix time, offset of a line start) at most every MARK_EVERY while written: when each
        # part of the current file was written, for `logs --since` and `--timestamps`.
        self.marks: collections.deque[tuple[float, int]] = collections.deque(maxlen=MAX_MARKS)
        self.size = checked_size(path)

    def _open(self) -> int:
        fd = open_append(self.path, self.mode)
        self.size = os.fstat(fd).st_size
        self.line_begun = 0  # (the descriptor is write-only: what an old file ends with is not read)
        self.marks.clear()
        self._checked = time.monotonic()
        return fd

    def reopen(self) -> None:
        """After logrotate moved the file (USR2), or when it vanished: a new file at the path (or,
        with nothing written yet, the path checked again for the first write)."""
        if self.fd >= 0:
            fd = self._open()
            os.close(self.fd)
            self.fd = fd
        else:
            self.size = checked_size(self.path)
        self._rotation_off = False

    def room(self) -> int:
        """Bytes that still fit before a rotation is due (CHUNK when rotation is off)."""
        if self.maxbytes <= 0 or self._rotation_off:
            return CHUNK
        return max(self.maxbytes - self.size, 0)

    def write(self, data: memoryview) -> None:
        """Append `data`, rotating at a line boundary when the file is full; what the file refuses
        is counted as dropped, never raised."""
        now = time.time()
        while data:
            if self.fd < 0:
                try:
                    self.fd = self._open()
                except OSError as exc:
                    self._drop(len(data), exc)
                    return
            take = len(data) if len(data) <= self.room() else self._fitting(data)
            if take == 0:
                self.rotate()
                continue
            if self.line_begun == 0 and (not self.marks or now - self.marks[-1][0] >= MARK_EVERY):
                self.marks.append((now, self.size))
            try:
                written = os.write(self.fd, data[:take])
            except OSError as exc:
                self._drop(len(data), exc)
                return
            if self.failing is not None:
                log.warning("log %s accepts writes again; %d byte(s) of output were dropped meanwhile",
                            self.path, self.dropped)
                self.failing = None
            self.size += written
            self.written += written
            self._count_line(data[:written])
            data = data[written:]

    def _count_line(self, piece: memoryview) -> None:
        if piece[-1] == NEWLINE:  # the common case: a whole number of lines
            self.line_begun = 0
            return
        tail = bytes(piece[-max(self.maxbytes, 1):])  # past maxbytes the exact length no longer matters
        end = tail.rfind(b"\n")
        self.line_begun = len(tail) - end - 1 if end >= 0 else self.line_begun + len(piece)

    def _fitting(self, data: memoryview) -> int:
        """How much of `data`, which passes the size limit, goes into this file before it rotates:
        up to the last line end that fits; or, to finish a line that began in this file, up to
        its end if the whole line is at most `maxbytes`. 0: rotate first (the next line starts
        in a new file). A line longer than `maxbytes` is the one thing cut: at the limit."""
        room = self.room()
        last = bytes(data[:room]).rfind(b"\n")
        if last >= 0:
            return last + 1
        begun = self.line_begun  # bytes of the current line already in this file
        if begun == 0 and self.size > 0:
            return 0
        if 0 < begun < self.maxbytes:
            end = bytes(data[:self.maxbytes - begun]).find(b"\n")
            if end >= 0:
                return end + 1
            if begun + len(data) <= self.maxbytes:
                return len(data)
        return room  # a line longer than maxbytes: cut at the limit (0: rotate, go on in the next file)

    def _drop(self, count: int, exc: OSError) -> None:
        self.dropped += count
        why = exc.strerror or str(exc)
        if self.failing is None:
            log.warning("cannot write log %s (%s): dropping output until it can be written again", self.path, why)
        self.failing = why

    def check(self) -> None:
        """At most once a second while output flows: recreate a deleted file; follow a truncation
        (copytruncate) so rotation counts from the new size."""
        now = time.monotonic()
        if self.fd < 0 or now - self._checked < HEALTH_CHECK_INTERVAL:
            return
        self._checked = now
        try:
            info = os.fstat(self.fd)
        except OSError:
            return
        if info.st_nlink == 0:
            log.warning("log %s was deleted; creating it again", self.path)
            try:
                self.reopen()
            except OSError as exc:
                self._drop(0, exc)
        elif info.st_size < self.size:
            self.size = info.st_size
            self.line_begun = min(self.line_begun, info.st_size)
            self.marks.clear()  # truncated in place: the offsets mean nothing now

    def room_or_wait(self, resume: Callable[[], None]) -> bool:
        """A file always takes more (a disk that refuses it costs bytes, counted: see `write`)."""
        return True

    def rotate(self) -> None:
        """`path` → `path.1` → … → `path.N`, then a fresh file. Only the file this daemon has open
        is renamed or truncated: a path that now names another file is left alone."""
        try:
            if self.fd >= 0 and not same_file(self.path, self.fd):
                log.warning("log %s is no longer the file the daemon writes; reopening, not rotating", self.path)
            elif self.backups > 0:
                self._shift_backups()
            elif self.fd >= 0:
                os.ftruncate(self.fd, 0)
                self.size = self.line_begun = 0
                self.marks.clear()
                return
            self.reopen()
        except OSError as exc:
            log.error("cannot rotate %s: %s; rotation is off for it until the logs are reopened",
                      self.path, exc.strerror or exc)
            self._rotation_off = True

    def _shift_backups(self) -> None:
        dir_fd, name = open_parent(self.path)
        try:
            highest = 0
            while highest < self.backups and _exists(f"{name}.{highest + 1}", dir_fd):
                highest += 1
            for n in range(min(highest, self.backups - 1), 0, -1):
                os.replace(f"{name}.{n}", f"{name}.{n + 1}", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            with contextlib.suppress(FileNotFoundError):  # deleted meanwhile: nothing to keep
                os.replace(name, f"{name}.1", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:
            os.close(dir_fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _exists(name: str, dir_fd: int) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


class LogFiles:
    """The daemon's log files, shared by path so two streams aimed at one file never overwrite
    each other; and the owner of every drain still reading a child's pipe, which shutdown
    waits for (`drained`): what a job wrote as it stopped is written out before the daemon exits."""

    def __init__(self, mode: int = DEFAULT_LOG_MODE) -> None:
        self.mode = mode
        self._files: dict[str, LogFile] = {}
        self._drains: set[Drain] = set()
        self._all_drained: asyncio.Event | None = None

    def _track(self, drain: Drain) -> None:
        self._drains.add(drain)

    def _untrack(self, drain: Drain) -> None:
        self._drains.discard(drain)
        if not self._drains and self._all_drained is not None:
            self._all_drained.set()

    async def drained(self, timeout: float) -> int:
        """Until every pipe has been read to its end (each ends once its child and whatever
        inherited it are gone), `timeout` seconds at most; how many were not."""
        if self._drains:
            self._all_drained = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._all_drained.wait()
            self._all_drained = None
        return len(self._drains)

    def acquire(self, path: str, maxbytes: int, backups: int) -> LogFile:
        """Raises UnsafePath or OSError when the file cannot be created safely."""
        file = self._files.get(path)
        if file is None:
            file = self._files[path] = LogFile(path, maxbytes, backups, self.mode)
        file.maxbytes, file.backups = maxbytes, backups
        file.users += 1
        return file

    def update_limits(self, path: str, maxbytes: int, backups: int) -> None:
        file = self._files.get(path)
        if file is not None:
            file.maxbytes, file.backups = maxbytes, backups

    def get(self, path: str) -> LogFile | None:
        return self._files.get(path)

    def release(self, file: LogFile) -> None:
        file.users -= 1
        if file.users <= 0 and self._files.get(file.path) is file:
            del self._files[file.path]
            file.close()

    def reopen_all(self) -> None:
        for file in self._files.values():
            try:
                file.reopen()
            except OSError as exc:
                log.error("cannot reopen log %s: %s", file.path, exc.strerror or exc)


class Sink(Protocol):
    """Where a Drain puts what it reads: a LogFile, or in container mode the daemon's own stream
    (container/console.py)."""

    path: str

    def room(self) -> int: ...

    def room_or_wait(self, resume: Callable[[], None]) -> bool: ...

    def write(self, data: memoryview) -> None: ...

    def check(self) -> None: ...

    def rotate(self) -> None: ...


class Drain:
    """Moves everything written into one pipe to a sink until the pipe's last writer closes it,
    then calls `release`. While the sink has no room the pipe is left unread (its writer blocks
    once it is full) until the sink calls back."""

    def __init__(self, read_fd: int, file: Sink, release: Callable[[], None], loop: asyncio.AbstractEventLoop,
                 owner: LogFiles) -> None:
        self._fd = read_fd
        self._file = file
        self._release = release
        self._loop = loop
        self._owner = owner
        self._grown = False
        self._paused = False
        owner._track(self)
        loop.add_reader(read_fd, self._pump)

    def _pump(self) -> None:
        file = self._file
        file.check()
        deadline = time.monotonic() + PUMP_SLICE
        while True:
            if not file.room_or_wait(self._resume):
                self._loop.remove_reader(self._fd)
                self._paused = True
                return
            # A read fills the file at most up to one rotation (or finishes its line, or fills
            # the next file): a tiny logmaxbytes costs rotations, each one a wake-up's share.
            size = min(file.room() or file.maxbytes, CHUNK)
            try:
                count = os.readv(self._fd, [_BUFFER[:size]])
            except BlockingIOError:
                return
            except OSError as exc:
                log.error("log capture from a pipe into %s failed: %s", file.path, exc)
                self.close()
                return
            if count == 0:  # every writer closed the pipe
                self.close()
                return
            file.write(_BUFFER[:count])
            if not self._grown and count >= DEFAULT_PIPE:
                self._grown = True
                try:
                    fcntl.fcntl(self._fd, F_SETPIPE_SZ, BUSY_PIPE)
                except OSError:
                    pass  # over the per-user pipe budget: the default size still works
            if time.monotonic() >= deadline:
                return  # still readable: the loop calls again after serving everyone else

    def _resume(self) -> None:
        if self._paused and self._fd >= 0:
            self._paused = False
            self._loop.add_reader(self._fd, self._pump)

    def close(self) -> None:
        if self._fd < 0:
            return
        self._loop.remove_reader(self._fd)
        os.close(self._fd)
        self._fd = -1
        self._release()
        self._owner._untrack(self)


class ConsoleSink(Sink, Protocol):
    def close(self) -> None: ...


def open_capture(path: str | None, maxbytes: int, backups: int, files: LogFiles,
                 loop: asyncio.AbstractEventLoop, console: ConsoleSink | None = None) -> tuple[int, LogFile | None]:
    """The fd a child should write to, and the LogFile its Drain fills (None: output discarded,
    or sent to `console`, the daemon's own stream in container mode). The caller closes the
    returned fd once the child has been spawned. Raises UnsafePath or OSError when the log file
    cannot be created safely."""
    if console is not None:
        read_fd, write_fd = _pipe()
        Drain(read_fd, console, console.close, loop, files)
        return write_fd, None
    if path is None:
        return subprocess.DEVNULL, None
    file = files.acquire(path, maxbytes, backups)
    try:
        read_fd, write_fd = _pipe()
    except OSError:
        files.release(file)
        raise
    Drain(read_fd, file, lambda: files.release(file), loop, files)
    return write_fd, file


def _pipe() -> tuple[int, int]:
    read_fd, write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    os.set_blocking(write_fd, True)  # the child's end stays an ordinary blocking pipe
    return read_fd, write_fd
